#!/usr/bin/env bash
# Reproduces docs/hybrid_routing.md: builds specdec-hybrid-eval, runs it over every verse of
# the 24 held-out KJV chapters and over the length workloads (KJV verses, stories260K's own
# stories; about 10 minutes on 2 shared cores, at nice 5), replaces the committed logs
# models/kjv_routing_log.csv, models/kjv_length_log.csv and models/stories260K_length_log.csv
# with the fresh ones, and renders the charts. With --from-log it only re-analyses the
# committed logs (seconds; no scheduler sections).
# Usage: scripts/hybrid_routing.sh [--from-log]    (BUILD=dir, OUT=dir to override)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
out=${OUT:-$build/hybrid_routing}
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target specdec-hybrid-eval
if [ "${1:-}" = "--from-log" ]; then
  nice -n 5 "$build/bin/specdec-hybrid-eval" --from-log models/kjv_routing_log.csv \
    --length-log models/kjv_length_log.csv --story-log models/stories260K_length_log.csv --out "$out"
else
  nice -n 5 "$build/bin/specdec-hybrid-eval" --out "$out"
  cp "$out/routing_log.csv" models/kjv_routing_log.csv
  cp "$out/kjv_verses_length_log.csv" models/kjv_length_log.csv
  cp "$out/stories260K_length_log.csv" models/stories260K_length_log.csv
fi
bash scripts/plot_hybrid.sh "$out" docs
echo "hybrid_routing.sh: numbers in $out/routing_summary.json, tables in $out/routing_tradeoff.csv"
