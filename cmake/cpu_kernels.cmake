# The CPU kernel sources, added to the flashsigmoid target in one of three ways:
# - FLASHSIGMOID_NATIVE=ON: once, with -march=native (runs only on CPUs like the build machine);
# - otherwise with GCC on x86-64: once per x86-64 level (baseline, v3 = AVX2/FMA, v4 = AVX-512,
#   v4-bf16 = v4 + AVX512-BF16, v4-amx = v4-bf16 + AMX-BF16 tiles),
#   each through a generated unit (src/cpu/isa/unit.cpp.in) that enables the level's features
#   with `#pragma GCC target`, and src/cpu/isa/select.cpp calls the best one the CPU runs;
# - otherwise once, for the compiler's default target.
# A kernel source names its entry points with FLASHSIGMOID_CPU_ENTRY (src/cpu/isa.hpp).
set(FLASHSIGMOID_CPU_KERNELS src/cpu/forward.cpp src/cpu/backward.cpp src/cpu/kvcache.cpp)

set(FLASHSIGMOID_CPU_MULTI_LEVEL OFF)
if(NOT FLASHSIGMOID_NATIVE AND CMAKE_CXX_COMPILER_ID STREQUAL "GNU"
   AND CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  set(FLASHSIGMOID_CPU_MULTI_LEVEL ON)
endif()

if(FLASHSIGMOID_CPU_MULTI_LEVEL)
  set(_fs_v3 "avx2,fma,bmi,bmi2,lzcnt,movbe,f16c")
  set(_fs_v4 "${_fs_v3},avx512f,avx512bw,avx512cd,avx512dq,avx512vl")
  # level=vector bytes=target features=macros the kernels test (space-separated)
  set(_fs_levels "x86_64=16==" "x86_64_v3=32=${_fs_v3}=" "x86_64_v4=64=${_fs_v4}="
                 "x86_64_v4_bf16=64=${_fs_v4},avx512bf16=FLASHSIGMOID_CPU_AVX512BF16"
                 "x86_64_v4_amx=64=${_fs_v4},avx512bf16,amx-tile,amx-bf16=FLASHSIGMOID_CPU_AVX512BF16 FLASHSIGMOID_CPU_AMX")
  foreach(_fs_level_entry IN LISTS _fs_levels)
    string(REPLACE "=" ";" _fs_fields "${_fs_level_entry}")
    list(GET _fs_fields 0 FS_ISA_LEVEL)
    list(GET _fs_fields 1 FS_ISA_VECTOR_BYTES)
    list(GET _fs_fields 2 _fs_target)
    list(GET _fs_fields 3 _fs_macros)
    set(FS_ISA_DEFINES "")
    if(_fs_macros)
      string(REPLACE " " ";" _fs_macros "${_fs_macros}")
      foreach(_fs_macro IN LISTS _fs_macros)
        string(APPEND FS_ISA_DEFINES "#define ${_fs_macro} 1\n")
      endforeach()
    endif()
    if(_fs_target)
      set(FS_ISA_PUSH "#pragma GCC push_options\n#pragma GCC target(\"${_fs_target}\")")
      set(FS_ISA_POP "#pragma GCC pop_options")
    else()
      set(FS_ISA_PUSH "")
      set(FS_ISA_POP "")
    endif()
    foreach(_fs_src IN LISTS FLASHSIGMOID_CPU_KERNELS)
      get_filename_component(_fs_name ${_fs_src} NAME_WE)
      set(FS_ISA_SOURCE "${PROJECT_SOURCE_DIR}/${_fs_src}")
      set(_fs_unit "${PROJECT_BINARY_DIR}/cpu_isa/${FS_ISA_LEVEL}/${_fs_name}.cpp")
      configure_file(${PROJECT_SOURCE_DIR}/src/cpu/isa/unit.cpp.in ${_fs_unit} @ONLY)
      target_sources(flashsigmoid PRIVATE ${_fs_unit})
    endforeach()
  endforeach()
  target_sources(flashsigmoid PRIVATE src/cpu/isa/select.cpp)
  message(STATUS "flashsigmoid: CPU kernels for x86-64, -v3, -v4, -v4-bf16 and -v4-amx, picked at run time")
else()
  target_sources(flashsigmoid PRIVATE ${FLASHSIGMOID_CPU_KERNELS})
  if(FLASHSIGMOID_NATIVE AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    set_source_files_properties(${FLASHSIGMOID_CPU_KERNELS} PROPERTIES COMPILE_OPTIONS "-march=native")
  endif()
endif()
