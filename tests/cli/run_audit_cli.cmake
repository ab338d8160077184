# cmake -DAUDIT=path/to/specdec-audit -DSAMPLE=tests/data/uplink_audit_sample.jsonl
#       -DWORK_DIR=dir -P run_audit_cli.cmake
# specdec-audit as a user runs it: its JSON totals equal the sums of the log's records
# (summed here independently with string(JSON)), both for one log and for the same log
# given twice; a torn record fails naming file and line; bad options fail clearly.

include(${CMAKE_CURRENT_LIST_DIR}/cli_checks.cmake)

file(STRINGS ${SAMPLE} records)
set(messages 0)
set(bytes 0)
set(tokens 0)
set(cloud_bytes 0)
foreach(r IN LISTS records)
  string(JSON b GET "${r}" bytes)
  string(JSON t GET "${r}" tokens)
  string(JSON route GET "${r}" route)
  math(EXPR messages "${messages} + 1")
  math(EXPR bytes "${bytes} + ${b}")
  math(EXPR tokens "${tokens} + ${t}")
  if(route STREQUAL "cloud")
    math(EXPR cloud_bytes "${cloud_bytes} + ${b}")
  endif()
endforeach()
if(messages LESS 2)
  message(FATAL_ERROR "${SAMPLE}: expected a few records")
endif()

function(expect_json out key expected)
  string(JSON got GET "${out}" ${key})
  if(NOT got EQUAL ${expected})
    message(FATAL_ERROR "specdec-audit: ${key} is ${got}, the log's records sum to ${expected}")
  endif()
endfunction()

cli_run_ok(out ${AUDIT} --json ${SAMPLE})
expect_json("${out}" "total;messages" ${messages})
expect_json("${out}" "total;bytes" ${bytes})
expect_json("${out}" "total;tokens" ${tokens})
expect_json("${out}" "by_route;cloud;bytes" ${cloud_bytes})

math(EXPR twice "2 * ${bytes}")
cli_run_ok(out ${AUDIT} --json ${SAMPLE} ${SAMPLE})
expect_json("${out}" "total;bytes" ${twice})

cli_run_ok(out ${AUDIT} ${SAMPLE})
string(FIND "${out}" "${messages} messages, ${bytes} bytes" at)
if(at EQUAL -1)
  message(FATAL_ERROR "specdec-audit: the text summary lacks '${messages} messages, ${bytes} bytes':\n${out}")
endif()

list(GET records 0 first)
string(SUBSTRING "${first}" 0 40 torn)
file(WRITE ${WORK_DIR}/torn.jsonl "${first}\n${torn}\n")
cli_run_fails("torn.jsonl:2: not a JSON value" ${AUDIT} ${WORK_DIR}/torn.jsonl)
cli_run_fails("unknown option '--bogus'" ${AUDIT} --bogus ${SAMPLE})
cli_run_fails("no log given" ${AUDIT})
cli_run_fails("cannot open '${WORK_DIR}/missing.jsonl'" ${AUDIT} ${WORK_DIR}/missing.jsonl)
