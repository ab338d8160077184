# Shared by the plot scripts (plot.sh, plot_hybrid.sh, plot_hybrid_net.sh): source it, do
# not run it. Expects `me` (the calling script's name for messages), `csv` (the CSV it
# reads first) and `out` (the output folder) to be set; `formats` may list the image
# formats `render` writes (default "svg png").
# Checks the CSV, installs Debian's gnuplot-nox if gnuplot is missing (needs root or
# sudo), makes the output folder and a temporary folder `tmp` removed on exit, and defines:
#   col NAME [CSV]     the 1-based column number of header NAME in CSV (default $csv;
#                      empty if absent), so added columns do no harm
#   join_plots A B ... the gnuplot plot clauses joined with commas
#   render BASE BODY   writes $out/BASE.<format> for each of $formats from the gnuplot
#                      commands BODY
[ -f "$csv" ] || { echo "$me: no CSV at '$csv' (run the tool that writes it first)" >&2; exit 1; }
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "$me: installing gnuplot-nox" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gnuplot-nox >/dev/null
fi
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
formats=${formats:-svg png}

col() { head -1 "${2:-$csv}" | tr ',' '\n' | grep -nx "$1" | cut -d: -f1; }
join_plots() { local IFS=','; echo "$*"; }
render() {  # BASE GNUPLOT-COMMANDS
  local term t
  for term in $formats; do
    if [ "$term" = svg ]; then t="set terminal svg size 900,580 dynamic background rgb 'white' font 'Helvetica,12'"
    else t="set terminal pngcairo size 900,580 font 'Helvetica,11'"; fi
    gnuplot -e "$t; set termoption noenhanced; set output '$out/$1.$term'; $2" 2>/dev/null || {
      [ "$term" = png ] && gnuplot -e "set terminal png size 900,580; set output '$out/$1.$term'; $2"; }
    echo "$me: wrote $out/$1.$term"
  done
}
