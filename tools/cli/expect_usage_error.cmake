# cmake -DCLI=<flashsigmoid> -DARGS=<a|b|c> -DEXPECT=<text> -P expect_usage_error.cmake
# Passes when the tool exits with status 2 and its stderr has "error:" and EXPECT.
string(REPLACE "|" ";" argv "${ARGS}")
execute_process(COMMAND ${CLI} ${argv} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 2)
  message(FATAL_ERROR "expected exit status 2 for '${argv}', got '${rc}'\nstdout: ${out}\nstderr: ${err}")
endif()
string(FIND "${err}" "${EXPECT}" at)
if(NOT err MATCHES "error:" OR at EQUAL -1)
  message(FATAL_ERROR "expected an error naming '${EXPECT}' on stderr for '${argv}', got: ${err}")
endif()
message(STATUS "'${argv}' -> exit 2: ${err}")
