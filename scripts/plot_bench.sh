#!/usr/bin/env bash
# Renders specdec-bench's CSV (specdec-bench --csv FILE) to charts in docs/ with gnuplot:
#   docs/speedup_vs_gamma.{svg,png}  greedy speculative decoding speedup over autoregressive
#                                    decoding vs the draft length gamma, per model pair and
#                                    thread count, with the formula's and the refined prediction
#   docs/bild_frontier.{svg,png}     BiLD speedup vs agreement with the target's greedy output
#                                    (the speed/quality frontier), per pair and thread count
# Usage: scripts/plot_bench.sh [specdec_bench.csv] [output dir, default docs]
# Installs Debian's gnuplot-nox if gnuplot is missing (needs root or sudo).
set -euo pipefail
csv=${1:-specdec_bench.csv}
out=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs}
me=plot_bench.sh
. "$(dirname "$0")/plot_common.sh"

c_pair=$(col pair); c_df=$(col draft_format); c_tf=$(col target_format); c_thr=$(col threads)
c_method=$(col method); c_config=$(col config); c_gamma=$(col gamma); c_speed=$(col speedup)
c_pred=$(col predicted_speedup); c_ref=$(col refined_predicted_speedup)
c_agree=$(col agreement_with_target_greedy)

# One data file per (pair, formats, threads) series.
series=$(awk -F, -v p="$c_pair" -v d="$c_df" -v t="$c_tf" -v h="$c_thr" 'NR > 1 { print $p "|" $d "|" $t "|" $h }' "$csv" | sort -u)
gamma_plots=(); bild_plots=()
i=0
while IFS= read -r s; do
  i=$((i + 1))
  IFS="|" read -r pair df tf thr <<<"$s"
  case $pair in little) name="kjv-little $df -> kjv-big $tf";; self) name="kjv-big $df -> kjv-big $tf";; *) name="$pair";; esac
  name="$name, $thr thr"
  awk -F, -v OFS=' ' -v key="$s" -v p="$c_pair" -v d="$c_df" -v t="$c_tf" -v h="$c_thr" -v m="$c_method" \
      -v c="$c_config" -v g="$c_gamma" -v sp="$c_speed" -v pr="$c_pred" -v rf="$c_ref" \
      'NR > 1 && ($p "|" $d "|" $t "|" $h) == key && $m == "sd" && $c ~ /^"greedy gamma=/ { print $g, $sp, $pr, $rf }' \
      "$csv" | sort -n >"$tmp/gamma_$i.dat"
  awk -F, -v OFS=' ' -v key="$s" -v p="$c_pair" -v d="$c_df" -v t="$c_tf" -v h="$c_thr" -v m="$c_method" \
      -v a="$c_agree" -v sp="$c_speed" \
      'NR > 1 && ($p "|" $d "|" $t "|" $h) == key && $m == "bild" { print $a, $sp }' "$csv" >"$tmp/bild_$i.dat"
  awk -F, -v OFS=' ' -v key="$s" -v p="$c_pair" -v d="$c_df" -v t="$c_tf" -v h="$c_thr" -v m="$c_method" \
      -v c="$c_config" -v a="$c_agree" -v sp="$c_speed" \
      'NR > 1 && ($p "|" $d "|" $t "|" $h) == key && $m == "sd" && $c ~ /^"greedy/ { print $a, $sp }' "$csv" >"$tmp/sd_$i.dat"
  if [ -s "$tmp/gamma_$i.dat" ]; then
    gamma_plots+=("'$tmp/gamma_$i.dat' using 1:2 with linespoints lw 2 lc $i pt 7 title '$name: measured'")
    gamma_plots+=("'$tmp/gamma_$i.dat' using 1:3 with lines dt 2 lc $i title '$name: formula'")
    gamma_plots+=("'$tmp/gamma_$i.dat' using 1:4 with lines dt 3 lw 2 lc $i title '$name: refined (measured block cost)'")
  fi
  if [ -s "$tmp/bild_$i.dat" ]; then
    bild_plots+=("'$tmp/bild_$i.dat' using 1:2 with points pt 7 lc $i title 'BiLD, $name'")
    bild_plots+=("'$tmp/sd_$i.dat' using 1:2 with points pt 5 ps 1.5 lc $i title 'lossless SD (greedy), $name'")
  fi
done <<<"$series"

if [ ${#gamma_plots[@]} -gt 0 ]; then
  render speedup_vs_gamma "set title 'Greedy speculative decoding: speedup over autoregressive vs gamma'; \
    set xlabel 'draft length gamma'; set ylabel 'speedup (tokens/s over AR tokens/s)'; set grid; \
    set key outside bottom center horizontal maxrows 3 font ',9'; set yrange [0:*]; \
    plot $(join_plots "${gamma_plots[@]}"), 1 with lines lc rgb 'gray' notitle"
fi
if [ ${#bild_plots[@]} -gt 0 ]; then
  render bild_frontier "set title 'BiLD: speedup vs quality (agreement with the target greedy output)'; \
    set xlabel 'token agreement with target greedy output'; set ylabel 'speedup over autoregressive'; set grid; \
    set key outside bottom center horizontal maxrows 2 font ',9'; set yrange [0:*]; \
    plot $(join_plots "${bild_plots[@]}"), 1 with lines lc rgb 'gray' notitle"
fi
