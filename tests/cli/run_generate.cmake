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
run_fails("--method: 'beam' is not a choice; expected one of ar, sd, bild" --method beam)

# Numbers: negative ones are numbers out of range, absurd thread counts are refused before
# anything is reserved, and every error names its option.
run_fails("--threads: '-1' is out of range; expected a whole number in [0, 4095]" --threads -1)
run_fails("--threads: '18446744073709551615' is out of range" --threads 18446744073709551615)
run_fails("--threads: '1e12' is not a whole number" --threads 1e12)
run_fails("--temperature: '-1' is out of range; expected a finite number >= 0" --temperature -1)
run_fails("--top-k: '-2' is out of range" --top-k -2)
# 1 / 1e-39 overflows float: every logit / T was NaN and sampling failed naming nothing.
run_fails("--temperature: sampling_params.temperature = 1e-39 is so small that 1 / temperature overflows"
          --temperature 1e-39)
run_fails("--gamma: '0' is out of range for --method sd" --draft ${MODELS}/kjv-little.bin --method sd --gamma 0)
cli_run_ok(help ${GENERATE} --help)
string(FIND "${help}" "bild: cap on consecutive draft steps, 0 = no cap" at)
if(at EQUAL -1)
  message(FATAL_ERROR "--help does not say what --gamma 0 means for bild:\n${help}")
endif()

# Files: special files are refused before reading (/dev/zero grew without bound).
run_fails("'/dev/zero': is not a regular file" --tokenizer /dev/zero)

# An unwritable --stats-json fails before generating: nothing on stdout.
execute_process(COMMAND ${GENERATE} ${common} --stats-json ${WORK_DIR}/no/such/dir/stats.json
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
string(FIND "${err}" "--stats-json: cannot write '${WORK_DIR}/no/such/dir/stats.json'" at)
if(rc EQUAL 0 OR at EQUAL -1 OR NOT out STREQUAL "")
  message(FATAL_ERROR "unwritable --stats-json: expected an early error naming the option and the path and no "
                      "output; got exit ${rc}, stdout '${out}', stderr:\n${err}")
endif()

# A checkpoint with a NaN weight is refused at load, naming it and the tensor (it used to
# decode to <unk><unk>... with exit code 0).
file(MAKE_DIRECTORY ${WORK_DIR})
execute_process(COMMAND ${MAKE_CHECKPOINT} ${MODELS}/kjv-little.bin ${WORK_DIR}/nan.bin nan wq RESULT_VARIABLE rc)
execute_process(COMMAND ${MAKE_CHECKPOINT} ${MODELS}/kjv-little.bin ${WORK_DIR}/short.bin seq_len 64
                RESULT_VARIABLE rc2)
if(NOT rc EQUAL 0 OR NOT rc2 EQUAL 0)
  message(FATAL_ERROR "make_checkpoint failed (${rc}, ${rc2})")
endif()
run_fails("checkpoint '${WORK_DIR}/nan.bin': tensor wq of layer 0 (row 0, column 0) holds nan"
          --draft ${WORK_DIR}/nan.bin --method sd)

# A draft with a shorter context than the target: refused when the request needs more
# than the draft holds (the output used to stop short, silently); fine, and exact, below.
run_fails("--draft: '${WORK_DIR}/short.bin' holds a context of 64 tokens, the target 256"
          --draft ${WORK_DIR}/short.bin --method sd --max-new-tokens 100)
set(common --model ${MODELS}/kjv-big.bin --tokenizer ${MODELS}/kjv2k-tokenizer.bin --prompt "And the LORD spake"
           --max-new-tokens 40 --threads 1)
run_ok(ar40)
run_ok(sd40 --draft ${WORK_DIR}/short.bin --method sd --gamma 4)
if(NOT sd40 STREQUAL ar40)
  message(FATAL_ERROR "greedy sd with a 64-token draft differs from the target's output:\nar: ${ar40}\nsd: ${sd40}")
endif()

# A thread that cannot start (here: the address space runs out) is reported with the
# number that did start, instead of hanging in pthread_cond_destroy.
find_program(SH sh)
if(SH)
  execute_process(COMMAND ${SH} -c "ulimit -s 8192 && ulimit -v 4000000 && exec \"$0\" \"$@\"" ${GENERATE} ${common}
                          --model ${MODELS}/kjv-little.bin --threads 1000
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
  string(REGEX MATCH "could start only [0-9]+ of 1000 threads" said "${err}")
  if(rc EQUAL 0 OR NOT said)
    message(FATAL_ERROR "--threads 1000 under a 4 GB address space: expected 'could start only N of 1000 threads', "
                        "got exit ${rc}:\n${err}")
  endif()
endif()
