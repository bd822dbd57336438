#!/usr/bin/env bash
# Fetch one npm package's files into a cache folder: `npm pack` (the registry tarball, integrity-checked by npm;
# no install scripts run, no node_modules), unpacked beside DEST and renamed into place, so DEST is complete or
# absent. Usage: tools/fetch_npm.sh NAME VERSION DEST
set -euo pipefail
name=$1 version=$2 dest=$3
[ -f "$dest/package.json" ] && exit 0
command -v npm >/dev/null 2>&1 || bash "$(dirname "$0")/ensure_apt.sh" npm
mkdir -p "$(dirname "$dest")"
tmp=$(mktemp -d "$(dirname "$dest")/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "fetching npm $name@$version into $dest"
(cd "$tmp" && timeout 900 npm pack --silent "$name@$version" >/dev/null) || {
  echo "npm pack $name@$version failed or timed out; fetch it by hand into $dest" >&2; exit 1; }
tar xzf "$tmp"/*.tgz -C "$tmp"
rm -rf "$dest"
mv "$tmp/package" "$dest"
