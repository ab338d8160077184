# cmake -DGENERATE=path/to/specdec-generate -DMODELS=path/to/models -DWORK_DIR=dir -P run_generate_modes.cmake
# specdec-generate's modes beyond greedy decoding, by their observable behaviour only
# (exit codes, stdout, the --stats-json file), not by the wording of its messages:
# sampled decoding is reproducible for a seed, --adaptive and BiLD at its exact limit
# print the target's greedy text, and --stats-json writes valid JSON with its keys.
set(common --model ${MODELS}/kjv-big.bin --tokenizer ${MODELS}/kjv2k-tokenizer.bin
           --prompt "And God said" --max-new-tokens 32 --threads 1)
set(draft --draft ${MODELS}/kjv-little.bin --draft-format w8a8)

include(${CMAKE_CURRENT_LIST_DIR}/cli_checks.cmake)

function(run_ok out_var)
  cli_run_ok(out ${GENERATE} ${common} ${ARGN})
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# Exits non-zero (whatever it says).
function(run_fails)
  execute_process(COMMAND ${GENERATE} ${common} ${ARGN} RESULT_VARIABLE rc OUTPUT_QUIET ERROR_QUIET)
  if(rc EQUAL 0)
    message(FATAL_ERROR "specdec-generate ${ARGN} succeeded; expected it to fail")
  endif()
endfunction()

function(expect_equal a b what)
  if(NOT "${a}" STREQUAL "${b}")
    message(FATAL_ERROR "${what}:\n'${a}'\nvs\n'${b}'")
  endif()
endfunction()

run_ok(greedy)
string(LENGTH "${greedy}" n)
if(n LESS 20)
  message(FATAL_ERROR "greedy output is suspiciously short: '${greedy}'")
endif()

# Sampled decoding: the same seed prints the same text, another seed other text (32
# tokens at temperature 0.9 coincide with a negligible probability), and neither is the
# greedy text.
foreach(method ar sd)
  set(extra)
  if(method STREQUAL "sd")
    set(extra ${draft} --gamma 5)
  endif()
  set(sampled --method ${method} ${extra} --temperature 0.9 --top-p 0.95 --top-k 200)
  run_ok(a ${sampled} --seed 7)
  run_ok(b ${sampled} --seed 7)
  run_ok(c ${sampled} --seed 8)
  expect_equal("${a}" "${b}" "${method}: sampled output differs between two runs with seed 7")
  if(a STREQUAL c)
    message(FATAL_ERROR "${method}: seeds 7 and 8 printed the same sampled text: '${a}'")
  endif()
  if(a STREQUAL greedy)
    message(FATAL_ERROR "${method}: the sampled text is the greedy text: '${a}'")
  endif()
endforeach()

# --adaptive (draft length chosen online) is exact: the greedy text is the target's.
run_ok(adaptive --method sd ${draft} --adaptive)
expect_equal("${adaptive}" "${greedy}" "--adaptive greedy output differs from the target's")

# BiLD: it runs; at its exact limit (the draft falls back unless certain, and every
# drafted token the target is not certain of is rolled back) it prints the target's
# greedy text.
run_ok(bild --method bild ${draft} --fallback-threshold 0.3 --rollback-threshold 3)
string(LENGTH "${bild}" n)
if(n LESS 20)
  message(FATAL_ERROR "bild output is suspiciously short: '${bild}'")
endif()
run_ok(bild_exact --method bild ${draft} --fallback-threshold 1 --rollback-threshold 0)
expect_equal("${bild_exact}" "${greedy}" "BiLD at its exact limit differs from the target's greedy output")

# --stats-json: valid JSON with the documented keys, agreeing with what was printed.
set(json_file ${WORK_DIR}/specdec_generate_stats.json)
file(REMOVE ${json_file})
run_ok(with_stats --method sd ${draft} --gamma 4 --stats-json ${json_file})
expect_equal("${with_stats}" "${greedy}" "greedy sd with --stats-json differs from the target's greedy output")
file(READ ${json_file} json)
foreach(key model draft method tiles draft_tiles prompt_tokens generated_tokens tokens_per_second stop_reason telemetry)
  string(JSON value ERROR_VARIABLE err GET "${json}" ${key})
  if(err)
    message(FATAL_ERROR "--stats-json: no '${key}' in ${json} (${err})")
  endif()
endforeach()
foreach(key method tokens_emitted draft_tokens_proposed draft_tokens_accepted acceptance_rate per_position_proposed
            per_position_accepted rollbacks draft_calls target_calls total_seconds)
  string(JSON value ERROR_VARIABLE err GET "${json}" telemetry ${key})
  if(err)
    message(FATAL_ERROR "--stats-json: no 'telemetry.${key}' in ${json} (${err})")
  endif()
endforeach()
string(JSON method GET "${json}" method)
string(JSON generated GET "${json}" generated_tokens)
string(JSON emitted GET "${json}" telemetry tokens_emitted)
string(JSON proposed GET "${json}" telemetry draft_tokens_proposed)
expect_equal("${method}" "sd" "--stats-json method")
# tiles: the configuration the models resolved (timed or SPECDEC_TILES), never "auto".
string(JSON tiles GET "${json}" tiles)
string(JSON draft_tiles GET "${json}" draft_tiles)
if(NOT tiles MATCHES "^(4x6|2x8|2x12|1x6|2x8l2)$" OR NOT draft_tiles MATCHES "^(4x6|2x8|2x12|1x6|2x8l2)$")
  message(FATAL_ERROR "--stats-json: tiles '${tiles}', draft_tiles '${draft_tiles}'; expected a resolved configuration")
endif()
# --tiles chooses one; the output is the same whatever it is.
file(REMOVE ${json_file})
run_ok(with_tiles --method sd ${draft} --gamma 4 --tiles 1x6 --stats-json ${json_file})
expect_equal("${with_tiles}" "${greedy}" "greedy sd with --tiles 1x6 differs from the target's greedy output")
file(READ ${json_file} json)
string(JSON tiles GET "${json}" tiles)
expect_equal("${tiles}" "1x6" "--stats-json tiles after --tiles 1x6")
expect_equal("${generated}" "${emitted}" "--stats-json generated_tokens vs telemetry.tokens_emitted")
if(generated LESS 1 OR generated GREATER 32 OR proposed LESS 1)
  message(FATAL_ERROR "--stats-json: implausible counts in ${json}")
endif()

# Failures exit non-zero: an unknown method, a negative temperature, an unwritable
# --stats-json path.
run_fails(--method xyz ${draft})
run_fails(--tiles 3x3)
run_fails(--temperature -1)
run_fails(--stats-json ${WORK_DIR}/no-such-directory/stats.json)
