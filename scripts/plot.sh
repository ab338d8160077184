#!/usr/bin/env bash
# Renders the charts of docs/performance.md with gnuplot, from the tools' CSVs in docs/bench/:
#   docs/speedup_vs_gamma.png  greedy speculative decoding: speedup over autoregressive
#                              decoding vs the draft length gamma, measured and predicted by
#                              the formula and by the formula refined with the measured
#                              verify-block cost (from specdec-bench --csv: specdec_bench.csv)
#   docs/batch_throughput.png  batched decoding: total decode tokens/s and p50 per-token
#                              latency vs batch size (from specdec-batch-bench --csv:
#                              batch_bench.csv)
# Usage: scripts/plot.sh [--host LABEL] [--data DIR (docs/bench)] [--out DIR (docs)]
# LABEL (the host the CSVs were measured on) goes into the titles; scripts/figures.sh
# --record passes it. Installs Debian's gnuplot-nox if gnuplot is missing (needs root or sudo).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
host="" data="$root/docs/bench" out="$root/docs"
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "plot.sh: unknown option '$1'; usage: scripts/plot.sh [--host LABEL] [--data DIR] [--out DIR]" >&2; exit 2 ;;
  esac
done
for f in specdec_bench.csv batch_bench.csv; do
  [ -f "$data/$f" ] || { echo "plot.sh: no $data/$f (scripts/figures.sh --record writes it)" >&2; exit 1; }
done
me=plot.sh
csv=$data/specdec_bench.csv
formats=png
. "$(dirname "$0")/plot_common.sh"
on=${host:+ (${host//\'/})}

# Speedup vs gamma: one series per (pair, formats, threads).
csv=$data/specdec_bench.csv
c_pair=$(col pair "$csv"); c_df=$(col draft_format "$csv"); c_tf=$(col target_format "$csv")
c_thr=$(col threads "$csv"); c_method=$(col method "$csv"); c_config=$(col config "$csv")
c_gamma=$(col gamma "$csv"); c_speed=$(col speedup "$csv"); c_pred=$(col predicted_speedup "$csv")
c_ref=$(col refined_predicted_speedup "$csv")
plots=()
i=0
while IFS="|" read -r pair df tf thr; do
  i=$((i + 1))
  case $pair in little) name="kjv-little $df -> kjv-big $tf";; self) name="kjv-big $df -> kjv-big $tf";; *) name=$pair;; esac
  name="$name, $thr thr"
  awk -F, -v key="$pair|$df|$tf|$thr" -v p="$c_pair" -v d="$c_df" -v t="$c_tf" -v h="$c_thr" -v m="$c_method" \
      -v c="$c_config" -v g="$c_gamma" -v sp="$c_speed" -v pr="$c_pred" -v rf="$c_ref" \
      'NR > 1 && ($p "|" $d "|" $t "|" $h) == key && $m == "sd" && $c ~ /^"greedy gamma=/ { print $g, $sp, $pr, $rf }' \
      "$csv" | sort -n >"$tmp/gamma_$i.dat"
  [ -s "$tmp/gamma_$i.dat" ] || continue
  plots+=("'$tmp/gamma_$i.dat' using 1:2 with linespoints lw 2 lc $i pt 7 title '$name: measured'")
  plots+=("'$tmp/gamma_$i.dat' using 1:3 with lines dt 2 lc $i title '$name: formula'")
  plots+=("'$tmp/gamma_$i.dat' using 1:4 with lines dt 3 lw 2 lc $i title '$name: refined (measured block cost)'")
done < <(awk -F, -v p="$c_pair" -v d="$c_df" -v t="$c_tf" -v h="$c_thr" 'NR > 1 { print $p "|" $d "|" $t "|" $h }' "$csv" | sort -u)
[ ${#plots[@]} -gt 0 ] || { echo "plot.sh: no greedy gamma rows in $csv" >&2; exit 1; }
render speedup_vs_gamma "set title 'Greedy speculative decoding: speedup over autoregressive vs gamma$on'; \
  set xlabel 'draft length gamma'; set ylabel 'speedup (tokens/s over AR tokens/s)'; set grid; \
  set key outside bottom center horizontal maxrows 3 font ',9'; set yrange [0:*]; \
  plot $(join_plots "${plots[@]}"), 1 with lines lc rgb 'gray' notitle"

# Batch curve: one series per batched model and method.
csv=$data/batch_bench.csv
c_sec=$(col section "$csv"); c_method=$(col method "$csv"); c_batch=$(col batch "$csv")
c_dec=$(col decode_tok_s "$csv"); c_p50=$(col p50_token_ms "$csv")
[ -n "$c_dec" ] || { echo "plot.sh: $csv has no decode_tok_s column" >&2; exit 1; }
plots=()
i=0
for m in $(awk -F, -v s="$c_sec" -v m="$c_method" 'NR > 1 && $s == "curve" { print $m }' "$csv" | awk '!seen[$0]++'); do
  i=$((i + 1))
  awk -F, -v s="$c_sec" -v mm="$c_method" -v b="$c_batch" -v d="$c_dec" -v p="$c_p50" -v key="$m" \
      'NR > 1 && $s == "curve" && $mm == key { print $b, $d, $p }' "$csv" | sort -n >"$tmp/c_$i.dat"
  plots+=("'$tmp/c_$i.dat' using 1:2 axes x1y1 with linespoints lw 2 lc $i pt 7 title '$m: tokens/s'")
  plots+=("'$tmp/c_$i.dat' using 1:3 axes x1y2 with linespoints dt 2 lc $i pt 6 title '$m: p50 ms/token'")
done
[ ${#plots[@]} -gt 0 ] || { echo "plot.sh: no curve rows in $csv" >&2; exit 1; }
render batch_throughput "set title 'Batched decoding on kjv-big: decode throughput and per-token latency vs batch size$on'; \
  set xlabel 'batch size (concurrent sequences)'; set logscale x 2; set ylabel 'total decode tokens/s'; \
  set y2label 'p50 per-token latency (ms)'; set ytics nomirror; set y2tics; set grid; \
  set yrange [0:*]; set y2range [0:*]; set key outside bottom center horizontal maxrows 4 font ',9'; \
  plot $(join_plots "${plots[@]}")"
