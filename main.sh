#!/usr/bin/env bash
# The main job: set up, then run the Linux kernel's SGX selftests on the emulator.
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/sgxemu selftest "$@"
