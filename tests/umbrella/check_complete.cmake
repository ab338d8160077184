# ctest driver: every public header is reachable from its umbrella. Every header under
# include/specdec/ except the umbrellas, detail/ (internal), testing/ (test helpers,
# included on their own) and backend/ is included by exactly one of specdec/specdec.hpp
# (the generic library) and specdec/net.hpp (what needs sockets, HTTP or JSON), and net.hpp
# includes specdec.hpp; specdec/cpu.hpp must include specdec.hpp and every header of
# backend/cpu/ except detail/. Input: INCLUDE_DIR.
function(check_umbrella umbrella)
  file(READ ${INCLUDE_DIR}/${umbrella} text)
  foreach(header IN LISTS ARGN)
    if(NOT text MATCHES "#include [\"<]${header}[\">]")
      list(APPEND missing ${header})
    endif()
  endforeach()
  if(missing)
    list(JOIN missing ", " missing)
    message(FATAL_ERROR "${umbrella} does not include: ${missing}")
  endif()
  list(LENGTH ARGN n)
  message(STATUS "${umbrella}: all ${n} headers included")
endfunction()

file(GLOB_RECURSE generic RELATIVE ${INCLUDE_DIR} ${INCLUDE_DIR}/specdec/*.hpp)
list(FILTER generic EXCLUDE REGEX "^specdec/(specdec|cpu|net)\\.hpp$|/detail/|^specdec/testing/|^specdec/backend/")
file(GLOB_RECURSE backend RELATIVE ${INCLUDE_DIR} ${INCLUDE_DIR}/specdec/backend/cpu/*.hpp)
list(FILTER backend EXCLUDE REGEX "/detail/")
# Split the generic headers by the umbrella that names them; a header named by both (or by
# neither) is an error.
file(READ ${INCLUDE_DIR}/specdec/specdec.hpp core_text)
file(READ ${INCLUDE_DIR}/specdec/net.hpp net_text)
foreach(header IN LISTS generic)
  set(in_core OFF)
  set(in_net OFF)
  if(core_text MATCHES "#include [\"<]${header}[\">]")
    set(in_core ON)
  endif()
  if(net_text MATCHES "#include [\"<]${header}[\">]")
    set(in_net ON)
  endif()
  if(in_core AND in_net)
    message(FATAL_ERROR "${header} is included by both specdec/specdec.hpp and specdec/net.hpp; expected exactly one")
  elseif(in_net)
    list(APPEND net ${header})
  else()
    list(APPEND core ${header})
  endif()
endforeach()
check_umbrella(specdec/specdec.hpp ${core})
check_umbrella(specdec/net.hpp specdec/specdec.hpp ${net})
check_umbrella(specdec/cpu.hpp specdec/specdec.hpp ${backend})
