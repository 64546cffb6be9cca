#!/usr/bin/env bash
# Installs the pinned npm packages the tests use (tests/js/package-lock.json: the official
# @azure/web-pubsub, @azure/web-pubsub-express, @azure/web-pubsub-client SDKs, express, ws,
# playwright-core (drives Debian's chromium for the dev page test) and
# dynalite) into tests/js/node_modules. Does nothing when node_modules is already at least as new
# as package-lock.json; otherwise runs `npm ci` (exact versions from the lockfile).
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

# npm ci writes node_modules/.package-lock.json last; use it as the "installed" marker.
marker=node_modules/.package-lock.json
install() {
  if [ -f "$marker" ] && ! [ "$marker" -ot package-lock.json ]; then
    return 0
  fi
  echo "js-deps.sh: npm ci in tests/js (pinned by package-lock.json)" >&2
  npm ci --no-audit --no-fund >&2 || {
    echo "js-deps.sh: 'npm ci' failed in tests/js (needs https://registry.npmjs.org or a mirror)" >&2
    exit 1
  }
  touch "$marker"
}

# Serialize concurrent callers (parallel test runs) when flock is available.
if command -v flock >/dev/null 2>&1; then
  exec 9>.js-deps.lock
  flock 9
fi
install
