# cmake -DGENERATE=path/to/specdec-generate -DMODELS=path/to/models -P run_generate.cmake
set(common --model ${MODELS}/kjv-big.bin --tokenizer ${MODELS}/kjv2k-tokenizer.bin
           --prompt "And the LORD spake unto Moses" --max-new-tokens 48 --threads 1)

include(${CMAKE_CURRENT_LIST_DIR}/cli_checks.cmake)

function(run_ok out_var)
  cli_run_ok(out ${GENERATE} ${common} ${ARGN})
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# Fails, and says `expect` on stderr.
function(run_fails expect)
  cli_run_fails("${expect}" ${GENERATE} ${common} ${ARGN})
endfunction()

run_ok(ar)
string(LENGTH "${ar}" n)
if(n LESS 40)
  message(FATAL_ERROR "autoregressive output is suspiciously short: '${ar}'")
endif()
foreach(draft_format fp32 bf16 q8_0 w8a8)
  run_ok(sd --draft ${MODELS}/kjv-little.bin --method sd --gamma 5 --draft-format ${draft_format})
  if(NOT sd STREQUAL ar)
    message(FATAL_ERROR "greedy sd with a ${draft_format} draft differs from the target's greedy output:\n"
                        "ar: ${ar}\nsd: ${sd}")
  endif()
endforeach()

# A 16-bit draft KV cache changes the draft's proposals at most, never the output.
run_ok(sd --draft ${MODELS}/kjv-little.bin --method sd --gamma 5 --draft-format bf16 --draft-kv-format fp16)
if(NOT sd STREQUAL ar)
  message(FATAL_ERROR "greedy sd with an fp16 draft KV cache differs from the target's greedy output:\n"
                      "ar: ${ar}\nsd: ${sd}")
endif()
# The target with an fp16 KV cache is another (slightly rounded) model; speculative
# decoding must reproduce that model's own greedy output.
run_ok(ar16 --kv-format fp16)
run_ok(sd16 --kv-format fp16 --draft ${MODELS}/kjv-little.bin --method sd --gamma 4)
if(NOT sd16 STREQUAL ar16)
  message(FATAL_ERROR "greedy sd differs from the fp16-KV target's greedy output:\nar: ${ar16}\nsd: ${sd16}")
endif()

run_fails("--format" --format q4)
run_fails("--kv-format" --kv-format q8_0)
run_fails("--draft-format" --draft kjv-little.bin --method sd --draft-format int3)
run_fails("--threads" --threads two)
run_fails("--draft" --method sd)
