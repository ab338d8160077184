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
[ -f "$csv" ] || { echo "plot_batch.sh: no CSV at '$csv' (run specdec-batch-bench --csv $csv first)" >&2; exit 1; }
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "plot_batch.sh: installing gnuplot-nox" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gnuplot-nox >/dev/null
fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

col() { head -1 "$csv" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1; }
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
body="set title 'Batched decoding on kjv-big: total decode throughput and per-token latency vs batch size'; \
  set xlabel 'batch size (concurrent sequences)'; set logscale x 2; set ylabel 'total decode tokens/s'; \
  set y2label 'p50 per-token latency (ms)'; set ytics nomirror; set y2tics; set grid; \
  set yrange [0:*]; set y2range [0:*]; set key outside bottom center horizontal maxrows 4 font ',9'; \
  plot $(IFS=','; echo "${plots[*]}")"
for term in svg png; do
  if [ $term = svg ]; then t="set terminal svg size 900,600 dynamic background rgb 'white' font 'Helvetica,12'"
  else t="set terminal pngcairo size 900,600 font 'Helvetica,11'"; fi
  gnuplot -e "$t; set termoption noenhanced; set output '$out/batch_throughput.$term'; $body" 2>/dev/null || {
    [ $term = png ] && gnuplot -e "set terminal png size 900,600; set output '$out/batch_throughput.$term'; $body"; }
done
echo "plot_batch.sh: wrote $out/batch_throughput.svg and $out/batch_throughput.png"
