// Compile-only: <specdec/net.hpp> alone gives the network clients and the generic library
// (this target links specdec::net only: no Eigen, no server headers).
#include <specdec/net.hpp>

#ifdef EIGEN_WORLD_VERSION
#error "specdec/net.hpp pulled in Eigen: the CPU backend belongs in specdec/cpu.hpp"
#endif

static_assert(specdec::verifier<specdec::hybrid::remote_verifier>);
