// The instruction-set level a CPU kernel unit is compiled for.
//
// A portable build compiles each CPU kernel source once per x86-64 level (see
// src/cpu/isa/unit.cpp.in and CMakeLists.txt), with FLASHSIGMOID_CPU_ISA naming the level and
// FLASHSIGMOID_CPU_MULTI_ISA set; src/cpu/isa/select.cpp calls the best one the CPU runs.
// Everything the kernels define with external linkage lives in the inline namespace
// FLASHSIGMOID_CPU_ISA and the entry points carry its name as a suffix, so the levels' copies
// never merge at link time. A single-level build (-march=native, or not x86-64 / GCC) keeps
// the plain names.
#pragma once

#ifndef FLASHSIGMOID_CPU_ISA
#define FLASHSIGMOID_CPU_ISA native
#endif

#ifdef FLASHSIGMOID_CPU_MULTI_ISA
#define FLASHSIGMOID_CPU_CAT_(a, b) a##_##b
#define FLASHSIGMOID_CPU_CAT(a, b) FLASHSIGMOID_CPU_CAT_(a, b)
#define FLASHSIGMOID_CPU_ENTRY(name) FLASHSIGMOID_CPU_CAT(name, FLASHSIGMOID_CPU_ISA)
#else
#define FLASHSIGMOID_CPU_ENTRY(name) name
#endif
