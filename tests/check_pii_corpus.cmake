# Regenerates the labelled PII corpus with scripts/gen_pii_corpus.py and compares it with
# the committed tests/data/pii_corpus.tsv byte for byte.
execute_process(COMMAND ${PYTHON} ${SOURCE_DIR}/scripts/gen_pii_corpus.py --stdout
                OUTPUT_FILE ${OUT} RESULT_VARIABLE rc ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "scripts/gen_pii_corpus.py failed (${rc}): ${err}")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${OUT} ${SOURCE_DIR}/tests/data/pii_corpus.tsv
                RESULT_VARIABLE same)
if(NOT same EQUAL 0)
  message(FATAL_ERROR "tests/data/pii_corpus.tsv differs from what scripts/gen_pii_corpus.py writes "
                      "(${OUT}); regenerate it with `python3 scripts/gen_pii_corpus.py` and commit both")
endif()
