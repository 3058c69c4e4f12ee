#!/usr/bin/env bash
# Install Debian's chromium for the report's browser test (tests/e2e/test_report_browser.py), unless a
# Chromium is already on PATH. Needs root (or sudo) and apt; elsewhere it says what to do.
set -euo pipefail

for name in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$name" >/dev/null 2>&1; then
    echo "install-chromium.sh: $name is already installed ($(command -v "$name"))"
    exit 0
  fi
done

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium.sh: no apt-get here; install Chromium with your package manager, or point" \
       "LOOKALIKE_CHROMIUM at a Chromium/Chrome binary" >&2
  exit 2
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install-chromium.sh: run as root (or install sudo)" >&2; exit 2; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
# fonts-dejavu-core: headless screenshots need at least one font to render the captions.
$sudo apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
echo "install-chromium.sh: installed $(chromium --version 2>/dev/null || echo chromium)"
