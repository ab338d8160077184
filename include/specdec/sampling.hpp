#pragma once
/// \file sampling.hpp
/// Logits -> the distribution actually sampled from (temperature, top-k, top-p) -> token.
///
/// Exact speculative decoding needs the draft's distribution q to be *exactly* the one the
/// drafted token was drawn from, so the processing and the draw are separate, public
/// steps: `make_distribution` writes the processed distribution, `sample_from` draws from
/// it. Temperature 0 is greedy: the distribution is one-hot at the first maximal logit,
/// and no random number is consumed.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// Knobs that turn logits into a distribution.
///
/// ```cpp
/// specdec::sampling_params greedy{};                              // temperature 0
/// specdec::sampling_params nucleus{.temperature = 0.8f, .top_p = 0.9f};
/// nucleus.validate();  // throws specdec::invalid_argument on bad values
/// ```
struct sampling_params {
  float temperature = 0.0f;  ///< 0 = greedy (argmax); otherwise logits / temperature
  int top_k = 0;             ///< keep the k most likely tokens; 0 = off
  float top_p = 1.0f;        ///< keep the smallest set with cumulative probability >= top_p; 1 = off

  [[nodiscard]] bool greedy() const noexcept { return temperature == 0.0f; }

  void validate() const {
    const auto to_chars = [](float v) {
      char b[32];
      std::snprintf(b, sizeof b, "%g", static_cast<double>(v));
      return std::string(b);
    };
    if (!std::isfinite(temperature) || temperature < 0.0f)
      throw invalid_argument("sampling_params.temperature must be finite and >= 0, got " +
                             std::to_string(temperature));
    if (temperature > 0.0f && !std::isfinite(1.0f / temperature))  // logits are scaled by 1 / T
      throw invalid_argument("sampling_params.temperature = " + to_chars(temperature) +
                             " is so small that 1 / temperature overflows float; expected 0 (greedy) or a "
                             "temperature whose reciprocal is finite (about 3e-39 or more)");
    if (top_k < 0)
      throw invalid_argument("sampling_params.top_k must be >= 0 (0 = off), got " + std::to_string(top_k));
    if (!(top_p > 0.0f && top_p <= 1.0f))
      throw invalid_argument("sampling_params.top_p must be in (0, 1], got " + std::to_string(top_p));
  }
};

/// Index of the first maximal element (ties go to the lowest id, as in llama2.c): the
/// index `std::max_element` returns, NaN included (a NaN is never larger; a NaN first
/// element is returned). Greedy decoding calls it on every row of logits of both models,
/// so it runs 16 lanes at a time rather than as a vocabulary-sized scalar scan.
[[nodiscard]] inline token_id argmax(std::span<const float> v) {
  if (v.empty()) throw invalid_argument("argmax: empty span; expected at least one logit");
  const std::size_t n = v.size();
  const float* p = v.data();
  if (!(p[0] == p[0])) return 0;  // max_element keeps a NaN first element
  typedef float lanes16 __attribute__((vector_size(64), aligned(4), may_alias));
  // The maximum, NaN skipped (a comparison with NaN is false), then its first index.
  const std::size_t n16 = n - n % 16;  // whole 16-lane chunks
  float m = p[0];
  if (n16 > 0) {
    const lanes16 first = lanes16{} + p[0];
    lanes16 mv = *reinterpret_cast<const lanes16*>(p);
    mv = mv == mv ? mv : first;  // NaN lanes start at p[0]
    for (std::size_t i = 16; i < n16; i += 16) {
      const lanes16 x = *reinterpret_cast<const lanes16*>(p + i);
      mv = x > mv ? x : mv;
    }
    for (int l = 0; l < 16; ++l) m = mv[l] > m ? mv[l] : m;
  }
  for (std::size_t i = n16; i < n; ++i) m = p[i] > m ? p[i] : m;
  for (std::size_t i = 0; i < n16; i += 16) {
    const lanes16 x = *reinterpret_cast<const lanes16*>(p + i);
    const auto hit = x == m;
    for (int l = 0; l < 16; ++l)
      if (hit[l]) return static_cast<token_id>(i + static_cast<std::size_t>(l));
  }
  for (std::size_t i = n16; i < n; ++i)
    if (p[i] == m) return static_cast<token_id>(i);
  return 0;  // unreachable: m is one of the elements
}

/// Numerically stable softmax of `logits / temperature` into `out` (same size).
inline void softmax(std::span<const float> logits, std::span<float> out, float temperature = 1.0f) {
  if (logits.size() != out.size() || logits.empty())
    throw invalid_argument("softmax: logits and out must have the same non-zero size, got " +
                           std::to_string(logits.size()) + " and " + std::to_string(out.size()));
  const float mx = *std::max_element(logits.begin(), logits.end());
  const float inv_t = 1.0f / temperature;
  for (std::size_t i = 0; i < logits.size(); ++i) out[i] = std::exp((logits[i] - mx) * inv_t);
  // Fixed-order scalar sum: the same distribution whatever the caller's batching.
  float z = 0.0f;
  for (float x : out) z += x;
  const float inv_z = 1.0f / z;
  for (float& x : out) x *= inv_z;
}

/// Shannon entropy (nats) of a probability distribution; zeros contribute nothing.
[[nodiscard]] inline float entropy(std::span<const float> p) {
  double h = 0.0;
  for (float x : p)
    if (x > 0.0f) h -= double(x) * std::log(double(x));
  return static_cast<float>(h);
}

/// Throws `invalid_argument` naming the cause when softmax(logits / T) in `probs` is not
/// a distribution: a non-finite logit (the model produced NaN or infinity), or a
/// temperature too small for the logits' range. One pass over `probs`, cheap next to the
/// exponentials that filled it.
inline void check_distribution(std::span<const float> logits, const sampling_params& params,
                               std::span<const float> probs) {
  float total = 0.0f;
  for (float x : probs) total += x;
  if (total > 0.0f && std::isfinite(total)) return;
  for (std::size_t i = 0; i < logits.size(); ++i)
    if (!std::isfinite(logits[i]))
      throw invalid_argument("make_distribution: logit " + std::to_string(i) + " of " +
                             std::to_string(logits.size()) + " is " + std::to_string(logits[i]) +
                             "; expected finite logits (the model produced NaN or infinity: check its weights "
                             "and inputs)");
  throw invalid_argument("make_distribution: softmax(logits / temperature) has total mass " +
                         std::to_string(total) + " at temperature " + std::to_string(params.temperature) +
                         "; expected a positive finite total (a larger sampling_params.temperature)");
}

/// Writes into `probs` the distribution a token is drawn from under `params`: one-hot at
/// the argmax when greedy, otherwise softmax(logits / T) restricted to top-k and top-p
/// and renormalised. Tokens outside the kept set get exactly 0.
inline void make_distribution(std::span<const float> logits, const sampling_params& params,
                              std::span<float> probs) {
  if (logits.size() != probs.size() || logits.empty())
    throw invalid_argument("make_distribution: logits and probs must have the same non-zero size, got " +
                           std::to_string(logits.size()) + " and " + std::to_string(probs.size()));
  if (params.greedy()) {
    std::fill(probs.begin(), probs.end(), 0.0f);
    probs[static_cast<std::size_t>(argmax(logits))] = 1.0f;
    return;
  }
  softmax(logits, probs, params.temperature);
  check_distribution(logits, params, probs);
  const std::size_t n = probs.size();
  const bool use_k = params.top_k > 0 && static_cast<std::size_t>(params.top_k) < n;
  const bool use_p = params.top_p < 1.0f;
  if (!use_k && !use_p) return;

  // Order candidates by probability (ties by id, so the kept set is deterministic).
  thread_local std::vector<std::uint32_t> order;
  order.resize(n);
  std::iota(order.begin(), order.end(), 0u);
  auto by_prob = [&](std::uint32_t a, std::uint32_t b) {
    return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
  };
  std::size_t keep = use_k ? static_cast<std::size_t>(params.top_k) : n;
  float kept_mass = 0.0f;  // the mass the nucleus is a fraction of
  if (use_k) {
    std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(keep), order.end(), by_prob);
    for (std::size_t i = 0; i < keep; ++i) kept_mass += probs[order[i]];
  } else {
    // Top-p alone: only tokens with p >= (1 - top_p) / (n - 1) can be in the nucleus (all
    // the others together hold less than 1 - top_p, so the rest reach top_p first and sort
    // ahead of them). Sorting just those candidates avoids sorting the whole vocabulary.
    for (float x : probs) kept_mass += x;
    const float cutoff = n > 1 ? (1.0f - params.top_p) * kept_mass / static_cast<float>(n - 1) : 0.0f;
    const auto last = std::partition(order.begin(), order.end(), [&](std::uint32_t a) { return probs[a] >= cutoff; });
    std::sort(order.begin(), last, by_prob);
    keep = static_cast<std::size_t>(last - order.begin());
  }
  if (use_p) {
    const float target = params.top_p * kept_mass;  // nucleus within the top-k set
    float cum = 0.0f;
    std::size_t i = 0;
    for (; i < keep; ++i) {
      cum += probs[order[i]];
      if (cum >= target) break;
    }
    keep = std::min(keep, i + 1);
  }
  float z = 0.0f;
  for (std::size_t i = 0; i < keep; ++i) z += probs[order[i]];
  thread_local std::vector<float> kept;
  kept.resize(keep);
  for (std::size_t i = 0; i < keep; ++i) kept[i] = probs[order[i]] / z;
  std::fill(probs.begin(), probs.end(), 0.0f);
  for (std::size_t i = 0; i < keep; ++i) probs[order[i]] = kept[i];
}

/// Seeded, reproducible random source. The uniform draw is built from the raw 64-bit
/// Mersenne Twister output (whose sequence the C++ standard fixes), not from
/// `std::uniform_real_distribution`, so the same seed gives the same tokens with every
/// standard library.
class random_source {
 public:
  explicit random_source(std::uint64_t seed = 0) : engine_(seed) {}
  /// Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  /// Standard normal by Box-Muller (two uniforms per draw, no cached second value, so
  /// the stream position depends only on how many draws were made).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
  }
  /// True with probability p (consumes one uniform).
  bool bernoulli(double p) { return uniform() < p; }
  void reseed(std::uint64_t seed) { engine_.seed(seed); }

 private:
  std::mt19937_64 engine_;
};

/// Inverse-CDF draw from a (possibly unnormalised, non-negative) distribution with a
/// uniform `u` in [0, 1). Rounding that leaves the cumulative sum short of `u * total`
/// falls to the last token with non-zero mass, never to a zero-probability token.
[[nodiscard]] inline token_id sample_from(std::span<const float> probs, double u) {
  double total = 0.0;
  for (float x : probs) total += x;
  if (!(total > 0.0) || !std::isfinite(total))
    throw invalid_argument("sample_from: the distribution's total mass over " + std::to_string(probs.size()) +
                           " tokens is " + std::to_string(total) +
                           "; expected a positive finite total (non-negative, finite probabilities, not all 0)");
  const double target = u * total;
  double cum = 0.0;
  std::size_t last_nonzero = 0;
  for (std::size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0.0f) continue;
    cum += probs[i];
    last_nonzero = i;
    if (target < cum) return static_cast<token_id>(i);
  }
  return static_cast<token_id>(last_nonzero);
}

/// The one sampling path: fills `probs` with the processed distribution of `logits`,
/// then picks the token: the first maximal logit when greedy (no randomness consumed),
/// else one draw from `probs` with `rng.uniform()`.
///
/// ```cpp
/// specdec::random_source rng(7);
/// std::vector<float> probs(logits.size());
/// specdec::token_id t = specdec::sample_token(logits, {.temperature = 0.8f}, probs, rng);
/// ```
inline token_id sample_token(std::span<const float> logits, const sampling_params& params, std::span<float> probs,
                             random_source& rng) {
  make_distribution(logits, params, probs);
  return params.greedy() ? argmax(logits) : sample_from(probs, rng.uniform());
}

/// Sampling params plus a seeded random source: what a decoder holds to turn logits into
/// tokens. `next` fills the processed distribution (for policies that need it) and
/// returns the drawn token; greedy consumes no randomness.
///
/// ```cpp
/// specdec::sampler s({.temperature = 1.0f, .top_p = 0.9f}, /*seed=*/42);
/// std::vector<float> q(vocab);
/// specdec::token_id t = s.next(logits_row, q);  // q is what t was drawn from
/// ```
class sampler {
 public:
  explicit sampler(sampling_params params = {}, std::uint64_t seed = 0) : params_(params), rng_(seed) {
    params_.validate();
  }
  [[nodiscard]] const sampling_params& params() const noexcept { return params_; }
  [[nodiscard]] random_source& rng() noexcept { return rng_; }
  void reseed(std::uint64_t seed) { rng_.reseed(seed); }

  /// Processed distribution of `logits` into `probs`, then a draw from it.
  token_id next(std::span<const float> logits, std::span<float> probs) {
    return sample_token(logits, params_, probs, rng_);
  }

 private:
  sampling_params params_;
  random_source rng_;
};

}  // namespace specdec
