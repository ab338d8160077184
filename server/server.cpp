// The one translation unit of specdec_serve_core: the server over the CPU backend's
// batched transformer, compiled once for specdec-serve and the tests that run it in
// process (see the explicit instantiation declaration at the end of
// specdec_serve/server.hpp). Each of those translation units compiled all of it before:
// about 25 s of an optimised build, 20 s of the sanitizer build's.
#define SPECDEC_SERVE_CORE_SOURCE
#include "specdec_serve/server.hpp"

template class specdec::serve::server<specdec::cpu::batched_transformer>;
