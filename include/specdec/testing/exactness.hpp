#pragma once
/// \file testing/exactness.hpp
/// A reusable statistical check that something which generates tokens from a seed (a
/// speculative decoder, a tree verifier, a remote session...) emits exactly the target
/// model's distribution. No GoogleTest here, so benchmarks and tools can use it too
/// (`testing/contracts.hpp` adds `SPECDEC_EXPECT_EXACT` for GoogleTest).
///
/// The pieces:
/// - `processed_distribution`: the distribution `sampling_params` make of a row of logits
///   (temperature, top-k, top-p), recomputed in double precision independently of
///   sampling.hpp, refusing cuts too close to call in float.
/// - `sequence_law` / `exact_sequence_law`: the exact law of the next `length` tokens
///   after a prompt, for any model whose next-token law is known (`markov_model`).
/// - `sequence_counts` / `sample_sequences`: the empirical joint law of `runs` seeded
///   generations, one seed per run.
/// - `goodness_of_fit` and `check_exactness`: the verdict. Each law (the joint law of all
///   `length` emitted tokens, the law of each token, the joint law of each two adjacent
///   tokens) must pass three checks: no sample at all in a bin of probability 0 (one such sample fails outright);
///   a chi-square test (bins with an expected count below `min_expected` pooled) against
///   the critical value at the stated `significance`; and total variation below a bound
///   a correct sampler exceeds with probability at most `significance`.
/// - `exactness_case` / `standard_exactness_cases` / `check_case`: a battery of analytic
///   draft/target pairs at several temperatures with top-k and top-p, for any verifier:
///   plug in a factory that turns (draft, target, params) into a seeded generator.
/// - `rejection_rate` / `biased_law`: the power of the verdict against a given wrong law,
///   by simulating multinomial samples of it.
///
/// ```cpp
/// using namespace specdec::testing;
/// for (const exactness_case& c : standard_exactness_cases()) {
///   exactness_report r = check_case(c, [&](markov_model& draft, markov_model& target, const specdec::sampling_params& p) {
///     return [dec = specdec::speculative_decoder(draft, target, specdec::fixed_gamma{.gamma = 5},
///                                                specdec::rejection_sampling{}, p),
///             &c](std::uint64_t seed) mutable {
///       dec.set_seed(seed);
///       return dec.generate(c.prompt, {.max_new_tokens = c.length, .stop_at_eos = false}).tokens;
///     };
///   });
///   if (!r.passed()) std::cerr << c.name << ": " << r.describe() << '\n';
/// }
/// ```
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/sampling.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/token.hpp"

namespace specdec::testing {

// ---------------------------------------------------------------------------------------
// Chi-square distribution

namespace detail::exactness_impl {

/// ln Gamma(a) - a ln x + x, the common factor of both expansions below.
inline double gamma_prefactor(double a, double x) { return std::exp(-x + a * std::log(x) - std::lgamma(a)); }

/// The regularised lower incomplete gamma P(a, x) by its power series (x < a + 1).
inline double gamma_p_series(double a, double x) {
  double term = 1.0 / a, sum = term;
  for (int n = 1; n < 100000; ++n) {
    term *= x / (a + n);
    sum += term;
    if (std::abs(term) < std::abs(sum) * 1e-16) break;
  }
  return sum * gamma_prefactor(a, x);
}

/// The regularised upper incomplete gamma Q(a, x) by its continued fraction (x >= a + 1),
/// evaluated with the modified Lentz method.
inline double gamma_q_fraction(double a, double x) {
  constexpr double tiny = 1e-300;
  double b = x + 1.0 - a, c = 1.0 / tiny, d = 1.0 / b, h = d;
  for (int i = 1; i < 100000; ++i) {
    const double an = -i * (i - a);
    b += 2.0;
    d = an * d + b;
    if (std::abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (std::abs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double step = d * c;
    h *= step;
    if (std::abs(step - 1.0) < 1e-16) break;
  }
  return gamma_prefactor(a, x) * h;
}

}  // namespace detail::exactness_impl

/// P(X > x) for X chi-square distributed with `df` > 0 degrees of freedom: the p-value of
/// a chi-square statistic x.
///
/// ```cpp
/// double p = specdec::testing::chi_square_upper_tail(18.4207, 2);  // 1e-4 (= exp(-x / 2) for df 2)
/// ```
[[nodiscard]] inline double chi_square_upper_tail(double x, double df) {
  if (!(df > 0.0) || !std::isfinite(df))
    throw invalid_argument("chi_square_upper_tail: df must be finite and > 0, got " + std::to_string(df));
  if (std::isnan(x)) throw invalid_argument("chi_square_upper_tail: x is NaN");
  if (x <= 0.0) return 1.0;
  if (std::isinf(x)) return 0.0;
  const double a = df / 2.0, h = x / 2.0;
  if (h < a + 1.0) return std::max(0.0, 1.0 - detail::exactness_impl::gamma_p_series(a, h));
  return detail::exactness_impl::gamma_q_fraction(a, h);
}

/// The critical value of a chi-square test at significance `alpha`: the x with
/// P(X > x) = alpha for X chi-square distributed with `df` > 0 degrees of freedom.
///
/// ```cpp
/// double c = specdec::testing::chi_square_critical(4, 1e-4);  // 23.513
/// ```
[[nodiscard]] inline double chi_square_critical(double df, double alpha) {
  if (!(alpha > 0.0 && alpha < 1.0))
    throw invalid_argument("chi_square_critical: alpha must be in (0, 1), got " + std::to_string(alpha));
  double lo = 0.0, hi = std::max(1.0, df);
  while (chi_square_upper_tail(hi, df) > alpha) hi *= 2.0;
  for (int i = 0; i < 200 && hi - lo > 1e-12 * hi; ++i) {
    const double mid = 0.5 * (lo + hi);
    (chi_square_upper_tail(mid, df) > alpha ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

// ---------------------------------------------------------------------------------------
// Exact laws

/// The distribution `params` make of `logits`, in double precision and computed
/// independently of sampling.hpp's float code, with the same rules: one-hot at the first
/// maximal logit when greedy; else softmax(logits / T), then the `top_k` most likely
/// tokens (ties by lower id), then the smallest most-likely prefix of those holding at
/// least `top_p` of their mass, renormalised; tokens cut off get exactly 0.
///
/// A cut that float rounding could make differently is refused with `invalid_argument`
/// (pick another seed or knob): a top-p cumulative sum within `margin` of its target, or
/// a kept and a dropped token whose probabilities differ by a relative `margin` or less
/// without their logits being equal (equal logits are a tie both sides break by id).
///
/// ```cpp
/// std::vector<float> logits{2.0f, 1.0f, 0.0f};
/// auto p = specdec::testing::processed_distribution(logits, {.temperature = 1.0f, .top_k = 2});
/// // p = {0.731, 0.269, 0}
/// ```
[[nodiscard]] inline std::vector<double> processed_distribution(std::span<const float> logits,
                                                                const sampling_params& params,
                                                                double margin = 1e-4) {
  params.validate();
  const std::size_t n = logits.size();
  if (n == 0) throw invalid_argument("processed_distribution: empty logits; expected at least one");
  std::vector<double> p(n, 0.0);
  if (params.greedy()) {
    p[static_cast<std::size_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())] = 1.0;
    return p;
  }
  const double mx = *std::max_element(logits.begin(), logits.end());
  double z = 0.0;
  for (std::size_t i = 0; i < n; ++i) z += p[i] = std::exp((double(logits[i]) - mx) / double(params.temperature));
  for (double& x : p) x /= z;
  const bool use_k = params.top_k > 0 && static_cast<std::size_t>(params.top_k) < n;
  const bool use_p = params.top_p < 1.0f;
  if (!use_k && !use_p) return p;

  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return p[a] > p[b]; });
  const auto check_cut = [&](std::size_t keep, const char* knob) {
    if (keep == 0 || keep >= n) return;
    const std::size_t in = order[keep - 1], out = order[keep];
    if (logits[in] != logits[out] && p[in] - p[out] <= margin * p[in])
      throw invalid_argument("processed_distribution: the " + std::string(knob) + " cut between tokens " +
                             std::to_string(in) + " and " + std::to_string(out) +
                             " is too close to call (probabilities " + std::to_string(p[in]) + " and " +
                             std::to_string(p[out]) + "); expected a relative gap > " + std::to_string(margin));
  };
  std::size_t keep = use_k ? static_cast<std::size_t>(params.top_k) : n;
  if (use_k) check_cut(keep, "top_k");
  if (use_p) {
    double kept_mass = 0.0;
    for (std::size_t i = 0; i < keep; ++i) kept_mass += p[order[i]];
    const double target = double(params.top_p) * kept_mass;
    double cum = 0.0;
    std::size_t i = 0;
    for (; i < keep; ++i) {
      cum += p[order[i]];
      if (std::abs(cum - target) < margin)
        throw invalid_argument("processed_distribution: the top_p cut is too close to call: the " +
                               std::to_string(i + 1) + " most likely tokens hold " + std::to_string(cum) +
                               " against a target of " + std::to_string(target) + "; expected a gap >= " +
                               std::to_string(margin));
      if (cum >= target) break;
    }
    keep = std::min(keep, i + 1);
    check_cut(keep, "top_p");
  }
  std::vector<double> out(n, 0.0);
  double kept = 0.0;
  for (std::size_t i = 0; i < keep; ++i) kept += p[order[i]];
  for (std::size_t i = 0; i < keep; ++i) out[order[i]] = p[order[i]] / kept;
  return out;
}

/// The total variation distance 1/2 sum |a_i - b_i| of two laws of the same size.
///
/// ```cpp
/// double d = specdec::testing::tv_distance(std::vector<double>{0.5, 0.5}, std::vector<double>{1.0, 0.0});  // 0.5
/// ```
[[nodiscard]] inline double tv_distance(std::span<const double> a, std::span<const double> b) {
  if (a.size() != b.size())
    throw invalid_argument("tv_distance: laws of " + std::to_string(a.size()) + " and " + std::to_string(b.size()) +
                           " entries; expected equal sizes");
  double d = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) d += std::abs(a[i] - b[i]);
  return 0.5 * d;
}

/// A law over the sequences of `length` tokens from a vocabulary of `vocab`: `joint[i]`
/// is the probability of the sequence whose tokens are the base-`vocab` digits of i,
/// first token most significant.
///
/// ```cpp
/// specdec::testing::sequence_law law = specdec::testing::exact_sequence_law(target, prompt, 3, params);
/// double p = law.joint[law.index_of(std::vector<specdec::token_id>{2, 0, 1})];
/// std::vector<double> second = law.marginal(1);  // the law of the second token
/// ```
struct sequence_law {
  std::size_t vocab = 0;
  std::size_t length = 0;
  std::vector<double> joint;

  /// The index of `tokens` (`length` ids in [0, vocab)) in `joint`.
  [[nodiscard]] std::size_t index_of(std::span<const token_id> tokens) const {
    if (tokens.size() != length)
      throw invalid_argument("sequence_law::index_of: " + std::to_string(tokens.size()) + " tokens; expected " +
                             std::to_string(length));
    check_token_ids(tokens, vocab, "sequence_law::index_of");
    std::size_t b = 0;
    for (token_id t : tokens) b = b * vocab + static_cast<std::size_t>(t);
    return b;
  }
  /// The law of the token at `position` (< length).
  [[nodiscard]] std::vector<double> marginal(std::size_t position) const { return window(position, 1); }
  /// The joint law of the `count` tokens from `first` on (first + count <= length), laid
  /// out like `joint` over `count` tokens.
  [[nodiscard]] std::vector<double> window(std::size_t first, std::size_t count) const {
    return window_of<double>(joint, first, count);
  }

  /// `window` of a table laid out as `joint` (a law or counts).
  template <class T>
  [[nodiscard]] std::vector<T> window_of(std::span<const T> table, std::size_t first, std::size_t count) const {
    if (count == 0 || first + count > length)
      throw invalid_argument("sequence_law: tokens " + std::to_string(first) + " .. " +
                             std::to_string(first + count) + " are out of range; expected a non-empty window of " +
                             std::to_string(length) + " tokens");
    std::size_t stride = 1, bins = 1;
    for (std::size_t i = first + count; i < length; ++i) stride *= vocab;
    for (std::size_t i = 0; i < count; ++i) bins *= vocab;
    std::vector<T> m(bins, T{});
    for (std::size_t i = 0; i < table.size(); ++i) m[(i / stride) % bins] += table[i];
    return m;
  }
};

/// The exact law of the next `length` tokens after `prompt`, from `next(history)`: the
/// next-token law (a `std::vector<double>` of `vocab` probabilities) after a history
/// (the prompt plus the tokens so far). At most 2^24 sequences.
///
/// ```cpp
/// auto law = specdec::testing::exact_sequence_law(
///     [&](std::span<const specdec::token_id> h) { return my_model_probabilities(h); }, prompt, 4, vocab);
/// ```
template <class NextLaw>
[[nodiscard]] sequence_law exact_sequence_law(NextLaw&& next, std::span<const token_id> prompt, std::size_t length,
                                              std::size_t vocab) {
  if (vocab < 1) throw invalid_argument("exact_sequence_law: vocab is 0; expected >= 1");
  std::size_t bins = 1;
  for (std::size_t i = 0; i < length; ++i) {
    if (bins > (std::size_t{1} << 24) / vocab)
      throw invalid_argument("exact_sequence_law: " + std::to_string(vocab) + "^" + std::to_string(length) +
                             " sequences; expected at most 2^24");
    bins *= vocab;
  }
  sequence_law law{vocab, length, std::vector<double>(bins, 0.0)};
  std::vector<token_id> history(prompt.begin(), prompt.end());
  const std::function<void(std::size_t, double, std::size_t)> walk = [&](std::size_t depth, double prob,
                                                                         std::size_t index) {
    if (depth == length) {
      law.joint[index] = prob;
      return;
    }
    const std::vector<double> p = next(std::span<const token_id>(history));
    if (p.size() != vocab)
      throw invalid_argument("exact_sequence_law: the next-token law has " + std::to_string(p.size()) +
                             " entries; expected vocab = " + std::to_string(vocab));
    for (std::size_t t = 0; t < vocab; ++t) {
      if (!(p[t] >= 0.0)) throw invalid_argument("exact_sequence_law: a next-token probability is negative or NaN");
      if (p[t] == 0.0) continue;
      history.push_back(static_cast<token_id>(t));
      walk(depth + 1, prob * p[t], index * vocab + t);
      history.pop_back();
    }
  };
  walk(0, 1.0, 0);
  return law;
}

/// The exact law of the next `length` tokens `target` emits after `prompt` under `params`.
///
/// ```cpp
/// specdec::testing::markov_model target({.vocab = 4, .seed = 3});
/// auto law = specdec::testing::exact_sequence_law(target, std::vector<specdec::token_id>{1}, 6,
///                                                 {.temperature = 0.7f, .top_k = 3});
/// ```
[[nodiscard]] inline sequence_law exact_sequence_law(const markov_model& target, std::span<const token_id> prompt,
                                                     std::size_t length, const sampling_params& params) {
  return exact_sequence_law(
      [&](std::span<const token_id> h) { return processed_distribution(target.logits_after(h), params); }, prompt,
      length, target.vocab_size());
}

/// `law` moved by total variation `tv` towards `towards`: (1 - e) law + e towards with
/// e = tv / tv_distance(law, towards) (which must be >= tv). The wrong law a bug that
/// leaks `towards` (e.g. the draft's law) produces.
///
/// ```cpp
/// auto wrong = specdec::testing::biased_law(target_law.joint, draft_law.joint, 0.02);
/// ```
[[nodiscard]] inline std::vector<double> biased_law(std::span<const double> law, std::span<const double> towards,
                                                    double tv) {
  const double d = tv_distance(law, towards);
  if (!(tv >= 0.0) || tv > d)
    throw invalid_argument("biased_law: tv must be in [0, " + std::to_string(d) + "] (the distance to the other law), got " +
                           std::to_string(tv));
  const double e = d > 0.0 ? tv / d : 0.0;
  std::vector<double> out(law.size());
  for (std::size_t i = 0; i < law.size(); ++i) out[i] = (1.0 - e) * law[i] + e * towards[i];
  return out;
}

// ---------------------------------------------------------------------------------------
// Samples

/// Counts of generated sequences of `length` tokens, laid out as `sequence_law::joint`.
///
/// ```cpp
/// specdec::testing::sequence_counts counts{.vocab = 4, .length = 2};
/// counts.add(std::vector<specdec::token_id>{3, 1});
/// ```
struct sequence_counts {
  std::size_t vocab = 0;
  std::size_t length = 0;
  std::vector<std::uint64_t> joint{};  ///< sized on the first `add`

  /// Counts one sequence; throws `invalid_argument` for a wrong length and
  /// `token_out_of_range` for an id outside [0, vocab).
  void add(std::span<const token_id> tokens) {
    const sequence_law shape{vocab, length, {}};
    const std::size_t b = shape.index_of(tokens);
    if (joint.empty()) {
      std::size_t bins = 1;
      for (std::size_t i = 0; i < length; ++i) bins *= vocab;
      joint.assign(bins, 0);
    }
    ++joint[b];
  }
  /// The number of sequences counted.
  [[nodiscard]] std::uint64_t runs() const { return std::accumulate(joint.begin(), joint.end(), std::uint64_t{0}); }
  /// The counts of the tokens `first` .. first + count - 1 (see `sequence_law::window`).
  [[nodiscard]] std::vector<std::uint64_t> window(std::size_t first, std::size_t count) const {
    return sequence_law{vocab, length, {}}.window_of<std::uint64_t>(joint, first, count);
  }
};

/// Runs `generate(seed)` for the `runs` seeds first_seed, first_seed + 1, ... and counts
/// the sequences it returns (anything convertible to `std::span<const token_id>`, each
/// exactly `length` ids in [0, vocab); otherwise `invalid_argument` naming the seed).
///
/// ```cpp
/// auto counts = specdec::testing::sample_sequences(
///     [&](std::uint64_t seed) { dec.set_seed(seed); return dec.generate(prompt, opts).tokens; }, 40000, vocab, 6);
/// ```
template <class Generate>
[[nodiscard]] sequence_counts sample_sequences(Generate&& generate, std::size_t runs, std::size_t vocab,
                                               std::size_t length, std::uint64_t first_seed = 0) {
  sequence_counts counts{vocab, length};
  for (std::size_t r = 0; r < runs; ++r) {
    const std::uint64_t seed = first_seed + r;
    const auto& out = generate(seed);
    const std::span<const token_id> tokens(out);
    try {
      counts.add(tokens);
    } catch (const error& e) {
      throw invalid_argument("sample_sequences: seed " + std::to_string(seed) + ": " + e.what());
    }
  }
  return counts;
}

// ---------------------------------------------------------------------------------------
// The verdict

/// How strict `goodness_of_fit` is.
///
/// ```cpp
/// specdec::testing::fit_options strict{.significance = 1e-6, .min_expected = 5};
/// ```
struct fit_options {
  /// The probability that a correct sampler fails the chi-square test, and (separately)
  /// the TV bound, of one law. In (0, 1).
  double significance = 1e-6;
  /// Bins with a smaller expected count are pooled into one for the chi-square test (and
  /// the pool into the smallest other bin if it is still below this). > 0.
  double min_expected = 5.0;
};

/// One law's fit: the chi-square test, the TV bound and the support check.
///
/// ```cpp
/// specdec::testing::fit_result f = specdec::testing::goodness_of_fit(law, counts);
/// if (!f.passed()) std::cerr << f.describe() << '\n';
/// ```
struct fit_result {
  std::uint64_t samples = 0;
  std::size_t df = 0;           ///< degrees of freedom: chi-square bins - 1
  double chi2 = 0.0;
  double critical = 0.0;        ///< the chi-square critical value at `significance` (inf when df = 0)
  double p_value = 1.0;         ///< P(X > chi2) under the law
  double tv = 0.0;              ///< total variation between the empirical law and the law
  double tv_bound = 0.0;        ///< exceeded by a correct sampler with probability <= significance
  std::uint64_t out_of_support = 0;  ///< samples in bins of probability 0
  double significance = 0.0;

  [[nodiscard]] bool support_ok() const noexcept { return out_of_support == 0; }
  [[nodiscard]] bool chi2_ok() const noexcept { return !(chi2 > critical); }
  [[nodiscard]] bool tv_ok() const noexcept { return !(tv > tv_bound); }
  [[nodiscard]] bool passed() const noexcept { return support_ok() && chi2_ok() && tv_ok(); }
  [[nodiscard]] std::string describe() const {
    std::ostringstream s;
    s << (passed() ? "pass" : "FAIL") << ": " << samples << " samples, chi2 " << chi2 << " (df " << df
      << ", critical " << critical << " at significance " << significance << ", p-value " << p_value << ")"
      << (chi2_ok() ? "" : " FAILS") << ", TV " << tv << " (bound " << tv_bound << ")" << (tv_ok() ? "" : " FAILS")
      << ", " << out_of_support << " outside the support" << (support_ok() ? "" : " FAILS");
    return s.str();
  }
};

/// The fit of `counts` (one count per bin) to `law` (probabilities summing to 1):
/// - support: every sample in a bin of probability 0 is counted in `out_of_support`, and
///   one is enough to fail;
/// - chi-square over the bins of positive probability, those with an expected count
///   below `min_expected` pooled, against `chi_square_critical(df, significance)`;
/// - TV against `tv_bound` = 1/2 sum_i sqrt(p_i (1 - p_i) / N) + sqrt(ln(1/significance)
///   / (2 N)): the first term bounds E[TV] (Jensen: E|f_i - p_i| <= sd(f_i)), and TV
///   moves by at most 1/N when one of the N independent samples changes, so by
///   McDiarmid's inequality P(TV > E[TV] + t) <= exp(-2 N t^2) = significance.
///
/// ```cpp
/// std::vector<double> law{0.5, 0.5, 0.0};
/// std::vector<std::uint64_t> counts{480, 519, 1};
/// bool ok = specdec::testing::goodness_of_fit(law, counts).passed();  // false: 1 sample in a 0 bin
/// ```
[[nodiscard]] inline fit_result goodness_of_fit(std::span<const double> law, std::span<const std::uint64_t> counts,
                                                const fit_options& o = {}) {
  if (!(o.significance > 0.0 && o.significance < 1.0))
    throw invalid_argument("fit_options.significance must be in (0, 1), got " + std::to_string(o.significance));
  if (!(o.min_expected > 0.0))
    throw invalid_argument("fit_options.min_expected must be > 0, got " + std::to_string(o.min_expected));
  if (law.size() != counts.size())
    throw invalid_argument("goodness_of_fit: a law of " + std::to_string(law.size()) + " bins and " +
                           std::to_string(counts.size()) + " counts; expected one count per bin");
  double mass = 0.0;
  for (double p : law) {
    if (!(p >= 0.0) || !std::isfinite(p))
      throw invalid_argument("goodness_of_fit: a probability is negative or not finite");
    mass += p;
  }
  if (std::abs(mass - 1.0) > 1e-6)
    throw invalid_argument("goodness_of_fit: the law sums to " + std::to_string(mass) + "; expected 1");
  fit_result f;
  f.significance = o.significance;
  f.samples = std::accumulate(counts.begin(), counts.end(), std::uint64_t{0});
  if (f.samples == 0) throw invalid_argument("goodness_of_fit: no samples");
  const double n = double(f.samples);

  double pool_e = 0.0, pool_o = 0.0, mean_tv = 0.0;
  std::size_t bins = 0;
  double small_e = std::numeric_limits<double>::infinity(), small_o = 0.0;  // the smallest unpooled bin
  for (std::size_t i = 0; i < law.size(); ++i) {
    const double p = law[i], c = double(counts[i]);
    f.tv += 0.5 * std::abs(c / n - p);
    if (p == 0.0) {
      f.out_of_support += counts[i];
      continue;
    }
    mean_tv += 0.5 * std::sqrt(p * (1.0 - p) / n);
    const double e = p * n;
    if (e < o.min_expected) {
      pool_e += e;
      pool_o += c;
      continue;
    }
    f.chi2 += (c - e) * (c - e) / e;
    ++bins;
    if (e < small_e) small_e = e, small_o = c;
  }
  if (pool_e > 0.0) {
    if (pool_e >= o.min_expected || bins == 0) {
      f.chi2 += (pool_o - pool_e) * (pool_o - pool_e) / pool_e;
      ++bins;
    } else {  // too small to stand alone: merge the pool into the smallest bin
      f.chi2 -= (small_o - small_e) * (small_o - small_e) / small_e;
      const double e = small_e + pool_e, c = small_o + pool_o;
      f.chi2 += (c - e) * (c - e) / e;
    }
  }
  f.df = bins > 0 ? bins - 1 : 0;
  if (f.df > 0) {
    f.critical = chi_square_critical(double(f.df), o.significance);
    f.p_value = chi_square_upper_tail(f.chi2, double(f.df));
  } else {
    f.critical = std::numeric_limits<double>::infinity();
  }
  f.tv_bound = mean_tv + std::sqrt(std::log(1.0 / o.significance) / (2.0 * n));
  return f;
}

/// The verdict on a sample of sequences: the fit of the joint law of all `length` tokens,
/// of the law of each token, and of the joint law of each two adjacent tokens (a bug
/// that reads the wrong position's distribution shows in the pairs first). It passes
/// only if all of them pass, so a correct sampler fails with probability at most
/// 2 (2 length) significance (union bound over the chi-square and TV checks of the
/// 2 length laws).
///
/// ```cpp
/// specdec::testing::exactness_report r = specdec::testing::check_exactness(law, counts);
/// std::cout << r.describe();
/// ```
struct exactness_report {
  fit_result joint;
  std::vector<fit_result> positions;  ///< positions[j]: the law of token j
  std::vector<fit_result> pairs;      ///< pairs[j]: the joint law of tokens j and j + 1

  [[nodiscard]] bool passed() const {
    const auto ok = [](const fit_result& f) { return f.passed(); };
    return joint.passed() && std::all_of(positions.begin(), positions.end(), ok) &&
           std::all_of(pairs.begin(), pairs.end(), ok);
  }
  /// Samples outside the support (of the joint law: each sample counts once).
  [[nodiscard]] std::uint64_t out_of_support() const noexcept { return joint.out_of_support; }
  /// The smallest chi-square p-value of all the laws checked.
  [[nodiscard]] double min_p_value() const {
    double m = joint.p_value;
    for (const auto& f : positions) m = std::min(m, f.p_value);
    for (const auto& f : pairs) m = std::min(m, f.p_value);
    return m;
  }
  [[nodiscard]] std::string describe() const {
    std::string s = std::string(passed() ? "exact" : "NOT exact") + "\n  joint: " + joint.describe();
    for (std::size_t j = 0; j < positions.size(); ++j)
      s += "\n  token " + std::to_string(j) + ": " + positions[j].describe();
    for (std::size_t j = 0; j < pairs.size(); ++j)
      s += "\n  tokens " + std::to_string(j) + ", " + std::to_string(j + 1) + ": " + pairs[j].describe();
    return s;
  }
};

/// `exactness_report` of `counts` against `law` (same vocabulary and length).
[[nodiscard]] inline exactness_report check_exactness(const sequence_law& law, const sequence_counts& counts,
                                                      const fit_options& o = {}) {
  if (law.vocab != counts.vocab || law.length != counts.length || law.joint.size() != counts.joint.size())
    throw invalid_argument("check_exactness: a law over " + std::to_string(law.vocab) + "^" +
                           std::to_string(law.length) + " sequences and counts over " + std::to_string(counts.vocab) +
                           "^" + std::to_string(counts.length) + " (" + std::to_string(counts.joint.size()) +
                           " bins); expected the same shape");
  exactness_report r;
  r.joint = goodness_of_fit(law.joint, counts.joint, o);
  for (std::size_t j = 0; j < law.length; ++j)
    r.positions.push_back(goodness_of_fit(law.window(j, 1), counts.window(j, 1), o));
  for (std::size_t j = 0; j + 1 < law.length; ++j)
    r.pairs.push_back(goodness_of_fit(law.window(j, 2), counts.window(j, 2), o));
  return r;
}

namespace detail::exactness_impl {

/// The fraction of `trials` multinomial samples of `runs` draws from `actual` that
/// `rejects(counts)` rejects.
template <class Rejects>
double rejection_rate(std::span<const double> actual, std::size_t runs, std::size_t trials, std::uint64_t seed,
                      Rejects&& rejects) {
  if (trials == 0 || runs == 0) throw invalid_argument("rejection_rate: runs and trials must be >= 1");
  std::mt19937_64 g(seed);
  std::vector<std::uint64_t> counts(actual.size(), 0);
  std::size_t rejected = 0;
  for (std::size_t t = 0; t < trials; ++t) {
    // A multinomial sample as a chain of binomials: bin i takes Binomial(left, p_i / mass left).
    std::uint64_t left = runs;
    double mass = 1.0;
    for (std::size_t i = 0; i < actual.size(); ++i) {
      std::uint64_t c = 0;
      if (left > 0 && actual[i] > 0.0)
        c = std::binomial_distribution<std::uint64_t>(left, std::min(1.0, actual[i] / std::max(mass, actual[i])))(g);
      counts[i] = c;
      left -= c;
      mass -= actual[i];
    }
    for (std::size_t i = actual.size(); left > 0 && i-- > 0;)  // rounding left some over: the last bin with mass
      if (actual[i] > 0.0) counts[i] += std::exchange(left, 0);
    rejected += rejects(std::span<const std::uint64_t>(counts)) ? 1 : 0;
  }
  return double(rejected) / double(trials);
}

}  // namespace detail::exactness_impl

/// The fraction of `trials` simulated samples of `runs` draws from `actual` (a law over
/// the same bins as `law`) that `goodness_of_fit` against `law` rejects: the power of
/// the check against `actual`, or its false-alarm rate when actual == law.
///
/// ```cpp
/// double power = specdec::testing::rejection_rate(std::vector<double>{0.5, 0.5}, std::vector<double>{0.6, 0.4}, 1000, 200);
/// ```
[[nodiscard]] inline double rejection_rate(std::span<const double> law, std::span<const double> actual,
                                           std::size_t runs, std::size_t trials, const fit_options& o = {},
                                           std::uint64_t seed = 1) {
  if (actual.size() != law.size())
    throw invalid_argument("rejection_rate: actual has " + std::to_string(actual.size()) + " bins; expected " +
                           std::to_string(law.size()));
  return detail::exactness_impl::rejection_rate(actual, runs, trials, seed, [&](std::span<const std::uint64_t> c) {
    return !goodness_of_fit(law, c, o).passed();
  });
}

/// The same for samples of sequences: the fraction of simulated samples of `runs`
/// sequences drawn from `actual` (a joint law shaped like `law.joint`) that
/// `check_exactness` against `law` rejects.
///
/// ```cpp
/// double power = specdec::testing::rejection_rate(law, specdec::testing::biased_law(law.joint, draft_law.joint, 0.02),
///                                                 40000, 200);
/// ```
[[nodiscard]] inline double rejection_rate(const sequence_law& law, std::span<const double> actual, std::size_t runs,
                                           std::size_t trials, const fit_options& o = {}, std::uint64_t seed = 1) {
  if (actual.size() != law.joint.size())
    throw invalid_argument("rejection_rate: actual has " + std::to_string(actual.size()) + " bins; expected " +
                           std::to_string(law.joint.size()));
  sequence_counts counts{law.vocab, law.length, {}};
  return detail::exactness_impl::rejection_rate(actual, runs, trials, seed, [&](std::span<const std::uint64_t> c) {
    counts.joint.assign(c.begin(), c.end());
    return !check_exactness(law, counts, o).passed();
  });
}

// ---------------------------------------------------------------------------------------
// A battery of cases for any verifier

/// One exactness case: an analytic draft/target pair, the sampling params, the prompt,
/// how many tokens each generation emits and how many seeded generations to sample.
///
/// ```cpp
/// specdec::testing::exactness_case c{.name = "mine", .target = {.vocab = 4, .seed = 3},
///                                    .draft = {.vocab = 4, .seed = 3, .noise_seed = 9, .noise = 0.3f},
///                                    .params = {.temperature = 1.0f}, .prompt = {1}, .length = 6, .runs = 40000};
/// ```
struct exactness_case {
  std::string name;
  markov_options target;
  markov_options draft;
  sampling_params params;
  std::vector<token_id> prompt;
  std::size_t length = 6;    ///< tokens per generation (with max_new_tokens = length, stop_at_eos = false)
  std::size_t runs = 40000;  ///< seeded generations, seeds 0 .. runs - 1
};

/// The standard battery: order-1 and order-2 Markov pairs over 4 tokens whose draft is
/// close to the target (per-token acceptance 0.75-0.85 with rejection sampling), generating 6
/// tokens, so a verifier drafting 5 at a time proposes and verifies draft positions 0-4
/// in its first step and adds the bonus: temperature 1; 0.7 with top-k 3; 1.3 with
/// top-p 0.8; 1 with top-k 3 and top-p 0.9. Every top-k/top-p cut along every path is
/// clear of float rounding (checked by `processed_distribution`).
///
/// ```cpp
/// for (const auto& c : specdec::testing::standard_exactness_cases()) std::cout << c.name << '\n';
/// ```
[[nodiscard]] inline std::vector<exactness_case> standard_exactness_cases(std::size_t runs = 40000) {
  const auto pair = [&](std::string name, int order, std::uint64_t seed, sampling_params params) {
    return exactness_case{std::move(name),
                          {.vocab = 4, .order = order, .seed = seed},
                          {.vocab = 4, .order = order, .seed = seed, .noise_seed = seed + 100, .noise = 0.35f},
                          params,
                          {1},
                          6,
                          runs};
  };
  return {pair("T1", 1, 21, {.temperature = 1.0f}),
          pair("T0.7_top_k3", 2, 8, {.temperature = 0.7f, .top_k = 3}),
          pair("T1.3_top_p0.8", 1, 5, {.temperature = 1.3f, .top_p = 0.8f}),
          pair("T1_top_k3_top_p0.9", 2, 13, {.temperature = 1.0f, .top_k = 3, .top_p = 0.9f})};
}

/// Runs one case: builds the case's draft and target `markov_model`s, asks
/// `make(draft, target, params)` for a generator (a callable seed -> tokens, e.g. a
/// lambda over a decoder built on the two models; the models outlive it), samples
/// `c.runs` seeds and returns the verdict against the target's exact law.
///
/// ```cpp
/// auto report = specdec::testing::check_case(c, [](auto& draft, auto& target, const specdec::sampling_params& p) {
///   return [&](std::uint64_t seed) { return my_tree_decode(draft, target, p, seed, 6); };
/// });
/// ```
template <class MakeGenerator>
[[nodiscard]] exactness_report check_case(const exactness_case& c, MakeGenerator&& make, const fit_options& o = {}) {
  markov_model target(c.target), draft(c.draft);
  const sequence_law law = exact_sequence_law(target, c.prompt, c.length, c.params);
  auto generate = make(draft, target, c.params);
  return check_exactness(law, sample_sequences(generate, c.runs, target.vocab_size(), c.length), o);
}

}  // namespace specdec::testing
