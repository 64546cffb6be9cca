#!/usr/bin/env bash
# The README's test command: installs what the tests need (the official npm SDKs and dynalite,
# pinned in tests/js/package-lock.json; cfn-lint from PyPI), then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "test.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }
bash scripts/js-deps.sh

# The dev page's browser tests (tests/js/browser.mjs) drive Debian's chromium through the pinned
# playwright-core and Debian's firefox-esr through the pinned puppeteer-core (WebDriver BiDi): a
# test tool's own browser download does not work everywhere.
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing $1 (apt-get)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing $1 (sudo apt-get)" >&2
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
  else
    echo "test.sh: /usr/bin/$1 is required for the dev page's browser tests (Debian: apt-get install $1)" >&2
    exit 1
  fi
}
[ -x /usr/bin/chromium ] || apt_install chromium
[ -x /usr/bin/firefox-esr ] || apt_install firefox-esr

# cfn-lint validates the SAM template (pinned; installed once into .venv-tools).
if [ ! -x .venv-tools/bin/cfn-lint ]; then
  echo "test.sh: installing cfn-lint into .venv-tools" >&2
  python3 -m venv .venv-tools
  .venv-tools/bin/pip install --quiet 'cfn-lint==1.58.0'
fi
if [ -f template.yaml ]; then
  .venv-tools/bin/cfn-lint template.yaml
  echo "cfn-lint template.yaml: ok"
fi

# The Azure ARM template: no ARM/Bicep validator installs from the registries here (arm-ttk is
# PowerShell, Bicep a .NET binary fetched from GitHub), so scripts/check-arm.py checks what ARM's
# validation rejects: expression syntax, undeclared parameters/variables, types, api versions.
python3 scripts/check-arm.py azure/azuredeploy.json

# Library, binary and integration tests (benches and examples are compiled by clippy in CI).
# The packages are installed above, so a Node-backed test must run: HUBHOOK_REQUIRE_NODE=1 turns
# its "skipped" (plain `cargo test` without Node.js) into a failure.
export HUBHOOK_REQUIRE_NODE=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --lib --bins --tests "$@" 2>&1 | tee "$log" || status=$?
# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed;?/) p += $(i-1); if ($i ~ /^failed;?/) f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
# Belt and braces: nothing may have been skipped.
if grep -q 'skipped [a-z0-9_:]*: needs Node.js' "$log"; then
  echo "test.sh: Node-backed tests were skipped:" >&2
  grep -o 'skipped [a-z0-9_:]*: needs Node.js.*' "$log" >&2
  status=1
fi
exit "$status"
