#!/usr/bin/env bash
# Renders specdec-batch-bench's CSV (specdec-batch-bench --csv FILE) to a chart in docs/:
#   docs/batch_throughput.{svg,png}  the throughput/latency curve over batch sizes: total
#                                    decode tokens/s (left axis) and p50 per-token latency
#                                    (right axis) per batched model and method
# Usage: scripts/plot_batch.sh [batch_bench.csv] [output dir, default docs]
# Installs Debian's gnuplot-nox if gnuplot is missing (needs root or sudo).
set -euo pipefail
csv=${1:-batch_bench.csv}
out=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs}
me=plot_batch.sh
. "$(dirname "$0")/plot_common.sh"

c_sec=$(col section); c_method=$(col method); c_batch=$(col batch); c_dec=$(col decode_tok_s)
c_p50=$(col p50_token_ms)
[ -n "$c_dec" ] || { echo "plot_batch.sh: '$csv' has no decode_tok_s column (old specdec-batch-bench?)" >&2; exit 1; }

plots=()
i=0
for m in $(awk -F, -v s="$c_sec" -v m="$c_method" 'NR > 1 && $s == "curve" { print $m }' "$csv" | awk '!seen[$0]++'); do
  i=$((i + 1))
  awk -F, -v OFS=' ' -v s="$c_sec" -v mm="$c_method" -v b="$c_batch" -v d="$c_dec" -v p="$c_p50" -v key="$m" \
      'NR > 1 && $s == "curve" && $mm == key { print $b, $d, $p }' "$csv" | sort -n >"$tmp/c_$i.dat"
  plots+=("'$tmp/c_$i.dat' using 1:2 axes x1y1 with linespoints lw 2 lc $i pt 7 title '$m: tokens/s'")
  plots+=("'$tmp/c_$i.dat' using 1:3 axes x1y2 with linespoints dt 2 lc $i pt 6 title '$m: p50 ms/token'")
done
[ ${#plots[@]} -gt 0 ] || { echo "plot_batch.sh: no curve rows in '$csv'" >&2; exit 1; }
render batch_throughput "set title 'Batched decoding on kjv-big: total decode throughput and per-token latency vs batch size'; \
  set xlabel 'batch size (concurrent sequences)'; set logscale x 2; set ylabel 'total decode tokens/s'; \
  set y2label 'p50 per-token latency (ms)'; set ytics nomirror; set y2tics; set grid; \
  set yrange [0:*]; set y2range [0:*]; set key outside bottom center horizontal maxrows 4 font ',9'; \
  plot $(join_plots "${plots[@]}")"
