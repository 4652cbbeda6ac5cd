# CUDA backend sources. Included from the top-level CMakeLists when CUDA is on.
#
# One generated translation unit per (head dim, dtype) of the portable forward and one of the
# portable backward, so the kernels compile in parallel; FLASHSIGMOID_HEAD_DIMS picks which head
# dims are instantiated.
set(_fs_valid_head_dims 32 64 96 128 256)
set(_fs_gen_dir ${PROJECT_BINARY_DIR}/generated/cuda)
set(_fs_built "")
foreach(_fs_hd IN LISTS FLASHSIGMOID_HEAD_DIMS)
  if(NOT _fs_hd IN_LIST _fs_valid_head_dims)
    message(FATAL_ERROR "FLASHSIGMOID_HEAD_DIMS: ${_fs_hd} is not one of ${_fs_valid_head_dims}")
  endif()
  foreach(_fs_dt bf16 fp16)
    set(FS_HEAD_DIM ${_fs_hd})
    if(_fs_dt STREQUAL "bf16")
      set(FS_ELEMENT "cutlass::bfloat16_t")
    else()
      set(FS_ELEMENT "cutlass::half_t")
    endif()
    foreach(_fs_dir fwd bwd)
      configure_file(${PROJECT_SOURCE_DIR}/src/cuda/portable/${_fs_dir}_inst.cu.in
                     ${_fs_gen_dir}/${_fs_dir}_hdim${_fs_hd}_${_fs_dt}.cu @ONLY)
      target_sources(flashsigmoid PRIVATE ${_fs_gen_dir}/${_fs_dir}_hdim${_fs_hd}_${_fs_dt}.cu)
    endforeach()
  endforeach()
  target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_CUDA_HDIM_${_fs_hd}=1)
  list(APPEND _fs_built ${_fs_hd})
endforeach()
list(JOIN _fs_built ", " _fs_built_str)
target_compile_definitions(flashsigmoid PRIVATE "FLASHSIGMOID_CUDA_BUILT_HEAD_DIMS=\"${_fs_built_str}\"")

option(FLASHSIGMOID_SIGMOID_EXP "CUDA kernels: sigmoid as 1/(1+exp(-s)) (2 MUFU ops) instead of tanh.approx (1)" OFF)
if(FLASHSIGMOID_SIGMOID_EXP)
  target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_SIGMOID_EXP=1)
endif()

# The portable backward is compiled always; it is dispatched only with this option until it
# has passed the GPU tests (scripts/gpu_check.sh turns it on).
option(FLASHSIGMOID_CUDA_BACKWARD "Dispatch CUDA tensors' backward to the (not yet GPU-validated) portable kernels" OFF)
if(FLASHSIGMOID_CUDA_BACKWARD)
  target_compile_definitions(flashsigmoid PRIVATE FLASHSIGMOID_CUDA_BACKWARD_ENABLED=1)
endif()

target_sources(flashsigmoid PRIVATE src/cuda/backend.cu)
target_include_directories(flashsigmoid PRIVATE ${CUTLASS_INCLUDE_DIR})
target_link_libraries(flashsigmoid PUBLIC CUDA::cudart)
target_compile_options(flashsigmoid PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr --use_fast_math -lineinfo>)
