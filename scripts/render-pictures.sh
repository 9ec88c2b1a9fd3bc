#!/usr/bin/env bash
# Render every picture in docs/ from the built-in demo VM (offscreen, 1400x900), so the README
# always shows what the current code draws. Needs the test set-up (chromium for the report).
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=offscreen
shot() { .venv/bin/vdigui --demo --size 1400x900 --screenshot "docs/$1" "${@:2}" >/dev/null; }
shot blockmap.png --tab blockmap --select Alternative
shot space-view.png --tab space
shot files-tab.png --tab files
shot compact-preview.png --wizard compact --page preview
shot delete-preview.png --wizard delete-snapshot --target Alternative --page preview
shot resize-wizard.png --wizard resize --page options
demo="$(.venv/bin/python -c 'from vdigui.engine import build_demo_vm; print(build_demo_vm())')"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
.venv/bin/vdictl report "$demo" --redact -o "$work/report.html" >/dev/null
chromium --headless --no-sandbox --disable-gpu --no-first-run --disable-extensions \
  --host-resolver-rules='MAP * ~NOTFOUND' --user-data-dir="$work/profile" \
  --window-size=1400,900 --hide-scrollbars --screenshot="$(pwd)/docs/report.png" \
  "file://$work/report.html" 2>/dev/null
echo "Rendered the pictures in docs/."
