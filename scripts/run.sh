#!/usr/bin/env bash
# Create .venv if needed, install the app and start it (http://127.0.0.1:8000 by default).
# With no QES_EVOLINK_API_KEY it runs on the built-in simulator and says so on the page.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m app "$@"
