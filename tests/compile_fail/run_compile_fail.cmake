# Compiles one source twice with -fsyntax-only: as is it must FAIL, and the compiler's
# diagnostic must contain every string of EXPECT (a '|'-separated list: the concept and
# the member that is missing); with -DSPECDEC_COMPILE_FAIL_FIXED (the must-compile twin,
# which adds exactly the missing member) it must compile.
#
#   cmake -DCOMPILER=g++ -DSOURCE=x.cpp -DINCLUDES="a|b" -DEXPECT="has_truncate|truncate"
#         -P run_compile_fail.cmake
foreach(var COMPILER SOURCE INCLUDES EXPECT)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_compile_fail.cmake: -D${var}=... is required")
  endif()
endforeach()
string(REPLACE "|" ";" include_list "${INCLUDES}")
set(flags -std=c++20 -fsyntax-only)
foreach(dir IN LISTS include_list)
  # The compiler's own system directory must not be re-added (it breaks #include_next).
  if(dir AND NOT dir STREQUAL "/usr/include" AND NOT dir STREQUAL "/usr/local/include")
    list(APPEND flags "-I${dir}")
  endif()
endforeach()

execute_process(COMMAND ${COMPILER} ${flags} ${SOURCE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but must not: the concept check let a broken type through")
endif()
string(REPLACE "|" ";" expect_list "${EXPECT}")
foreach(text IN LISTS expect_list)
  string(FIND "${err}${out}" "${text}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "${SOURCE} failed to compile as it should, but the diagnostic does not "
                        "mention '${text}':\n${err}")
  endif()
endforeach()

execute_process(COMMAND ${COMPILER} ${flags} -DSPECDEC_COMPILE_FAIL_FIXED ${SOURCE}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "the must-compile twin of ${SOURCE} (-DSPECDEC_COMPILE_FAIL_FIXED) does not "
                      "compile:\n${err}")
endif()
message(STATUS "${SOURCE}: rejected naming '${EXPECT}'; the fixed twin compiles")
