#!/usr/bin/env bash
# Installs fedmq, then runs the main job: an embedded broker, a cloud node and 10 edges training
# on real data (scikit-learn's digits). Extra arguments go to `fedmq run` (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/fedmq run "$@"
