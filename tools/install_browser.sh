#!/usr/bin/env bash
# What tests/test_browser.py needs: Debian's headless Chromium and its driver, and Selenium (pinned) in the
# project's venv. Quick when they are already there; without them the browser test skips with the reason.
#   bash tools/install_browser.sh            (as root, or with sudo; PY=path/to/python for another venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SELENIUM=4.40.0

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "error: installing chromium and chromium-driver needs root (apt-get)" >&2; exit 2
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
if ! "$PY" -c "import selenium, sys; sys.exit(selenium.__version__ != '$SELENIUM')" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "selenium==$SELENIUM"
fi
echo "browser test ready: $(chromium --version 2>/dev/null | head -1), selenium $SELENIUM"
