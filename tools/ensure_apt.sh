#!/usr/bin/env bash
# Install the Debian packages mmfm's demo and tests read (fonts, emoji names), or say how to.
# Never hangs: apt gets a bounded time; without root or apt it explains what to install and stops.
set -u
missing=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "mmfm needs these Debian/Ubuntu packages: ${missing[*]}" >&2
  echo "This machine has no apt-get. Install their equivalents (Noto Color Emoji font, Unicode emoji-test.txt) and re-run." >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "mmfm needs these Debian packages: ${missing[*]}" >&2
    echo "Run as root:  apt-get install -y ${missing[*]}   then re-run make." >&2
    exit 1
  fi
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
timeout 600 $SUDO apt-get update -qq || { echo "apt-get update failed or timed out" >&2; exit 1; }
timeout 900 $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" || {
  echo "apt-get install ${missing[*]} failed; install them by hand and re-run." >&2; exit 1; }
