# cmake -DBASH=bash -DSOURCE_DIR=... -DBIN=dir/of/the/tools -DWORK_DIR=... -P run_figures.cmake
# scripts/figures.sh as a reader runs it, in its seconds-long --smoke mode (tiny settings:
# its numbers mean nothing): it prints this host, then for every headline figure this
# host's value and the value of every host committed in docs/bench/figures.tsv; bad use
# fails with a message. Its markdown tables must match figures.tsv (--check-tables).

cmake_minimum_required(VERSION 3.21)  # list() keeps empty fields (the notes may be empty)
include(${CMAKE_CURRENT_LIST_DIR}/cli_checks.cmake)
set(script ${SOURCE_DIR}/scripts/figures.sh)
file(REMOVE_RECURSE ${WORK_DIR})

cli_run_ok(out ${BASH} ${script} --smoke --bin ${BIN} --out ${WORK_DIR})
if(NOT out MATCHES "\nthis host: [^\n]+ \\[[^\n]*\\]\n")
  message(FATAL_ERROR "figures.sh printed no 'this host: NAME [FLAGS]' line:\n${out}")
endif()
# One "this host" value per figure, each a ratio.
string(REGEX MATCHALL "\n  [0-9]+\\.[0-9][0-9]x +this host\n" mine "${out}")
list(LENGTH mine n)
if(NOT n EQUAL 4)
  message(FATAL_ERROR "figures.sh printed ${n} 'this host' values; expected 4 (one per figure):\n${out}")
endif()
# Every measured committed row appears, as "  VALUE[x]  HOST".
# Read whole and split by hand: file(STRINGS) would also split a row at a ';' in its notes.
file(READ ${SOURCE_DIR}/docs/bench/figures.tsv tsv)
string(REPLACE ";" "," tsv "${tsv}")
string(REGEX REPLACE "\n$" "" tsv "${tsv}")
string(REPLACE "\n" ";" rows "${tsv}")
list(POP_FRONT rows)
set(checked 0)
foreach(row IN LISTS rows)
  string(REPLACE "\t" ";" f "${row}")
  list(GET f 1 host)
  list(GET f 3 value)
  # This host's own rows are not repeated (a literal search: host names hold regex
  # characters, "Intel(R) Xeon(R) Processor").
  string(FIND "${out}" "this host: ${host} [" at_this_host)
  if(value STREQUAL "-" OR NOT at_this_host EQUAL -1)
    continue()
  endif()
  string(FIND "${out}" "  ${value}" at_value)
  string(FIND "${out}" "${host}" at_host)
  if(at_value EQUAL -1 OR at_host EQUAL -1)
    message(FATAL_ERROR "figures.sh did not print the committed '${value}' of ${host}:\n${out}")
  endif()
  math(EXPR checked "${checked} + 1")
endforeach()
if(checked EQUAL 0)
  message(FATAL_ERROR "docs/bench/figures.tsv has no measured row to compare with")
endif()

cli_run_fails("--smoke needs --bin DIR" ${BASH} ${script} --smoke)
cli_run_fails("unknown option '--bogus'" ${BASH} ${script} --bogus)
cli_run_fails("no ${WORK_DIR}/none/bench_forward" ${BASH} ${script} --smoke --bin ${WORK_DIR}/none)
cli_run_ok(out ${BASH} ${script} --check-tables)
