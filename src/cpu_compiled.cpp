// The one translation unit of specdec::cpu_compiled (CMake target specdec_cpu_compiled):
// the CPU backend's forward pass and weight products, compiled once for the programs
// that link it. See include/specdec/backend/cpu/detail/linkage.hpp.
#define SPECDEC_CPU_COMPILED_LIB
#define SPECDEC_CPU_COMPILED_LIB_SOURCE
#include "specdec/cpu.hpp"
