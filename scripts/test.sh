#!/usr/bin/env bash
# Installs fedmq with its dev tools and the system packages the tests need (mosquitto for the
# integration tests, docker-compose to validate docker-compose.yml), then: ruff, mypy, pytest.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
bash scripts/install.sh dev
echo "==> ruff" >&2
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "==> mypy" >&2
.venv/bin/mypy
echo "==> pytest" >&2
# Two workers (PYTEST_WORKERS to change; 0 runs in this process): most of the wall time is e2e
# and fault tests waiting on emulated devices and links, not on the CPU. Tests that share a
# module fixture stay on one worker (xdist_group).
exec .venv/bin/pytest -n "${PYTEST_WORKERS:-2}" --dist loadgroup "$@"
