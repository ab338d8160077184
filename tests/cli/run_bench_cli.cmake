# cmake -DBENCH=path/to/specdec-bench -DBATCH_BENCH=path/to/specdec-batch-bench -P run_bench_cli.cmake
# The benchmark tools' command lines, without running a benchmark: --help prints the
# usage and exits 0; a bad value fails naming its option (a negative count used to wrap
# around in std::stoul); an unknown option points to --help.

function(expect_ok tool expect)
  execute_process(COMMAND ${tool} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${tool} ${ARGN} failed (${rc}):\n${err}")
  endif()
  string(FIND "${out}" "${expect}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${tool} ${ARGN}: expected '${expect}' on stdout, got:\n${out}")
  endif()
endfunction()

function(expect_error tool expect)
  execute_process(COMMAND ${tool} ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "${tool} ${ARGN} succeeded; expected an error")
  endif()
  string(FIND "${err}" "${expect}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${tool} ${ARGN}: expected '${expect}' in the error, got:\n${err}")
  endif()
endfunction()

expect_ok(${BENCH} "usage: specdec-bench" --help)
expect_error(${BENCH} "--gammas: '-1' is not a number" --gammas -1)
expect_error(${BENCH} "--tokens: 'x' is not a number" --tokens x)
expect_error(${BENCH} "--repeats: expected one number" --repeats 3,4)
expect_error(${BENCH} "(see --help)" --bogus)
expect_error(${BENCH} "--kv-format: weight format 'int3' is unknown" --kv-format int3)
expect_error(${BENCH} "--draft-kv-format: 'q8_0' cannot hold a KV cache" --draft-kv-format q8_0)

expect_ok(${BATCH_BENCH} "usage: specdec-batch-bench" --help)
expect_error(${BATCH_BENCH} "--tokens: '-3' is not a number" --tokens -3)
expect_error(${BATCH_BENCH} "--batches: 'a' is not a number" --batches 1,a)
expect_error(${BATCH_BENCH} "see --help" --bogus)
expect_error(${BATCH_BENCH} "--kv-format: 'q8_0' cannot hold a KV cache" --kv-format q8_0)
