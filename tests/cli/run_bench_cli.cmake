# cmake -DBENCH=path/to/specdec-bench -DBATCH_BENCH=path/to/specdec-batch-bench
#       -DHYBRID_EVAL=path/to/specdec-hybrid-eval -P run_bench_cli.cmake
# The benchmark tools' command lines, without running a benchmark: --help prints the
# usage and exits 0; a bad value fails naming its option (a negative count used to wrap
# around in std::stoul); an unknown option points to --help.

include(${CMAKE_CURRENT_LIST_DIR}/cli_checks.cmake)

# Exits 0 and prints `expect` on stdout.
function(expect_ok tool expect)
  cli_run_ok(out ${tool} ${ARGN})
  string(FIND "${out}" "${expect}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${tool} ${ARGN}: expected '${expect}' on stdout, got:\n${out}")
  endif()
endfunction()

expect_ok(${BENCH} "usage: specdec-bench" --help)
cli_run_fails("--gammas: '-1' is not a number" ${BENCH} --gammas -1)
cli_run_fails("--tokens: 'x' is not a number" ${BENCH} --tokens x)
cli_run_fails("--repeats: expected one number" ${BENCH} --repeats 3,4)
cli_run_fails("(see --help)" ${BENCH} --bogus)
cli_run_fails("--kv-format: weight format 'int3' is unknown" ${BENCH} --kv-format int3)
cli_run_fails("--draft-kv-format: 'q8_0' cannot hold a KV cache" ${BENCH} --draft-kv-format q8_0)

expect_ok(${BATCH_BENCH} "usage: specdec-batch-bench" --help)
cli_run_fails("--tokens: '-3' is not a number" ${BATCH_BENCH} --tokens -3)
cli_run_fails("--batches: 'a' is not a number" ${BATCH_BENCH} --batches 1,a)
cli_run_fails("see --help" ${BATCH_BENCH} --bogus)
cli_run_fails("--kv-format: 'q8_0' cannot hold a KV cache" ${BATCH_BENCH} --kv-format q8_0)
cli_run_fails("--long-fraction: '1.5' is not a number in [0, 1]" ${BATCH_BENCH} --long-fraction 1.5)
cli_run_fails("--noise: 'x' is not a number in [0, 1]" ${BATCH_BENCH} --noise x)
cli_run_fails("--budget-mb: '0' is not a finite number > 0" ${BATCH_BENCH} --budget-mb 0)
cli_run_fails("--budget-mb: 'inf' is not a finite number > 0" ${BATCH_BENCH} --budget-mb inf)
cli_run_fails("--budget-mb: expected one finite number > 0" ${BATCH_BENCH} --budget-mb 4,8)

expect_ok(${HYBRID_EVAL} "usage: specdec-hybrid-eval" --help)
cli_run_fails("--gamma: '-1' is not a number" ${HYBRID_EVAL} --gamma -1)
cli_run_fails("--prefix must be in [1, --tokens), got 0" ${HYBRID_EVAL} --prefix 0)
cli_run_fails("--bootstrap must be >= 2, got 1" ${HYBRID_EVAL} --bootstrap 1)
cli_run_fails("routing log 'no/such.csv' cannot be opened" ${HYBRID_EVAL} --from-log no/such.csv --out ${CMAKE_CURRENT_BINARY_DIR}/hybrid_eval_cli)
cli_run_fails("unknown argument '--agree'" ${HYBRID_EVAL} --agree 0.2)
