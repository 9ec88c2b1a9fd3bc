#!/usr/bin/env bash
# Install vdigui and open the GUI on the built-in demo VM folder. Without a display it renders
# the window offscreen to vdigui-demo.png instead, so the command still shows something.
# The demo (about 280 MiB) is built once in ~/.cache/vdigui/demo; `.venv/bin/vdigui --demo
# --clean` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh runtime
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/vdigui --demo "$@"
fi
echo "No display found: rendering the demo window offscreen instead."
# vdigui prints the path of the PNG it wrote (once).
QT_QPA_PLATFORM=offscreen .venv/bin/vdigui --demo --screenshot "$(pwd)/vdigui-demo.png" \
  --size 1400x900 "$@"
