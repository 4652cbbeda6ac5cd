# ctest -> cmake -P: install the build tree into a temporary prefix, configure examples/cpp against
# it with find_package(flashsigmoid), build it and run it.
# Inputs: BUILD_DIR, EXAMPLE_DIR, WORK_DIR, CONFIG, GENERATOR, MAKE_PROGRAM, CXX_COMPILER, [CUDA_ROOT].
cmake_minimum_required(VERSION 3.24)

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "${what}:\n${out}${err}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (exit ${rc})")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
set(build "${WORK_DIR}/build")

set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
run_step("install" "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${prefix}" ${config_args})

set(configure_args -S "${EXAMPLE_DIR}" -B "${build}" -G "${GENERATOR}" "-DCMAKE_PREFIX_PATH=${prefix}"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CONFIG)
  list(APPEND configure_args "-DCMAKE_BUILD_TYPE=${CONFIG}")
endif()
if(CUDA_ROOT)
  list(APPEND configure_args "-DCUDAToolkit_ROOT=${CUDA_ROOT}")
endif()
run_step("configure examples/cpp" "${CMAKE_COMMAND}" ${configure_args})
run_step("build examples/cpp" "${CMAKE_COMMAND}" --build "${build}" ${config_args})

# The example must come from the install prefix, not the build tree.
file(GLOB_RECURSE found_config "${prefix}/*/flashsigmoidConfig.cmake")
if(NOT found_config)
  message(FATAL_ERROR "flashsigmoidConfig.cmake was not installed under ${prefix}")
endif()
file(READ "${build}/CMakeCache.txt" cache)
string(REGEX MATCH "flashsigmoid_DIR:PATH=([^\n]*)" _ "${cache}")
set(found_dir "${CMAKE_MATCH_1}")
string(FIND "${found_dir}" "${prefix}/" at)
if(NOT at EQUAL 0)
  message(FATAL_ERROR "examples/cpp found flashsigmoid at '${found_dir}', not in ${prefix}")
endif()

find_program(example NAMES example PATHS "${build}" "${build}/${CONFIG}" NO_DEFAULT_PATH)
if(NOT example)
  message(FATAL_ERROR "the example binary was not built")
endif()
run_step("run example" "${example}")
if(NOT step_output MATCHES "out\\[0, 0, 0, 0\\] = ")
  message(FATAL_ERROR "unexpected example output")
endif()
