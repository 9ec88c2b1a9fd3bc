#!/usr/bin/env bash
# Prepare a fresh Debian machine (as root) or any machine with Python >= 3.11 for vdigui:
# Debian packages (when run as root with apt), then a virtual environment in .venv with vdigui
# installed in editable mode. Usage: scripts/setup-env.sh [runtime|test]
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-runtime}

runtime_debs=(python3 python3-venv python3-pip libgl1 libegl1 libxkbcommon0 libxkbcommon-x11-0
  libfontconfig1 libfreetype6 libdbus-1-3 libglib2.0-0 libxcb-cursor0 libxcb-icccm4
  libxcb-keysyms1 libxcb-shape0 libxcb-render-util0 libxcb-image0 libxcb-xinerama0 libxcb-randr0
  libxrender1 libxi6)
test_debs=(qemu-utils e2fsprogs dosfstools mtools ntfs-3g fdisk gdisk desktop-file-utils sleuthkit chromium)

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  wanted=("${runtime_debs[@]}")
  [ "$mode" = test ] && wanted+=("${test_debs[@]}")
  missing=()
  for pkg in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
extra=""
[ "$mode" = test ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e ".${extra}"
