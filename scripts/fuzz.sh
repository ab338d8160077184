#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz with clang (-fsanitize=fuzzer,address,undefined)
# in build-fuzz/ and runs each for a bounded time, starting from its committed seeds.
#   scripts/fuzz.sh [seconds per harness, default 30] [harness names, default all]
# A crash stops with the reproducer in build-fuzz/crashes/NAME/; copy it to
# tests/fuzz/regressions/NAME/ (the ordinary test build replays that directory and the
# seeds in ctest, fuzz_NAME_replay) and fix the bug.
#
# Adding a harness (e.g. a network message parser):
#   1. tests/fuzz/fuzz_NAME.cpp defining extern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t)
#   2. a few small seed inputs in tests/fuzz/corpus/NAME/
#   3. an empty tests/fuzz/regressions/NAME/.gitkeep
# CMake's glob picks the file up for both builds; this script runs every fuzz_* it built.
# A harness that needs more than the library (fuzz_completion_request reads the server's
# headers) gets its include directories in tests/fuzz/CMakeLists.txt; one CMake skipped
# for a missing dependency is reported here and not run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
cxx=${SPECDEC_FUZZ_CXX:-clang++-14}
command -v "$cxx" >/dev/null || { echo "fuzz.sh: $cxx not found (apt-get install clang-14 libclang-rt-14-dev)" >&2; exit 1; }

# -O1 -g1 and no NDEBUG: the library's assertions stay armed, and fuzz_checkpoint (every
# weight format's kernels under ASan and coverage) compiles in 2.5 minutes, not 3.
cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
  -DCMAKE_CXX_COMPILER="$cxx" -DSPECDEC_FUZZ=ON \
  -DSPECDEC_BUILD_TESTS=OFF -DSPECDEC_BUILD_BENCH=OFF -DSPECDEC_BUILD_EXAMPLES=OFF -DSPECDEC_BUILD_SERVER=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc 2>/dev/null || echo 2)"

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for f in tests/fuzz/fuzz_*.cpp; do names+=("$(basename "$f" .cpp | sed 's/^fuzz_//')"); done
fi
# The harnesses run side by side, one per core (each is single-threaded), so the wall time
# is about seconds x harnesses / cores.
jobs=${SPECDEC_FUZZ_JOBS:-$(nproc 2>/dev/null || echo 2)}
run_one() {
  local name=$1 work=build-fuzz/corpus/$1 crashes=build-fuzz/crashes/$1
  mkdir -p "$work" "$crashes"
  # New inputs go to build-fuzz/corpus/NAME (the committed seeds stay as they are).
  if ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
      "build-fuzz/bin/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="$crashes/" "$work" "tests/fuzz/corpus/$name" 2> "build-fuzz/fuzz_$name.log"; then
    echo 0 > "build-fuzz/fuzz_$name.status"
  else
    echo 1 > "build-fuzz/fuzz_$name.status"
  fi
}
ran=()
for name in "${names[@]}"; do
  if [ ! -x "build-fuzz/bin/fuzz_$name" ]; then
    echo "== fuzz_$name was not built (see the CMake output for the missing dependency); skipped" >&2
    continue
  fi
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  echo "== fuzz_$name for ${seconds} s" >&2
  rm -f "build-fuzz/fuzz_$name.status"
  run_one "$name" &
  ran+=("$name")
done
wait
status=0
for name in "${ran[@]}"; do
  if [ "$(cat "build-fuzz/fuzz_$name.status" 2>/dev/null)" != 0 ]; then
    tail -n 60 "build-fuzz/fuzz_$name.log" >&2
    echo "fuzz.sh: fuzz_$name failed; reproducer in build-fuzz/crashes/$name/" >&2
    status=1
  else
    echo "== fuzz_$name:" >&2
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "build-fuzz/fuzz_$name.log" >&2 || true
  fi
done
exit $status
