#pragma once
/// \file backend/cpu/detail/linkage.hpp
/// Where the backend's heavy functions are compiled: in every translation unit that uses
/// them (the default: header-only, like the rest of specdec), or once, for programs with
/// many translation units.
///
/// The forward pass (`llama_engine::forward_rows`) and the weight products
/// (`weight_matrix::matmul`) instantiate every kernel of every weight format and tile
/// configuration: most of the machine code, and of the compile time, of a translation
/// unit that runs a model. Loading one (`load_checkpoint`, `parse_checkpoint`, the
/// weight conversion, the engine's constructor and scratch, the tile timing, the
/// tokenizer's parser and encoder) is most of the rest. Defining
/// `SPECDEC_CPU_COMPILED_LIB` makes all of them declarations only, defined by one
/// translation unit of the program. The code, and so every result,
/// is the same in both modes; a program must use one mode in all of its translation units.
///
/// The one translation unit (specdec's own is src/cpu_compiled.cpp, the CMake target
/// `specdec_cpu_compiled` that its tests, benchmarks and server link):
///
/// ```cpp
/// #define SPECDEC_CPU_COMPILED_LIB
/// #define SPECDEC_CPU_COMPILED_LIB_SOURCE
/// #include <specdec/cpu.hpp>
/// ```
///
/// and every other translation unit of the program is compiled with
/// `-DSPECDEC_CPU_COMPILED_LIB`.
///
/// `SPECDEC_CPU_FUNC` marks those out-of-class definitions: `inline` when they are in
/// every translation unit, nothing in the library's own one (which defines
/// `SPECDEC_CPU_COMPILED_LIB_SOURCE` as well). `SPECDEC_CPU_DEFINITIONS` is 1 where the
/// definitions are compiled.
#if defined(SPECDEC_CPU_COMPILED_LIB)
#define SPECDEC_CPU_FUNC
#if defined(SPECDEC_CPU_COMPILED_LIB_SOURCE)
#define SPECDEC_CPU_DEFINITIONS 1
#else
#define SPECDEC_CPU_DEFINITIONS 0
#endif
#else
#define SPECDEC_CPU_FUNC inline
#define SPECDEC_CPU_DEFINITIONS 1
#endif
