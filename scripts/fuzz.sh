#!/usr/bin/env bash
# Fuzz every target under fuzz/ for a bounded time: scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Builds once with `cargo +nightly fuzz build` (cargo-fuzz's default: release optimisations with
# debug assertions and overflow checks, AddressSanitizer, libFuzzer coverage), then runs each
# target for SECONDS_PER_TARGET (default 60) seconds from the committed seeds (fuzz/corpus/<target>,
# read only) plus a working corpus (fuzz/corpus-run/<target>, git-ignored, kept between runs).
# Prints one line per target — executions, coverage (libFuzzer's `cov:` edges and `ft:` features
# from its last stats line), and whether it crashed — and exits non-zero if any target crashed.
# A crash leaves its input under fuzz/artifacts/<target>/; see fuzz/README.md for what to do next.
#
# The targets are the [[bin]]s of fuzz/Cargo.toml (`cargo fuzz list`): webhook, connection_string,
# connection_state, client_frame, odata_filter, jwt, tunnel_frame.
#
# Needs the nightly toolchain (libFuzzer instrumentation); installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

secs=${1:-60}
shift || true
case "$secs" in
  '' | *[!0-9]*) echo "fuzz.sh: SECONDS_PER_TARGET must be a whole number, got '$secs'" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly Rust toolchain is required (cargo fuzz instruments with nightly-only" >&2
  echo "flags); install it with: rustup toolchain install nightly --profile minimal" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

start=$(date +%s)
if [ "${#targets[@]}" -eq 1 ]; then
  cargo +nightly fuzz build "${targets[0]}"
else
  cargo +nightly fuzz build
fi
echo "fuzz.sh: built ${#targets[@]} targets in $(( $(date +%s) - start )) s"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "corpus-run/$t" "artifacts/$t"
  args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  [ -f "dicts/$t.dict" ] && args+=(-dict="dicts/$t.dict")
  echo "fuzz.sh: $t for ${secs} s" >&2
  status=0
  # The working corpus comes first: libFuzzer writes what it finds there, never into the seeds.
  cargo +nightly fuzz run "$t" "corpus-run/$t" "corpus/$t" -- "${args[@]}" >"$logs/$t" 2>&1 || status=$?
  # Executions: the final stats line, else the last `#N` status line (e.g. after a crash).
  execs=$(awk -F: '/^stat::number_of_executed_units:/ { gsub(/ /, "", $2); print $2 }' "$logs/$t" | tail -1)
  last=$(grep -E '^#[0-9]+' "$logs/$t" | tail -1 || true)
  [ -n "$execs" ] || execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
  rate=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
  if [ "$status" -eq 0 ]; then
    verdict="ok"
  else
    failed=1
    artifact=$(sed -nE 's/.*Test unit written to (\S+).*/\1/p' "$logs/$t" | tail -1)
    verdict="CRASHED (exit $status${artifact:+, input $artifact})"
    echo "---- $t: the end of libFuzzer's output ----" >&2
    tail -n 40 "$logs/$t" >&2
  fi
  summary+=("$(printf '%-18s execs %-10s exec/s %-7s cov %-6s ft %-6s corpus %-10s %s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$verdict")")
done

echo
echo "fuzz.sh: ${secs} s per target, $(( $(date +%s) - start )) s in all"
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
  echo "fuzz.sh: a target crashed: reproduce with 'cargo +nightly fuzz run TARGET INPUT' in fuzz/," >&2
  echo "minimise with 'cargo +nightly fuzz tmin TARGET INPUT', then fix and add a regression test." >&2
  exit 1
fi
