#!/usr/bin/env bash
# Renders specdec-hybrid-net's CSV to docs/hybrid_net_simulator.svg: per-token p50 latency
# of each simulated route against the RTT, measured (lines) and simulated (points).
# Usage: scripts/plot_hybrid_net.sh hybrid_net.csv [output dir, default docs]
# Installs Debian's gnuplot-nox if gnuplot is missing (needs root or sudo).
set -euo pipefail
csv=${1:?usage: plot_hybrid_net.sh hybrid_net.csv [output dir]}
out=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs}
me=plot_hybrid_net.sh
formats=svg
. "$(dirname "$0")/plot_common.sh"
c_sec=$(col section); c_route=$(col route); c_rtt=$(col rtt_ms); c_real=$(col per_token_p50_ms); c_sim=$(col sim_per_token_p50_ms)
plots=()
i=0
for r in cloud split_greedy split_sampled cloud_prefix; do
  i=$((i + 1))
  awk -F, -v S="$c_sec" -v R="$c_route" -v T="$c_rtt" -v A="$c_real" -v B="$c_sim" -v r="$r" \
    'NR > 1 && $S == "routes" && $R == r { print ($T == 0 ? 1 : $T), $A, $B }' "$csv" | sort -g >"$tmp/$i.dat"
  plots+=("'$tmp/$i.dat' using 1:2 with linespoints lw 2 lc $i pt 7 title '$r measured'")
  plots+=("'$tmp/$i.dat' using 1:3 with points lc $i pt 6 ps 1.5 title '$r simulated'")
done
gnuplot <<GP
set terminal svg size 800,500 font 'sans,11'
set output '$out/hybrid_net_simulator.svg'
set title 'Per-token p50 latency over a real link against the simulator (RTT 0 drawn at 1 ms)'
set termoption noenhanced
set xlabel 'RTT ms'; set ylabel 'ms per token'; set logscale xy; set grid; set xrange [0.8:200]
set key outside bottom center horizontal maxrows 2 font ',9'
plot $(IFS=,; echo "${plots[*]}")
GP
echo "plot_hybrid_net.sh: wrote $out/hybrid_net_simulator.svg"
