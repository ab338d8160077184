#!/usr/bin/env bash
# One entry point for a fresh machine (run as root; nothing else needs installing by hand).
#   scripts/bootstrap.sh demo   install what is missing, build, run the demo on the bundled models
#   scripts/bootstrap.sh test   install what is missing, build, run the whole test suite,
#                               then again under AddressSanitizer + UndefinedBehaviorSanitizer,
#                               then the threaded tests under ThreadSanitizer, the kernels'
#                               tests in the portable x86-64-v3 build, and the fuzzers
#   scripts/bootstrap.sh configure STAGE DIR   only STAGE's cmake configure line, into DIR
#                               (STAGE: demo, test, asan, portable; tests/bootstrap checks
#                               the stages)
set -euo pipefail
cd "$(dirname "$0")/.."

# Each stage's configure line sets every option the stage relies on: stages share build
# directories, and cmake keeps cached values, so `demo` then `test` in one clone would
# otherwise test a build configured without tests.
configure_stage() {  # STAGE DIR
  case "$1" in
    demo) cmake -S . -B "$2" -DCMAKE_BUILD_TYPE=Release -DSPECDEC_SANITIZE=OFF -DSPECDEC_NATIVE=ON -DSPECDEC_TEST_CXX_FLAGS= \
            -DSPECDEC_BUILD_TESTS=OFF -DSPECDEC_BUILD_BENCH=OFF -DSPECDEC_BUILD_EXAMPLES=ON >/dev/null ;;
    # The test programs at -O2, the libraries and programs at Release's -O3 (CMakeLists.txt).
    test) cmake -S . -B "$2" -DCMAKE_BUILD_TYPE=Release -DSPECDEC_SANITIZE=OFF -DSPECDEC_NATIVE=ON -DSPECDEC_TEST_CXX_FLAGS=-O2 \
            -DSPECDEC_BUILD_TESTS=ON -DSPECDEC_BUILD_BENCH=ON -DSPECDEC_BUILD_EXAMPLES=ON >/dev/null ;;
    # -O1 -g1: sanitizer builds are compile-bound here; -O1 halves the build of the heaviest
    # test files against -O2 -g, and -g1 still gives file:line stack traces. The test
    # programs at -O0 halve it again; the compiled backend they run keeps -O1.
    asan) cmake -S . -B "$2" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
            -DSPECDEC_TEST_CXX_FLAGS=-O0 -DSPECDEC_SANITIZE=ON -DSPECDEC_NATIVE=ON \
            -DSPECDEC_BUILD_TESTS=ON -DSPECDEC_BUILD_BENCH=OFF -DSPECDEC_BUILD_EXAMPLES=OFF >/dev/null ;;
    # The portable build (AVX2 + FMA, no AVX-512) of the kernels' tests: its tiles, integer
    # dot products and 8-lane elementwise kernels run nowhere else, and its logits must be
    # the AVX-512 build's bit for bit (test_transformer).
    portable) cmake -S . -B "$2" -DCMAKE_BUILD_TYPE=Release -DSPECDEC_SANITIZE=OFF -DSPECDEC_MARCH=x86-64-v3 \
            -DSPECDEC_TEST_CXX_FLAGS=-O2 -DSPECDEC_BUILD_TESTS=ON -DSPECDEC_BUILD_BENCH=OFF -DSPECDEC_BUILD_EXAMPLES=OFF >/dev/null ;;
    *) echo "bootstrap: unknown stage '$1'; expected demo, test, asan or portable" >&2; return 2 ;;
  esac
}
if [ "${1:-}" = configure ]; then
  [ $# -eq 3 ] || { echo "usage: scripts/bootstrap.sh configure STAGE DIR" >&2; exit 2; }
  configure_stage "$2" "$3"
  exit
fi

packages=(cmake g++ make pkg-config libeigen3-dev libxtensor-dev libgtest-dev libbenchmark-dev sentencepiece
          libcpp-httplib-dev nlohmann-json3-dev libssl-dev clang-14 libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

jobs=$(nproc 2>/dev/null || echo 2)
mode=${1:-test}
case "$mode" in
  demo)
    configure_stage demo build
    cmake --build build -j"$jobs" --target specdec-generate
    gen=./build/bin/specdec-generate
    kjv=(--model models/kjv-big.bin --tokenizer models/kjv2k-tokenizer.bin --max-new-tokens 120)
    prompt="And it came to pass"
    echo "== kjv-big alone, greedy: \"$prompt\"" >&2
    "$gen" "${kjv[@]}" --prompt "$prompt" | tee build/demo_ar.txt
    echo "== speculative: kjv-little (int8 w8a8) drafts, kjv-big verifies (gamma 4, exact)" >&2
    "$gen" "${kjv[@]}" --prompt "$prompt" --draft models/kjv-little.bin --draft-format w8a8 --method sd --gamma 4 \
      | tee build/demo_sd.txt
    if cmp -s build/demo_ar.txt build/demo_sd.txt; then
      echo "== speculative output is identical to kjv-big's own greedy output" >&2
    else
      echo "== ERROR: speculative output differs from kjv-big's greedy output" >&2
      exit 1
    fi
    echo "== Big Little Decoder (alpha_fb 0.3, alpha_rb 3, lossy)" >&2
    "$gen" "${kjv[@]}" --prompt "$prompt" --draft models/kjv-little.bin --method bild \
      --fallback-threshold 0.3 --rollback-threshold 3
    echo "== stories260K, temperature 0.8, top-p 0.9, seed 42" >&2
    "$gen" --model models/stories260K.bin --tokenizer models/tok512.bin \
      --prompt "Once upon a time" --max-new-tokens 80 --temperature 0.8 --top-p 0.9 --seed 42
    ;;
  test)
    configure_stage test build
    cmake --build build -j"$jobs"
    ctest --test-dir build --output-on-failure --no-tests=error -j"$jobs"
    echo "== again under AddressSanitizer + UndefinedBehaviorSanitizer" >&2
    configure_stage asan build-asan
    cmake --build build-asan -j"$jobs"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --test-dir build-asan --output-on-failure --no-tests=error -j"$jobs"
    echo "== the threaded tests under ThreadSanitizer" >&2
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
      -DSPECDEC_TSAN=ON -DSPECDEC_SANITIZE=OFF -DSPECDEC_BUILD_TESTS=ON -DSPECDEC_BUILD_BENCH=OFF -DSPECDEC_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build build-tsan -j"$jobs" --target test_thread_pool
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 ./build-tsan/bin/test_thread_pool
    if [ "$(uname -m)" = x86_64 ]; then
      echo "== the kernels' tests in the portable x86-64-v3 build" >&2
      configure_stage portable build-v3
      cmake --build build-v3 -j"$jobs" --target test_kernels test_transformer test_roofline
      ctest --test-dir build-v3 --output-on-failure --no-tests=error -j"$jobs" -R '^test_(kernels|transformer|roofline)$'
    fi
    scripts/fuzz.sh 30  # libFuzzer harnesses of tests/fuzz, 30 s each
    ;;
  *)
    echo "usage: scripts/bootstrap.sh demo|test|configure STAGE DIR" >&2
    exit 2
    ;;
esac
