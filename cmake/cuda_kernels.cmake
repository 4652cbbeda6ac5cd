# CUDA backend sources. Included from the top-level CMakeLists when CUDA is on.
target_sources(flashsigmoid PRIVATE src/cuda/backend.cu)
target_include_directories(flashsigmoid PRIVATE ${CUTLASS_INCLUDE_DIR})
target_link_libraries(flashsigmoid PUBLIC CUDA::cudart)
target_compile_options(flashsigmoid PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr --use_fast_math -lineinfo>)
