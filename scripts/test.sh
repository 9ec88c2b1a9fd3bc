#!/usr/bin/env bash
# Install everything the tests need, then run lint, the type check and the whole test suite
# (pytest arguments are passed through). This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh test
export QT_QPA_PLATFORM=offscreen
.venv/bin/python -m ruff check vdigui tests bench
.venv/bin/python -m ruff format --check vdigui tests bench  # `ruff format` is the house style
.venv/bin/python -m mypy  # strict for the engine and vdictl, gradual for the app (pyproject)
.venv/bin/python -m pytest "$@"
