#!/usr/bin/env bash
# Fails when gen/ is not what `npm run generate` makes from proto/ (someone edited proto/ without regenerating, or
# edited gen/ by hand).
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r gen "$tmp/committed"
npm run -s generate >/dev/null
if ! diff -r "$tmp/committed" gen >/dev/null; then
  diff -r "$tmp/committed" gen | head -20
  echo "gen/ is stale: run 'npm run generate' and commit the result" >&2
  exit 1
fi
echo "gen/ is current"
