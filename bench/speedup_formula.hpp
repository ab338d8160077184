#pragma once
// The analytic speed-up model specdec-bench compares its measurements with (kept apart
// from the tool so that tests/test_speedup_formula.cpp can check it).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "specdec/error.hpp"

namespace specdec::bench {

/// Expected tokens per target call with per-token acceptance a in [0, 1] and a (mean,
/// possibly fractional) draft length gamma >= 0: 1 + a + ... + a^gamma =
/// (1 - a^(gamma + 1)) / (1 - a), and gamma + 1 at a = 1.
inline double expected_tokens_per_call(double a, double gamma) {
  return a >= 1.0 ? gamma + 1.0 : (1.0 - std::pow(a, gamma + 1.0)) / (1.0 - a);
}

/// The analytic expected speedup of speculative decoding (Leviathan et al. 2023, eq. for
/// walltime improvement): (1 - a^(g+1)) / ((1 - a) (g c + 1)), with c the draft's cost
/// per forward over the target's. It assumes the target's verification of g + 1 tokens
/// costs one single-token forward.
inline double formula_speedup(double a, double gamma, double c) {
  return expected_tokens_per_call(a, gamma) / (gamma * c + 1.0);
}

/// The same with the measured block cost: verification of g + 1 tokens costs
/// block_cost[g + 1] single-token forwards (block_cost[k] for a block of k tokens, at
/// least 2 entries; linear interpolation for a fractional mean g, the last entry beyond
/// the table).
inline double refined_speedup(double a, double gamma, double c, const std::vector<double>& block_cost) {
  if (block_cost.size() < 2)
    throw invalid_argument("refined_speedup: block_cost has " + std::to_string(block_cost.size()) +
                           " entries; expected at least 2");
  const double k = gamma + 1.0;
  const std::size_t lo = std::min<std::size_t>(block_cost.size() - 2, static_cast<std::size_t>(std::floor(k)));
  const double frac = std::clamp(k - double(lo), 0.0, 1.0);
  const double b = block_cost[lo] + frac * (block_cost[lo + 1] - block_cost[lo]);
  return expected_tokens_per_call(a, gamma) / (gamma * c + b);
}

}  // namespace specdec::bench
