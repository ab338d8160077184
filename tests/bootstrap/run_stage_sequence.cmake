# ctest driver: a user runs `scripts/bootstrap.sh demo`, then `scripts/bootstrap.sh test`,
# in one clone. The stages share build directories, so each stage's configure line must
# set every option it relies on; this replays exactly those lines (bootstrap's
# `configure STAGE DIR` mode, no build) in the stages' order into scratch directories and
# fails if a testing stage would find no tests, or if a ctest call of the script could
# pass with none. Inputs: SOURCE_DIR, WORK_DIR, BASH.
file(REMOVE_RECURSE ${WORK_DIR})
set(script ${SOURCE_DIR}/scripts/bootstrap.sh)

function(configure_stage stage dir)
  execute_process(COMMAND ${BASH} ${script} configure ${stage} ${dir}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(rc)
    message(FATAL_ERROR "bootstrap.sh configure ${stage} failed (${rc}):\n${out}\n${err}")
  endif()
endfunction()

# Number of tests `ctest -N` lists in `dir`.
function(count_tests dir out_var)
  execute_process(COMMAND ${CMAKE_CTEST_COMMAND} --test-dir ${dir} -N
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT out MATCHES "Total Tests: ([0-9]+)")
    message(FATAL_ERROR "ctest -N in ${dir} printed no test count (${rc}):\n${out}\n${err}")
  endif()
  set(${out_var} ${CMAKE_MATCH_1} PARENT_SCOPE)
endfunction()

# Every tests/test_*.cpp is one test, so a testing stage lists at least that many.
file(GLOB unit_tests ${SOURCE_DIR}/tests/test_*.cpp)
list(LENGTH unit_tests min_tests)

# 1. demo configures build/ without tests. Negative control: ctest finds nothing there,
#    and with --no-tests=error that is a failure, not a pass.
configure_stage(demo ${WORK_DIR}/build)
count_tests(${WORK_DIR}/build n)
if(NOT n EQUAL 0)
  message(FATAL_ERROR "the demo stage's build lists ${n} tests; expected none (it builds the demo only)")
endif()
execute_process(COMMAND ${CMAKE_CTEST_COMMAND} --test-dir ${WORK_DIR}/build --no-tests=error
                RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
if(rc EQUAL 0)
  message(FATAL_ERROR "ctest --no-tests=error passed on a build without tests")
endif()

# 2. test, in the same build/ after the demo, then the sanitizer stage in build-asan/ and
#    the portable stage in build-v3/.
foreach(stage_dir test:build asan:build-asan portable:build-v3)
  string(REPLACE ":" ";" pair ${stage_dir})
  list(GET pair 0 stage)
  list(GET pair 1 dir)
  configure_stage(${stage} ${WORK_DIR}/${dir})
  count_tests(${WORK_DIR}/${dir} n)
  if(n LESS min_tests)
    message(FATAL_ERROR "after `bootstrap.sh demo`, the ${stage} stage's build (${dir}) lists ${n} tests; "
                        "expected at least ${min_tests} (one per tests/test_*.cpp)")
  endif()
  message(STATUS "${stage} stage (${dir}): ${n} tests")
endforeach()

# 3. Every ctest call of the script fails on an empty test list.
file(STRINGS ${script} ctest_lines REGEX "^[^#]*ctest ")
if(NOT ctest_lines)
  message(FATAL_ERROR "${script}: no ctest call found")
endif()
foreach(line IN LISTS ctest_lines)
  if(NOT line MATCHES "--no-tests=error")
    message(FATAL_ERROR "${script}: a ctest call without --no-tests=error passes when it finds no tests: ${line}")
  endif()
endforeach()
