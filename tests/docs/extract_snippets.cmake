# specdec_extract_snippets(<markdown file> <output dir> <out var>)
#
# Writes every ```cpp block of a markdown file to <output dir>/<file stem>_<n>.cpp and
# appends the paths to <out var>. The convention (see docs/tutorial.md, "Snippets"):
#
# - A block is a complete translation unit (all blocks are linked into one program, so
#   they must not define `main` or clash in names) unless the nearest line before its opening
#   fence is `<!-- snippet: fragment -->`. A fragment's `#include` lines are hoisted to
#   the top of the file and the rest becomes the body of a function, after a prelude that
#   includes every public specdec header (not testing/contracts.hpp) and <iostream>,
#   <span>, <string>, <vector>; so a fragment may declare variables and call functions,
#   but not define types or templates.
# - `<!-- snippet: skip -->` leaves a block out (for output samples, never for code).
#
# Files are rewritten only when their content changes, so unchanged snippets are not
# recompiled. Call it from the directory that defines the target: it marks the complete
# translation units SKIP_UNITY_BUILD_INCLUSION, a directory-scoped source property.
function(specdec_extract_snippets md out_dir out_var)
  file(READ "${md}" text)
  get_filename_component(stem "${md}" NAME_WE)
  string(MAKE_C_IDENTIFIER "${stem}" stem)
  set(produced)
  set(n 0)
  set(fence "```cpp\n")
  string(LENGTH "${fence}" fence_len)
  while(TRUE)
    string(FIND "${text}" "${fence}" at)
    if(at EQUAL -1)
      break()
    endif()
    string(SUBSTRING "${text}" 0 ${at} before)
    math(EXPR body_start "${at} + ${fence_len}")
    string(SUBSTRING "${text}" ${body_start} -1 text)
    string(FIND "${text}" "\n```" end)
    if(end EQUAL -1)
      message(FATAL_ERROR "${md}: a ```cpp block is never closed")
    endif()
    math(EXPR end_incl "${end} + 1")
    string(SUBSTRING "${text}" 0 ${end_incl} code)
    math(EXPR after "${end} + 4")
    string(SUBSTRING "${text}" ${after} -1 text)

    set(kind file)
    if(before MATCHES "<!-- snippet: ([a-z]+) -->[ \t\r\n]*$")
      set(kind "${CMAKE_MATCH_1}")
    endif()
    math(EXPR n "${n} + 1")
    if(kind STREQUAL "skip")
      continue()
    endif()
    set(header "// Extracted from ${md}, ```cpp block ${n} (${kind}). Do not edit: edit the markdown.\n")
    if(kind STREQUAL "fragment")
      string(REGEX MATCHALL "#include[^\n]*" includes "${code}")
      string(REGEX REPLACE "#include[^\n]*\n" "" body "${code}")
      string(JOIN "\n" includes ${includes})
      set(content "${header}${includes}
#include <iostream>
#include <span>
#include <string>
#include <vector>

#include <specdec/backend/cpu/tokenizer.hpp>
#include <specdec/backend/cpu/transformer.hpp>
#include <specdec/decoder.hpp>
#include <specdec/distance.hpp>
#include <specdec/fallback.hpp>
#include <specdec/hybrid/arbiter.hpp>
#include <specdec/model.hpp>
#include <specdec/rollback.hpp>
#include <specdec/sampling.hpp>
#include <specdec/telemetry.hpp>
#include <specdec/testing/archetypes.hpp>
#include <specdec/token.hpp>

[[maybe_unused]] static void snippet_${stem}_${n}() {
${body}}
")
    elseif(kind STREQUAL "file")
      set(content "${header}${code}")
    else()
      message(FATAL_ERROR "${md}: ```cpp block ${n}: unknown snippet kind '${kind}' (expected fragment or skip)")
    endif()
    set(path "${out_dir}/${stem}_${n}.cpp")
    set(old "")
    if(EXISTS "${path}")
      file(READ "${path}" old)
    endif()
    if(NOT old STREQUAL content)
      file(WRITE "${path}" "${content}")
    endif()
    if(kind STREQUAL "file")
      # A complete translation unit is compiled on its own, so a missing #include in it
      # is not hidden by another block's (fragments may share a unity batch: their
      # prelude includes every public header anyway).
      set_source_files_properties("${path}" PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
    endif()
    list(APPEND produced "${path}")
  endwhile()
  set(${out_var} ${${out_var}} ${produced} PARENT_SCOPE)
endfunction()
