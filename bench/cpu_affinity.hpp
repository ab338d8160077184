#pragma once
// CPU pinning for the benchmarks: a measurement whose threads move between CPUs starts
// on cold caches after each move (Linux sched_getaffinity / sched_setaffinity).
#include <sched.h>

#include <string>
#include <vector>

#include "specdec/error.hpp"

namespace specdec::bench {

/// The CPUs this process may run on, in order.
inline std::vector<int> allowed_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  std::vector<int> cpus;
  if (::sched_getaffinity(0, sizeof set, &set) != 0) return cpus;
  for (int i = 0; i < CPU_SETSIZE; ++i)
    if (CPU_ISSET(i, &set)) cpus.push_back(i);
  return cpus;
}

/// Pins the calling thread (and the threads and children it creates afterwards) to `cpu`;
/// throws `specdec::error` if the kernel refuses.
inline void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  if (::sched_setaffinity(0, sizeof set, &set) != 0)
    throw specdec::error("sched_setaffinity to CPU " + std::to_string(cpu) + " failed");
}

}  // namespace specdec::bench
