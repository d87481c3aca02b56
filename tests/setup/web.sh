#!/usr/bin/env bash
# The web pages' browser tests (tests/web/):
#  - Debian's chromium (tests/apt-packages.txt) driven by Playwright (pyproject's test
#    extras); Playwright's own browser download is never used;
#  - axe-core from npm, pinned by tests/web/package-lock.json, injected into each page.
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v npm >/dev/null 2>&1; then
  echo "   installing nodejs and npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

web=tests/web
stamp="$web/node_modules/.installed-lock"
if [ ! -f "$stamp" ] || ! cmp -s "$web/package-lock.json" "$stamp"; then
  echo "   npm ci in $web"
  (cd "$web" && npm ci --no-audit --no-fund --silent 2>&1 | grep -v 'Unknown user config' || true)
  cp "$web/package-lock.json" "$stamp"
fi
