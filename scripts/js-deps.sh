#!/usr/bin/env bash
# Installs the pinned npm packages the tests use (tests/js/package-lock.json: the official
# @azure/web-pubsub, @azure/web-pubsub-express, @azure/web-pubsub-client SDKs, express, ws,
# playwright-core and puppeteer-core (drive Debian's chromium and firefox-esr for the dev page
# tests) and dynalite) into tests/js/node_modules. Does nothing when node_modules was installed from this very
# package-lock.json (its hash is kept beside it); otherwise runs `npm ci` (exact versions from the lockfile).
set -euo pipefail
cd "$(dirname "$0")/../tests/js"

need() {
  command -v "$1" >/dev/null 2>&1 || {
    echo "js-deps.sh: '$1' is required but not on PATH; install Node.js >= 20 with npm (https://nodejs.org)" >&2
    exit 1
  }
}
need node
need npm
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "js-deps.sh: Node.js >= 20 is required (found $(node -v))" >&2
  exit 1
fi

# The installed lockfile's hash is the marker: an mtime can lie after a checkout, a merge or
# `npm install --package-lock-only`, a hash cannot.
marker=node_modules/.hubhook-lock.sha256
install() {
  want="$(sha256sum package-lock.json | cut -d' ' -f1)"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$want" ]; then
    return 0
  fi
  echo "js-deps.sh: npm ci in tests/js (pinned by package-lock.json)" >&2
  npm ci --no-audit --no-fund >&2 || {
    echo "js-deps.sh: 'npm ci' failed in tests/js (needs https://registry.npmjs.org or a mirror)" >&2
    exit 1
  }
  echo "$want" > "$marker"
}

# Serialize concurrent callers (parallel test runs) when flock is available.
if command -v flock >/dev/null 2>&1; then
  exec 9>.js-deps.lock
  flock 9
fi
install
