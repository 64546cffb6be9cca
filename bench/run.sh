#!/usr/bin/env bash
# hubhook beside the official Node stack — the one documented command of issue 6.
#
#   bash bench/run.sh            # full run (~14 min of load on 2 cores); writes bench/RESULTS.md
#   bash bench/run.sh --quick    # smoke run (seconds per workload); writes bench/.run/RESULTS.quick.md
#
# Other options go to bench/run.py (--no-pin, --rounds N, --duration S, --warmup S, --cold-runs N,
# --out PATH, --store-rounds N, --no-shared-stores, --fsync-n N, --no-w3). It builds the release binaries, installs the pinned Node peers (`npm ci`, exact
# versions from bench/package-lock.json), installs wrk with apt-get if it is missing, then runs
# every workload on loopback only. Never part of the test suite. Run it on an otherwise idle
# machine: the figures are only as good as the quiet around them.
set -euo pipefail
cd "$(dirname "$0")/.."

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "bench/run.sh: '$1' is required but not on PATH" >&2; exit 1; }
}
need cargo
need node
need npm
need python3

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench/run.sh: installing wrk (Debian package)" >&2
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk
  fi
fi
command -v taskset >/dev/null 2>&1 || echo "bench/run.sh: taskset (util-linux) missing: no CPU pinning" >&2

echo "bench/run.sh: cargo build --release --examples --bins" >&2
cargo build --release --examples --bins

# npm ci writes node_modules/.package-lock.json last; skip the reinstall (it compiles
# better-sqlite3, about a minute) when that marker is newer than the lockfile.
marker=bench/node_modules/.package-lock.json
if ! [ -f "$marker" ] || [ "$marker" -ot bench/package-lock.json ]; then
  echo "bench/run.sh: npm ci in bench/ (pinned by package-lock.json)" >&2
  (cd bench && npm ci --no-audit --no-fund)
  touch "$marker"
fi

# W2 on DynamoDB and on Azure Table Storage runs dynalite and Azurite from tests/js/node_modules,
# the same pinned packages the tests use (scripts/js-deps.sh: npm ci, skipped when up to date).
# Without them run.py reports those two rows as not measured.
case " $* " in
  *" --no-shared-stores "*) ;;
  *) bash scripts/js-deps.sh || echo "bench/run.sh: tests/js packages not installed: W2 on dynalite/Azurite will be skipped" >&2 ;;
esac

# The Lambda zip (issues 13/15: its size against 2026-11-28's arm64 figure and <= 4.4 MiB) is built
# as that figure was, with cargo-lambda for arm64. cargo-lambda comes from PyPI (pinned; it brings
# zig as the linker) into .venv-lambda/ unless it is on PATH already, and the aarch64 standard
# library from rustup. A first arm64 release build takes as long as the x86_64 one (~20 min on a
# busy 2-core machine). BENCH_NO_LAMBDA=1 skips all of it (run.py then reports the x86_64 zip only).
CARGO_LAMBDA_VERSION=1.9.2
if [ -z "${BENCH_NO_LAMBDA:-}" ]; then
  if ! command -v cargo-lambda >/dev/null 2>&1; then
    if ! [ -x .venv-lambda/bin/cargo-lambda ]; then
      echo "bench/run.sh: installing cargo-lambda $CARGO_LAMBDA_VERSION into .venv-lambda (pip)" >&2
      { python3 -m venv .venv-lambda && .venv-lambda/bin/pip install -q "cargo-lambda==$CARGO_LAMBDA_VERSION"; } \
        || echo "bench/run.sh: cannot install cargo-lambda: no arm64 zip this run" >&2
    fi
    PATH="$PWD/.venv-lambda/bin:$PATH"
  fi
  if command -v cargo-lambda >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
      rustup target add aarch64-unknown-linux-gnu || true
    fi
    echo "bench/run.sh: cargo lambda build --release --arm64 --output-format zip --bin hubhook-lambda" >&2
    cargo lambda build --release --arm64 --output-format zip --bin hubhook-lambda \
      || echo "bench/run.sh: cargo lambda build failed: the arm64 zip row will be missing or stale" >&2
  fi
fi

BENCH_COMMAND="bash bench/run.sh${*:+ $*}" exec python3 bench/run.py "$@"
