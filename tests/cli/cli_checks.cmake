# Helpers of the CLI tests (include()d by run_generate.cmake and run_bench_cli.cmake).

# Runs the command in ARGN; fails the test unless it exits 0. Its stdout goes to out_var.
function(cli_run_ok out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} failed (${rc}):\n${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# Runs the command in ARGN; fails the test unless it fails and says `expect` on stderr.
function(cli_run_fails expect)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} succeeded; expected an error")
  endif()
  string(FIND "${err}" "${expect}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${ARGN}: expected '${expect}' in the error, got:\n${err}")
  endif()
endfunction()
