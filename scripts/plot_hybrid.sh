#!/usr/bin/env bash
# Renders specdec-hybrid-eval's output folder to charts in docs/:
#   docs/hybrid_routing_pgr.{svg,png}          PGR vs cloud fraction per arbiter on the test
#                                              fold, with random (the diagonal) and oracles
#   docs/hybrid_routing_latency_cdf.{svg,png}  CDF of each route's latency on the tier profiles
# Usage: scripts/plot_hybrid.sh [specdec-hybrid-eval --out DIR] [output dir, default docs]
# Installs Debian's gnuplot-nox if gnuplot is missing (needs root or sudo).
set -euo pipefail
dir=${1:-build/hybrid_routing}
out=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs}
me=plot_hybrid.sh
csv=$dir/routing_curves.csv
. "$(dirname "$0")/plot_common.sh"

c_arb=$(col arbiter); c_frac=$(col cloud_fraction); c_pgr=$(col pgr)
plots=("x with lines dt 2 lc rgb 'gray' title 'random (expected)'")
i=0
for a in confidence_prompt confidence_lookahead logistic latency random oracle_label oracle_quality; do
  i=$((i + 1))
  awk -F, -v A="$c_arb" -v f="$c_frac" -v p="$c_pgr" -v key="$a" 'NR > 1 && $A == key { print $f, $p }' "$csv" \
    | sort -n >"$tmp/p_$i.dat"
  [ -s "$tmp/p_$i.dat" ] && plots+=("'$tmp/p_$i.dat' using 1:2 with linespoints lw 2 lc $i pt 7 ps 0.6 title '$a'")
done
render hybrid_routing_pgr "set title 'Routing kjv-little (device) / kjv-big (cloud): test fold, calibrated on other chapters'; \
  set xlabel 'share of requests sent to the cloud'; set ylabel 'performance gap recovered (PGR)'; set grid; \
  set xrange [0:1]; set yrange [-0.2:1.5]; set key outside bottom center horizontal maxrows 3 font ',9'; \
  plot $(join_plots "${plots[@]}")"

csv=$dir/routing_latency.csv
c_tiers=$(col tiers); c_route=$(col route); c_sec=$(col seconds)
plots=()
i=0
for t in "device+edge" "device+cloud"; do
  for r in device cloud speculative cloud_prefix; do
    i=$((i + 1))
    awk -F, -v T="$c_tiers" -v R="$c_route" -v S="$c_sec" -v t="$t" -v r="$r" \
      'NR > 1 && $T == t && $R == r { print $S }' "$csv" | sort -g | awk '{ v[NR] = $1 } END { for (i = 1; i <= NR; ++i) print v[i], i / NR }' >"$tmp/l_$i.dat"
    dt=1; [ "$t" = "device+cloud" ] && dt=2
    plots+=("'$tmp/l_$i.dat' using 1:2 with lines lw 2 dt $dt lc $(( (i - 1) % 4 + 1 )) title '$t: $r'")
  done
done
render hybrid_routing_latency_cdf "set title 'Latency of each route on the tier profiles (test fold, true lengths)'; \
  set xlabel 'end-to-end seconds (device prefill = the probe, paid by every route, excluded)'; \
  set ylabel 'share of requests'; set grid; set xrange [0:*]; set yrange [0:1]; \
  set key outside bottom center horizontal maxrows 2 font ',9'; plot $(join_plots "${plots[@]}")"
