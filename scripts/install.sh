#!/usr/bin/env bash
# Creates .venv and installs fedmq into it. torch is pinned to 2.13.0 (the CPU build): an
# unpinned torch pulls several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv" >&2
  "$python" -m venv .venv
fi
stamp=".venv/.fedmq-installed${extra:+-$extra}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "==> installing fedmq${extra:+[$extra]} into .venv (first time: a minute or two)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra:+[$extra]}"
  touch "$stamp"
fi
# The venv is not on PATH: say how to call fedmq, unless this shell already finds it there.
if [ "$(command -v fedmq || true)" != "$PWD/.venv/bin/fedmq" ]; then
  echo "==> fedmq is installed as .venv/bin/fedmq; to call it as plain \`fedmq\` in this shell:" >&2
  echo "    export PATH=\"$PWD/.venv/bin:\$PATH\"" >&2
fi
