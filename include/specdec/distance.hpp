#pragma once
/// \file distance.hpp
/// Distances between the draft's and the target's next-token distributions, as used by
/// BiLD's rollback policy (arXiv 2302.07863): a drafted token is rolled back when the
/// distance between the small model's distribution p_S and the large model's p_L at its
/// position exceeds a threshold.
///
/// Every metric is a small stateless struct called as `d(p_S, p_L, y)`, where `p_S` is the
/// draft (small) distribution, `p_L` the target (large) distribution, both spans over the
/// full vocabulary owned by the caller, and `y` the drafted token. The spans are viewed
/// through xtensor adaptors (no copy); the per-entry terms are lazy xtensor expressions,
/// reduced in one pass by `detail::sum_double` (fixed order, double accumulation).
///
/// Inputs are assumed to be probability distributions (non-negative, summing to 1); that is
/// not re-checked, as it would double the cost of a call. Zeros are safe: a term with p = 0
/// contributes nothing to KL(p || q), and q = 0 where p > 0 is floored at
/// `detail::probability_floor`, so the result is large but finite, never inf or NaN.
#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <xtensor/xadapt.hpp>
#include <xtensor/xmath.hpp>
#include <xtensor/xoperation.hpp>

#include "specdec/error.hpp"
#include "specdec/fwd.hpp"

namespace specdec {

/// `d(p_draft, p_target, drafted)` on a const metric gives a value convertible to float.
///
/// ```cpp
/// struct max_abs_diff {
///   float operator()(std::span<const float> p, std::span<const float> q, specdec::token_id) const;
/// };
/// static_assert(specdec::callable_distance<max_abs_diff>);
/// ```
template <class D>
concept callable_distance = requires(const D& d, std::span<const float> p_draft,
                                     std::span<const float> p_target, token_id drafted) {
  { d(p_draft, p_target, drafted) } -> std::convertible_to<float>;
};

/// `D::name` is the short name a metric is selected by on the command line.
///
/// ```cpp
/// struct my_metric { static constexpr std::string_view name = "mine"; };
/// static_assert(specdec::named_distance<my_metric>);
/// ```
template <class D>
concept named_distance = requires {
  { D::name } -> std::convertible_to<std::string_view>;
};

/// A distance between the draft's distribution p_S and the target's p_L at the position of
/// a drafted token y: the metric BiLD's rollback policy compares against its threshold.
///
/// ```cpp
/// template <specdec::distance_metric D>
/// bool roll_back(const D& d, std::span<const float> p_s, std::span<const float> p_l,
///                specdec::token_id y, float threshold) {
///   return d(p_s, p_l, y) > threshold;
/// }
/// roll_back(specdec::kl_target_draft{}, q_row, p_row, drafted, 0.5f);
/// ```
template <class D>
concept distance_metric = callable_distance<D> && named_distance<D>;

namespace detail {

/// Smallest probability a metric takes the logarithm of: a zero (or denormal) probability
/// where one is needed is replaced by this, so -log of it is ~69.08, not inf.
inline constexpr float probability_floor = 1e-30f;

/// Throws `invalid_argument` naming the metric unless both distributions have the same
/// size and `drafted` indexes them.
inline void check_distance_inputs(std::string_view metric, std::span<const float> p_draft,
                                  std::span<const float> p_target, token_id drafted) {
  if (p_draft.size() != p_target.size()) {
    throw invalid_argument("distance metric '" + std::string(metric) +
                           "': draft distribution has " + std::to_string(p_draft.size()) +
                           " entries but target distribution has " +
                           std::to_string(p_target.size()) +
                           "; expected both over the same vocabulary");
  }
  if (drafted < 0 || static_cast<std::size_t>(drafted) >= p_target.size()) {
    throw invalid_argument("distance metric '" + std::string(metric) + "': drafted token id " +
                           std::to_string(drafted) +
                           " is out of range; expected 0 <= id < vocab size " +
                           std::to_string(p_target.size()));
  }
}

/// A zero-copy, rank-1 xtensor view of a caller-owned distribution.
inline auto adapt_distribution(std::span<const float> p) {
  return xt::adapt(p.data(), p.size(), xt::no_ownership(), std::array<std::size_t, 1>{p.size()});
}

/// Sum of a rank-1 xtensor expression of `n` elements, accumulated in double in a fixed
/// order: lane j of 16 sums elements j, j + 16, ..., then the lanes and the tail are added
/// in order. Independent lanes let the compiler vectorise the loop without reassociating
/// (no -ffast-math needed), and the result does not depend on how the caller batches.
/// (xtensor's own `xt::sum` reducer walks a stepper per element and does not vectorise
/// without xsimd; see bench/bench_distance.cpp.)
template <class E>
double sum_double(const E& e, std::size_t n) {
  constexpr std::size_t lanes = 16;
  double acc[lanes] = {};
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes)
    for (std::size_t j = 0; j < lanes; ++j) acc[j] += static_cast<double>(e(i + j));
  double total = 0.0;
  for (const double a : acc) total += a;
  for (; i < n; ++i) total += static_cast<double>(e(i));
  return total;
}

/// p with 0 replaced by 1, so that p * log(p / q) is 0 for p = 0 (the term is multiplied by
/// p = 0 afterwards). The lazy result refers to `p`, so `p` must be an lvalue that outlives
/// it; temporaries are rejected.
template <class E>
auto nonzero_or_one(const E& p) {
  return xt::where(p > 0.0f, p, 1.0f);
}
template <class E>
auto nonzero_or_one(const E&& p) = delete;

/// q floored at `probability_floor`. A temporary expression is moved into the result; an
/// lvalue is referred to.
template <class E>
auto floored(E&& q) {
  return xt::maximum(std::forward<E>(q), probability_floor);
}

/// p log(p / q) per entry: 0 where p = 0, finite where q = 0 (floored). One log per entry;
/// p / max(q, 1e-30) <= 1e30 cannot overflow for p <= 1, and p == q gives exactly log 1 = 0.
template <class P, class Q>
auto kl_terms(const P& p, Q&& q) {
  return p * xt::log(nonzero_or_one(p) / floored(std::forward<Q>(q)));
}

/// KL(p || q) in nats; exactly 0 when p == q elementwise, clamped at 0 against rounding.
inline float kl_divergence(std::span<const float> p_span, std::span<const float> q_span) {
  const auto p = adapt_distribution(p_span);
  const auto q = adapt_distribution(q_span);
  const double kl = sum_double(kl_terms(p, q), p_span.size());
  return static_cast<float>(std::max(0.0, kl));
}

}  // namespace detail

/// Cross-entropy of the drafted token under the target: -log p_L(y). BiLD's default
/// rollback metric (their code scores the drafted token by the large model's cross-entropy).
/// Not a divergence: it is nonzero even when p_S == p_L. p_L(y) is floored at 1e-30, so the
/// value is at most ~69.08.
///
/// ```cpp
/// std::vector<float> p_s{0.5f, 0.5f}, p_l{0.25f, 0.75f};
/// float ce = specdec::drafted_cross_entropy{}(p_s, p_l, 0);  // -log 0.25 = 1.386
/// ```
struct drafted_cross_entropy {
  static constexpr std::string_view name = "ce";

  [[nodiscard]] float operator()(std::span<const float> p_draft, std::span<const float> p_target,
                                 token_id drafted) const {
    detail::check_distance_inputs(name, p_draft, p_target, drafted);
    const float py = p_target[static_cast<std::size_t>(drafted)];
    // `!(py > floor)` also maps NaN to the floor.
    const float safe = !(py > detail::probability_floor) ? detail::probability_floor : py;
    return std::max(0.0f, -std::log(safe));
  }
};

/// KL(p_L || p_S) = sum_i p_L(i) log(p_L(i) / p_S(i)), in nats: how badly the draft covers
/// what the target would say.
///
/// ```cpp
/// std::vector<float> p_s{0.5f, 0.5f}, p_l{0.25f, 0.75f};
/// float kl = specdec::kl_target_draft{}(p_s, p_l, 0);  // 0.25 ln 0.5 + 0.75 ln 1.5 = 0.1308
/// ```
struct kl_target_draft {
  static constexpr std::string_view name = "kl";

  [[nodiscard]] float operator()(std::span<const float> p_draft, std::span<const float> p_target,
                                 token_id drafted) const {
    detail::check_distance_inputs(name, p_draft, p_target, drafted);
    return detail::kl_divergence(p_target, p_draft);
  }
};

/// KL(p_S || p_L) = sum_i p_S(i) log(p_S(i) / p_L(i)), in nats: the reverse KL, how much
/// draft mass the target thinks unlikely.
///
/// ```cpp
/// std::vector<float> p_s{0.5f, 0.5f}, p_l{0.25f, 0.75f};
/// float kl = specdec::kl_draft_target{}(p_s, p_l, 0);  // 0.5 ln 2 + 0.5 ln(2/3) = 0.1438
/// ```
struct kl_draft_target {
  static constexpr std::string_view name = "kl_rev";

  [[nodiscard]] float operator()(std::span<const float> p_draft, std::span<const float> p_target,
                                 token_id drafted) const {
    detail::check_distance_inputs(name, p_draft, p_target, drafted);
    return detail::kl_divergence(p_draft, p_target);
  }
};

/// Jensen-Shannon divergence, in nats: 0.5 KL(p_S || m) + 0.5 KL(p_L || m) with
/// m = (p_S + p_L) / 2. Symmetric, in [0, ln 2]. Since m >= p / 2 the probability floor
/// only matters where p / 2 underflows (denormals).
///
/// ```cpp
/// std::vector<float> p_s{1.0f, 0.0f}, p_l{0.0f, 1.0f};
/// float js = specdec::jensen_shannon{}(p_s, p_l, 0);  // disjoint supports: ln 2 = 0.6931
/// ```
struct jensen_shannon {
  static constexpr std::string_view name = "js";

  [[nodiscard]] float operator()(std::span<const float> p_draft, std::span<const float> p_target,
                                 token_id drafted) const {
    detail::check_distance_inputs(name, p_draft, p_target, drafted);
    const auto p = detail::adapt_distribution(p_draft);
    const auto q = detail::adapt_distribution(p_target);
    const auto m = 0.5f * (p + q);
    // One pass: p log(p / m) + q log(q / m) per entry; m >= p / 2, so p / m <= 2.
    const double twice_js =
        detail::sum_double(detail::kl_terms(p, m) + detail::kl_terms(q, m), p_draft.size());
    return static_cast<float>(std::max(0.0, 0.5 * twice_js));
  }
};

/// Total variation distance 0.5 sum_i |p_S(i) - p_L(i)|. Symmetric, in [0, 1]; it is the
/// probability that speculative sampling's rejection step rejects the drafted token on
/// average over draws from p_S.
///
/// ```cpp
/// std::vector<float> p_s{0.5f, 0.5f}, p_l{0.25f, 0.75f};
/// float tv = specdec::total_variation{}(p_s, p_l, 0);  // 0.5 (0.25 + 0.25) = 0.25
/// ```
struct total_variation {
  static constexpr std::string_view name = "tv";

  [[nodiscard]] float operator()(std::span<const float> p_draft, std::span<const float> p_target,
                                 token_id drafted) const {
    detail::check_distance_inputs(name, p_draft, p_target, drafted);
    const auto p = detail::adapt_distribution(p_draft);
    const auto q = detail::adapt_distribution(p_target);
    return static_cast<float>(0.5 * detail::sum_double(xt::abs(p - q), p_draft.size()));
  }
};

/// Hellinger distance sqrt(0.5 sum_i (sqrt p_S(i) - sqrt p_L(i))^2). Symmetric, in [0, 1].
///
/// ```cpp
/// std::vector<float> p_s{1.0f, 0.0f}, p_l{0.0f, 1.0f};
/// float h = specdec::hellinger{}(p_s, p_l, 0);  // sqrt(0.5 (1 + 1)) = 1
/// ```
struct hellinger {
  static constexpr std::string_view name = "hellinger";

  [[nodiscard]] float operator()(std::span<const float> p_draft, std::span<const float> p_target,
                                 token_id drafted) const {
    detail::check_distance_inputs(name, p_draft, p_target, drafted);
    const auto p = detail::adapt_distribution(p_draft);
    const auto q = detail::adapt_distribution(p_target);
    const double s = detail::sum_double(xt::square(xt::sqrt(p) - xt::sqrt(q)), p_draft.size());
    return static_cast<float>(std::sqrt(std::max(0.0, 0.5 * s)));
  }
};

/// A compile-time list of metric types.
template <class... Ms>
struct distance_metric_list {};

/// Every metric specdec ships, in the order `distance_metric_names()` lists them.
using all_distance_metrics = distance_metric_list<drafted_cross_entropy, kl_target_draft,
                                                  kl_draft_target, jensen_shannon,
                                                  total_variation, hellinger>;

namespace detail {

template <class... Ms>
constexpr bool all_satisfy_distance_metric(distance_metric_list<Ms...>) {
  return (distance_metric<Ms> && ...);
}

template <class... Ms>
constexpr bool names_are_unique(distance_metric_list<Ms...>) {
  const std::array<std::string_view, sizeof...(Ms)> names{Ms::name...};
  for (std::size_t i = 0; i < names.size(); ++i)
    for (std::size_t j = i + 1; j < names.size(); ++j)
      if (names[i] == names[j]) return false;
  return true;
}

static_assert(all_satisfy_distance_metric(all_distance_metrics{}));
static_assert(names_are_unique(all_distance_metrics{}), "distance metric names must be unique");

template <class... Ms>
std::vector<std::string_view> metric_names(distance_metric_list<Ms...>) {
  return {Ms::name...};
}

[[noreturn]] inline void throw_unknown_metric(std::string_view name) {
  std::string valid;
  for (std::string_view n : metric_names(all_distance_metrics{})) {
    if (!valid.empty()) valid += ", ";
    valid += n;
  }
  throw invalid_argument("unknown distance metric '" + std::string(name) +
                         "'; expected one of: " + valid);
}

template <class F, class First, class... Rest>
decltype(auto) dispatch_metric(std::string_view name, F&& f) {
  if (name == First::name) return std::forward<F>(f)(First{});
  if constexpr (sizeof...(Rest) > 0) {
    return dispatch_metric<F, Rest...>(name, std::forward<F>(f));
  } else {
    throw_unknown_metric(name);
  }
}

}  // namespace detail

/// The names of every shipped metric, for the CLI's help text and validation.
///
/// ```cpp
/// for (std::string_view n : specdec::distance_metric_names()) std::cout << n << '\n';
/// ```
[[nodiscard]] inline std::vector<std::string_view> distance_metric_names() {
  return detail::metric_names(all_distance_metrics{});
}

/// Calls `f(metric)` with a default-constructed instance of the metric named `name` and
/// returns its result; `f` must return the same type for every metric (a generic lambda
/// usually does). Throws `invalid_argument` listing the valid names for an unknown one.
///
/// ```cpp
/// float d = specdec::with_distance_metric(args.metric, [&](auto metric) {
///   return metric(q_row, p_row, drafted);
/// });
/// ```
template <class F>
decltype(auto) with_distance_metric(std::string_view name, F&& f) {
  return [&]<class... Ms>(distance_metric_list<Ms...>) -> decltype(auto) {
    static_assert(
        (std::is_same_v<std::invoke_result_t<F, Ms>,
                        std::invoke_result_t<F, drafted_cross_entropy>> && ...),
        "with_distance_metric: f must return the same type for every distance metric");
    return detail::dispatch_metric<F, Ms...>(name, std::forward<F>(f));
  }(all_distance_metrics{});
}

}  // namespace specdec
