#!/usr/bin/env bash
# Create .venv (if needed) and install sgxemu with its test tools. Used by main.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.sgxemu-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[dev]'
    touch "$stamp"
fi
# Headless Chromium, for the test that opens `sgxemu trace`'s SVG/HTML in a browser: installed
# with apt-get when missing (as root, or with password-less sudo). As root or in CI that test
# fails without it; elsewhere it skips.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; fi
    fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
        echo "setup.sh: installing chromium (apt-get)..." >&2
        { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
            || { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
                 && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; } \
            || echo "setup.sh: could not install chromium; the browser test cannot run" >&2
    fi
fi
