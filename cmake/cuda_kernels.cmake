# CUDA backend sources. Included from the top-level CMakeLists when CUDA is on.
#
# One generated translation unit per (head dim, dtype) of the portable forward and one of the
# portable backward, so the kernels compile in parallel; FLASHSIGMOID_HEAD_DIMS picks which head
# dims are instantiated.
set(_fs_valid_head_dims 32 64 96 128 256)
set(_fs_gen_dir ${PROJECT_BINARY_DIR}/generated/cuda)
set(_fs_cuda_flags --expt-relaxed-constexpr --use_fast_math -lineinfo)

# Generates ${_fs_gen_dir}/<name>_hdim<hd>_<dt>.cu from src/cuda/<template>.cu.in (dt: bf16 or
# fp16) and returns its path in <out_var>.
function(fs_instantiate template name hd dt out_var)
  set(FS_HEAD_DIM ${hd})
  if(dt STREQUAL "bf16")
    set(FS_ELEMENT "cutlass::bfloat16_t")
  else()
    set(FS_ELEMENT "cutlass::half_t")
  endif()
  set(out ${_fs_gen_dir}/${name}_hdim${hd}_${dt}.cu)
  configure_file(${PROJECT_SOURCE_DIR}/src/cuda/${template}.cu.in ${out} @ONLY)
  set(${out_var} ${out} PARENT_SCOPE)
endfunction()
# The CUDA backward (portable kernels, and the Hopper backward where 90a is built) is dispatched by
# default (validated on the H200: bench/results/); OFF leaves its kernels out of the build (faster
# builds for forward-only tuning) and makes a CUDA backward call a clear error.
option(FLASHSIGMOID_CUDA_BACKWARD "Build and dispatch the CUDA backward kernels" ON)
set(_fs_dirs fwd)
if(FLASHSIGMOID_CUDA_BACKWARD)
  target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_CUDA_BACKWARD_ENABLED=1)
  list(APPEND _fs_dirs bwd)
  # Every backward's workspaces and finishing kernels (dQ conversion, d(bias) reduction), built once.
  target_sources(flashsigmoid PRIVATE ${PROJECT_SOURCE_DIR}/src/cuda/common/bwd_workspace.cu)
endif()
set(_fs_built "")
foreach(_fs_hd IN LISTS FLASHSIGMOID_HEAD_DIMS)
  if(NOT _fs_hd IN_LIST _fs_valid_head_dims)
    message(FATAL_ERROR "FLASHSIGMOID_HEAD_DIMS: ${_fs_hd} is not one of ${_fs_valid_head_dims}")
  endif()
  foreach(_fs_dt bf16 fp16)
    foreach(_fs_dir IN LISTS _fs_dirs)
      fs_instantiate(portable/${_fs_dir}_inst ${_fs_dir} ${_fs_hd} ${_fs_dt} _fs_src)
      target_sources(flashsigmoid PRIVATE ${_fs_src})
    endforeach()
  endforeach()
  target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_CUDA_HDIM_${_fs_hd}=1)
  list(APPEND _fs_built ${_fs_hd})
  # The KV-cache (decode / append) kernels, src/cuda/decode: head dims 64, 128, 256.
  if(_fs_hd EQUAL 64 OR _fs_hd EQUAL 128 OR _fs_hd EQUAL 256)
    foreach(_fs_dt bf16 fp16)
      fs_instantiate(decode/inst decode ${_fs_hd} ${_fs_dt} _fs_src)
      target_sources(flashsigmoid PRIVATE ${_fs_src})
    endforeach()
    target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_DECODE_HDIM_${_fs_hd}=1)
  endif()
endforeach()
list(JOIN _fs_built ", " _fs_built_str)
target_compile_definitions(flashsigmoid PRIVATE "FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS=\"${_fs_built_str}\"")

option(FLASHSIGMOID_SIGMOID_EXP "CUDA kernels: bf16 too computes the sigmoid as 1/(1+exp(-s)) (2 MUFU ops, as fp16 always does) instead of tanh.approx (1)" OFF)
if(FLASHSIGMOID_SIGMOID_EXP)
  target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_SIGMOID_EXP=1)
endif()

# The Hopper forward (src/cuda/hopper, wgmma + TMA + setmaxnreg: sm_90a instructions). Its units
# are compiled only when the architectures include 90a or 90, and then for 90a alone (an sm_90a
# cubin runs on every compute-capability-9.0 device), in an object library so that the other units
# keep the project's architecture list; CI's arch-80 build never compiles them. Head dims 64, 128 and 256
# (the Hopper backward, src/cuda/hopper/bwd_*.cuh: 64 and 128).
# FLASHSIGMOID_HOPPER: AUTO (default) dispatches sm_90 devices to it whenever 90a/90 is built;
# OFF keeps every device on the portable kernel; ON requires 90a/90 in the archs.
set(FLASHSIGMOID_HOPPER AUTO CACHE STRING "Dispatch the forward and backward on sm_90 devices to the Hopper kernels: AUTO, ON or OFF")
set_property(CACHE FLASHSIGMOID_HOPPER PROPERTY STRINGS AUTO ON OFF)
set(_fs_hopper_arch OFF)
foreach(_fs_arch IN LISTS CMAKE_CUDA_ARCHITECTURES)
  if(_fs_arch MATCHES "^90")
    set(_fs_hopper_arch ON)
  endif()
endforeach()
# The head dims the Hopper kernels have: the one list. The head dims built from it reach the C++ code
# as has_hopper_forward / has_hopper_backward in the generated generated/hopper_head_dims.hpp
# (src/cuda/hopper/head_dims.hpp.in), which the dispatch and the GPU tests ask.
set(_fs_hopper_fwd_head_dims 64 128 256)
set(_fs_hopper_bwd_head_dims 64 128)
set(_fs_hopper_sources "")
set(FS_HOPPER_FWD_EXPR "false")
set(FS_HOPPER_BWD_EXPR "false")
# FLASHSIGMOID_HOPPER=OFF dispatches nothing to the Hopper kernels, so they are not compiled either.
string(TOUPPER "${FLASHSIGMOID_HOPPER}" _fs_hopper_requested)
if(_fs_hopper_arch AND NOT _fs_hopper_requested MATCHES "^(OFF|FALSE|0)$")
  foreach(_fs_hd IN LISTS FLASHSIGMOID_HEAD_DIMS)
    if(_fs_hd IN_LIST _fs_hopper_fwd_head_dims)
      string(APPEND FS_HOPPER_FWD_EXPR " || D == ${_fs_hd}")
      foreach(_fs_dt bf16 fp16)
        fs_instantiate(hopper/fwd_inst hopper_fwd ${_fs_hd} ${_fs_dt} _fs_src)
        list(APPEND _fs_hopper_sources ${_fs_src})
      endforeach()
    endif()
    if(_fs_hd IN_LIST _fs_hopper_bwd_head_dims AND FLASHSIGMOID_CUDA_BACKWARD)
      string(APPEND FS_HOPPER_BWD_EXPR " || D == ${_fs_hd}")
      foreach(_fs_dt bf16 fp16)
        fs_instantiate(hopper/bwd_inst hopper_bwd ${_fs_hd} ${_fs_dt} _fs_src)
        list(APPEND _fs_hopper_sources ${_fs_src})
      endforeach()
    endif()
  endforeach()
endif()
configure_file(${PROJECT_SOURCE_DIR}/src/cuda/hopper/head_dims.hpp.in
               ${PROJECT_BINARY_DIR}/generated/hopper_head_dims.hpp @ONLY)
target_include_directories(flashsigmoid PRIVATE ${PROJECT_BINARY_DIR})
option(FLASHSIGMOID_PTXAS_VERBOSE "Print ptxas register / spill reports for the Hopper kernels" OFF)
if(_fs_hopper_sources)
  add_library(flashsigmoid_hopper OBJECT ${_fs_hopper_sources})
  set_target_properties(flashsigmoid_hopper PROPERTIES CUDA_ARCHITECTURES 90a POSITION_INDEPENDENT_CODE ON)
  target_include_directories(flashsigmoid_hopper PRIVATE
    ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/src ${PROJECT_BINARY_DIR} ${CUTLASS_INCLUDE_DIR})
  target_compile_options(flashsigmoid_hopper PRIVATE ${_fs_cuda_flags})
  if(FLASHSIGMOID_SIGMOID_EXP)
    target_compile_definitions(flashsigmoid_hopper PRIVATE FLASHSIGMOID_SIGMOID_EXP=1)
  endif()
  if(FLASHSIGMOID_PTXAS_VERBOSE)
    target_compile_options(flashsigmoid_hopper PRIVATE -Xptxas=-v)
  endif()
  target_sources(flashsigmoid PRIVATE $<TARGET_OBJECTS:flashsigmoid_hopper>)
endif()
string(TOUPPER "${FLASHSIGMOID_HOPPER}" _fs_hopper_mode)
if(NOT _fs_hopper_mode MATCHES "^(AUTO|ON|OFF|TRUE|FALSE|1|0)$")
  message(FATAL_ERROR "FLASHSIGMOID_HOPPER is '${FLASHSIGMOID_HOPPER}'; accepted: AUTO, ON, OFF")
endif()
if(_fs_hopper_mode STREQUAL "AUTO")
  set(_fs_hopper_mode ${_fs_hopper_arch})
endif()
set(FLASHSIGMOID_HOPPER_DISPATCH ${_fs_hopper_mode})  # resolved ON/OFF, read by tests/gpu
if(_fs_hopper_mode)
  if(NOT _fs_hopper_arch)
    message(FATAL_ERROR "FLASHSIGMOID_HOPPER=ON needs 90a (or 90) in FLASHSIGMOID_CUDA_ARCHS "
                        "(got ${CMAKE_CUDA_ARCHITECTURES})")
  endif()
  target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_HOPPER_ENABLED=1)
  message(STATUS "flashsigmoid: Hopper forward and backward dispatched on sm_90 devices (FLASHSIGMOID_HOPPER=${FLASHSIGMOID_HOPPER})")
endif()

target_sources(flashsigmoid PRIVATE src/cuda/backend.cu src/cuda/device_info.cu)
target_include_directories(flashsigmoid PRIVATE ${CUTLASS_INCLUDE_DIR})
target_link_libraries(flashsigmoid PUBLIC CUDA::cudart)
target_compile_options(flashsigmoid PRIVATE
  "$<$<COMPILE_LANGUAGE:CUDA>:${_fs_cuda_flags}>")
