#!/usr/bin/env bash
# The main job: set up, then run the demonstration of the processor model.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/sgxemu demo "$@"
