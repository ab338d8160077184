# ctest driver: every public header is reachable from its umbrella. specdec/specdec.hpp
# must include every header under include/specdec/ except the umbrellas, detail/ (internal),
# testing/ (test helpers, included on their own), hybrid/tls.hpp (needs OpenSSL, included
# on its own by the users of TLS) and backend/; specdec/cpu.hpp must include
# specdec.hpp and every header of backend/cpu/ except detail/. Input: INCLUDE_DIR.
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
list(FILTER generic EXCLUDE REGEX "^specdec/(specdec|cpu)\\.hpp$|/detail/|^specdec/testing/|^specdec/backend/|^specdec/hybrid/tls\\.hpp$")
file(GLOB_RECURSE backend RELATIVE ${INCLUDE_DIR} ${INCLUDE_DIR}/specdec/backend/cpu/*.hpp)
list(FILTER backend EXCLUDE REGEX "/detail/")
check_umbrella(specdec/specdec.hpp ${generic})
check_umbrella(specdec/cpu.hpp specdec/specdec.hpp ${backend})
