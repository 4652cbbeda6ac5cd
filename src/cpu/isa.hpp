// The instruction-set level a CPU kernel unit is compiled for.
//
// A portable build compiles each CPU kernel source once per x86-64 level (see
// src/cpu/isa/unit.cpp.in and cmake/cpu_kernels.cmake), with FLASHSIGMOID_CPU_LEVEL naming the level and
// FLASHSIGMOID_CPU_MULTI_LEVEL set; src/cpu/isa/select.cpp calls the best one the CPU runs.
// Everything the kernels define with external linkage lives in the inline namespace
// FLASHSIGMOID_CPU_LEVEL and the entry points carry its name as a suffix, so the levels' copies
// never merge at link time. A single-level build (-march=native, or not x86-64 / GCC) keeps
// the plain names.
//
// FLASHSIGMOID_CPU_AVX512BF16 / FLASHSIGMOID_CPU_AMX say that the unit may use AVX512-BF16 / AMX-BF16
// instructions. A single-level build never uses AMX: the OS permission request that AMX needs is
// made by the run-time selection (src/cpu/isa/select.cpp), which only portable builds have.
#pragma once

#if !defined(FLASHSIGMOID_CPU_MULTI_LEVEL) && defined(__AVX512BF16__) && defined(__AVX512BW__)
#define FLASHSIGMOID_CPU_AVX512BF16 1
#endif

#ifndef FLASHSIGMOID_CPU_LEVEL
#define FLASHSIGMOID_CPU_LEVEL single
#endif

#ifdef FLASHSIGMOID_CPU_MULTI_LEVEL
#define FLASHSIGMOID_CPU_CAT_(a, b) a##_##b
#define FLASHSIGMOID_CPU_CAT(a, b) FLASHSIGMOID_CPU_CAT_(a, b)
#define FLASHSIGMOID_CPU_ENTRY(name) FLASHSIGMOID_CPU_CAT(name, FLASHSIGMOID_CPU_LEVEL)
#else
#define FLASHSIGMOID_CPU_ENTRY(name) name
#endif
