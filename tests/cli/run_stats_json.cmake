# cmake -DGENERATE=path/to/specdec-generate -DMODELS=path/to/models -DWORK_DIR=dir -P run_stats_json.cmake
# --stats-json writes JSON that parses when the model's path holds a quote and a backslash.
include(${CMAKE_CURRENT_LIST_DIR}/cli_checks.cmake)
file(REMOVE_RECURSE ${WORK_DIR})
set(dir "${WORK_DIR}/a \"quoted\" \\ dir")
# mkdir and ln take the name verbatim (CMake's file() reads a backslash as a separator).
execute_process(COMMAND mkdir -p "${dir}" COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ln -s ${MODELS}/stories260K.bin "${dir}/model.bin" COMMAND_ERROR_IS_FATAL ANY)
cli_run_ok(out ${GENERATE} --model "${dir}/model.bin" --tokenizer ${MODELS}/tok512.bin --prompt "Once"
           --max-new-tokens 4 --threads 1 --stats-json ${WORK_DIR}/stats.json)
file(READ ${WORK_DIR}/stats.json json)
string(JSON model ERROR_VARIABLE bad GET "${json}" model)
if(bad OR NOT model STREQUAL "${dir}/model.bin")
  message(FATAL_ERROR "--stats-json is not valid JSON or lost the model path (${bad}):\n${json}")
endif()
