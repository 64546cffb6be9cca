#!/usr/bin/env bash
# Stages an Azure Functions custom-handler app: host.json (top level of this repository), the one
# HTTP-trigger function folder (azure/handler → handler/), and the hubhook binary under the name
# host.json's defaultExecutablePath gives. Zips it for `az functionapp deployment source
# config-zip` unless --no-zip.
#
#   bash scripts/package-azure.sh [--binary PATH] [--out DIR] [--no-zip]
#
# Defaults: --binary target/release/hubhook (build it first: cargo build --release),
# --out target/azure-functions; the zip is written beside DIR as DIR.zip.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
binary="$root/target/release/hubhook"
out="$root/target/azure-functions"
zip=1
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-zip) zip=0; shift ;;
    *) echo "package-azure.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$binary" ] || { echo "package-azure.sh: no executable at $binary (run cargo build --release, or pass --binary)" >&2; exit 1; }

exe="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["customHandler"]["description"]["defaultExecutablePath"])' "$root/host.json")"
rm -rf "$out"
mkdir -p "$out/handler"
cp "$root/host.json" "$out/host.json"
cp "$root/azure/handler/function.json" "$out/handler/function.json"
cp "$root/azure/local.settings.json" "$out/local.settings.json"
cp "$binary" "$out/$exe"
chmod 755 "$out/$exe"
echo "package-azure.sh: staged $out (host.json, handler/function.json, $exe)"

if [ "$zip" = 1 ]; then
  # Python's zipfile keeps the executable bit (external_attr), which the Linux Functions host needs.
  python3 - "$out" "$out.zip" <<'PY'
import os, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as z:
    for dirpath, _, files in os.walk(src):
        for f in sorted(files):
            if f == "local.settings.json":
                continue  # local only; never deployed
            p = os.path.join(dirpath, f)
            info = zipfile.ZipInfo.from_file(p, os.path.relpath(p, src))
            with open(p, "rb") as fh:
                z.writestr(info, fh.read(), zipfile.ZIP_DEFLATED)
PY
  echo "package-azure.sh: wrote $out.zip"
fi
