# cmake -DCLI=<flashsigmoid> -DARGS=<a|b|c> -DEXPECT=<text> [-DSTATUS=<n>] -P expect_usage_error.cmake
# Passes when the tool exits with status STATUS (default 2, bad usage) and its stderr has "error:"
# and EXPECT.
if(NOT DEFINED STATUS)
  set(STATUS 2)
endif()
string(REPLACE "|" ";" argv "${ARGS}")
execute_process(COMMAND ${CLI} ${argv} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL STATUS)
  message(FATAL_ERROR "expected exit status ${STATUS} for '${argv}', got '${rc}'\nstdout: ${out}\nstderr: ${err}")
endif()
string(FIND "${err}" "${EXPECT}" at)
if(NOT err MATCHES "error:" OR at EQUAL -1)
  message(FATAL_ERROR "expected an error naming '${EXPECT}' on stderr for '${argv}', got: ${err}")
endif()
message(STATUS "'${argv}' -> exit ${STATUS}: ${err}")
