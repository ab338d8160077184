# cmake -DBENCH=path/to/specdec-bench -DBATCH_BENCH=path/to/specdec-batch-bench
#       -DHYBRID_EVAL=path/to/specdec-hybrid-eval -DWORK_DIR=dir -P run_bench_cli.cmake
# The benchmark tools' command lines: --help prints the usage (from the option table) and
# exits 0; a bad value fails naming its option, the value and the expectation (negative
# counts are out of range, not "not a number"); an unknown option points to --help; and a
# tool writes no file it was not told to write.

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
expect_ok(${BENCH} "--gammas 1,2,..." --help)
cli_run_fails("--gammas: '-1' is out of range; expected a whole number in [1, 1024]" ${BENCH} --gammas -1)
cli_run_fails("--tokens: 'x' is not a whole number" ${BENCH} --tokens x)
cli_run_fails("--repeats: '3,4' is not a whole number" ${BENCH} --repeats 3,4)
cli_run_fails("listed by specdec-bench --help" ${BENCH} --bogus)
cli_run_fails("--kv-format: weight format 'int3' is unknown" ${BENCH} --kv-format int3)
cli_run_fails("--draft-kv-format: 'q8_0' cannot hold a KV cache" ${BENCH} --draft-kv-format q8_0)
cli_run_fails("--pairs: 'big' is not a pair; expected little or self" ${BENCH} --pairs little,big)
cli_run_fails("--threads: '5000' is out of range; expected a whole number in [0, 4095]" ${BENCH} --threads 1,5000)

expect_ok(${BATCH_BENCH} "usage: specdec-batch-bench" --help)
cli_run_fails("--tokens: '-3' is out of range; expected a whole number in [1, 1048576]" ${BATCH_BENCH} --tokens -3)
cli_run_fails("--batches: 'a' is not a whole number" ${BATCH_BENCH} --batches 1,a)
cli_run_fails("--batches: '0' is out of range; expected a whole number in [1, 1024]" ${BATCH_BENCH} --batches 0,4)
cli_run_fails("listed by specdec-batch-bench --help" ${BATCH_BENCH} --bogus)
cli_run_fails("--kv-format: 'q8_0' cannot hold a KV cache" ${BATCH_BENCH} --kv-format q8_0)
cli_run_fails("--long-fraction: '1.5' is out of range; expected a number in [0, 1]" ${BATCH_BENCH} --long-fraction 1.5)
cli_run_fails("--noise: 'x' is not a number; expected a number in [0, 1)" ${BATCH_BENCH} --noise x)
cli_run_fails("--budget-mb: '0' is out of range; expected a finite number > 0" ${BATCH_BENCH} --budget-mb 0)
cli_run_fails("--budget-mb: 'inf' is out of range; expected a finite number > 0" ${BATCH_BENCH} --budget-mb inf)
cli_run_fails("--budget-mb: '4,8' is not a number" ${BATCH_BENCH} --budget-mb 4,8)
cli_run_fails("--short-range: '16,8' is not a range; expected MIN,MAX with 0 < MIN <= MAX" ${BATCH_BENCH}
              --short-range 16,8)

expect_ok(${HYBRID_EVAL} "usage: specdec-hybrid-eval" --help)
cli_run_fails("--gamma: '-1' is out of range; expected a whole number in [1, 1024]" ${HYBRID_EVAL} --gamma -1)
cli_run_fails("--prefix: '0' is out of range" ${HYBRID_EVAL} --prefix 0)
cli_run_fails("--bootstrap: '1' is out of range" ${HYBRID_EVAL} --bootstrap 1)
cli_run_fails("routing log 'no/such.csv' cannot be opened" ${HYBRID_EVAL} --from-log no/such.csv --out ${CMAKE_CURRENT_BINARY_DIR}/hybrid_eval_cli)
cli_run_fails("unknown option '--agree'" ${HYBRID_EVAL} --agree 0.2)

# Output only where told: a short batch-bench run in an empty directory leaves it empty
# (it used to write batch_bench.csv there), and --csv writes where it says.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR}/cwd)
set(tiny --batches 1 --tokens 1 --repeats 1 --no-sd --no-independent --no-sched --threads 1)
execute_process(COMMAND ${BATCH_BENCH} ${tiny} WORKING_DIRECTORY ${WORK_DIR}/cwd RESULT_VARIABLE rc ERROR_VARIABLE err
                OUTPUT_QUIET)
file(GLOB left ${WORK_DIR}/cwd/*)
if(NOT rc EQUAL 0 OR left)
  message(FATAL_ERROR "specdec-batch-bench without --csv: exit ${rc}, files written: '${left}'\n${err}")
endif()
cli_run_fails("--csv: cannot write '${WORK_DIR}/no/dir/out.csv'" ${BATCH_BENCH} ${tiny} --csv ${WORK_DIR}/no/dir/out.csv)
cli_run_ok(out ${BATCH_BENCH} ${tiny} --csv ${WORK_DIR}/out.csv)
if(NOT EXISTS ${WORK_DIR}/out.csv)
  message(FATAL_ERROR "specdec-batch-bench --csv ${WORK_DIR}/out.csv wrote nothing")
endif()
