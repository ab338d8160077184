#!/usr/bin/env bash
# Reproduces docs/hybrid_routing.md: builds specdec-hybrid-eval, runs it over every verse of
# the 24 held-out KJV chapters (about 6 minutes on 2 shared cores, at nice 5), replaces the
# committed log models/kjv_routing_log.csv with the fresh one, and renders the charts.
# With --from-log it only re-analyses the committed log (seconds; no scheduler section).
# Usage: scripts/hybrid_routing.sh [--from-log]    (BUILD=dir, OUT=dir to override)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
out=${OUT:-$build/hybrid_routing}
[ -f "$build/CMakeCache.txt" ] || cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j2 --target specdec-hybrid-eval
if [ "${1:-}" = "--from-log" ]; then
  nice -n 5 "$build/bin/specdec-hybrid-eval" --from-log models/kjv_routing_log.csv --out "$out"
else
  nice -n 5 "$build/bin/specdec-hybrid-eval" --out "$out"
  cp "$out/routing_log.csv" models/kjv_routing_log.csv
fi
bash scripts/plot_hybrid.sh "$out" docs
echo "hybrid_routing.sh: numbers in $out/routing_summary.json, tables in $out/routing_tradeoff.csv"
