#!/usr/bin/env bash
# Install vdigui and open the GUI on the built-in demo VM folder. Without a display it renders
# the window offscreen to vdigui-demo.png instead, so the command still shows something.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh runtime
if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
  exec .venv/bin/vdigui --demo "$@"
fi
echo "No display found: rendering the demo window to vdigui-demo.png instead."
QT_QPA_PLATFORM=offscreen .venv/bin/vdigui --demo --screenshot vdigui-demo.png --size 1400x900 "$@"
echo "Wrote $(pwd)/vdigui-demo.png"
