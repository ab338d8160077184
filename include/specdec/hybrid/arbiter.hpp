#pragma once
/// \file arbiter.hpp
/// The device/cloud router of hybrid inference. An arbiter looks at what is known about
/// a request (`request_features`, see predictor.hpp), at an estimate of the link and at
/// the budget, and returns a `route`: answer on the device, in the cloud, speculatively
/// (draft on the device, verify in the cloud) or with a cloud-written prefix that the
/// device completes (as in GKT).
///
/// Budgets (`budget::max_cloud_fraction`) are honoured by calibration: every calibratable
/// arbiter computes a scalar "cloud score" per request and `calibrated(sample, link, b)`
/// returns a copy whose threshold sends at most that fraction of the sample to the cloud
/// (`calibrate_threshold`, calibration.hpp). On fresh requests from the same distribution the fraction is
/// then the target up to sampling error. `budget_guard` enforces the fraction exactly, on
/// every prefix of a request stream, by demoting cloud routes to the device.
///
/// Every decision is a deterministic function of the arbiter's knobs (including its seed),
/// the features, the link estimate and the budget.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/calibration.hpp"
#include "specdec/hybrid/link.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/hybrid/run_ahead.hpp"
#include "specdec/hybrid/training.hpp"

namespace specdec::hybrid {

/// Where a request (or the rest of it) is generated.
///
/// ```cpp
/// if (r.kind == specdec::hybrid::route_kind::speculative) draft_then_verify(r.gamma);
/// ```
enum class route_kind {
  device,        ///< the device model answers alone
  cloud,         ///< the cloud model answers alone
  speculative,   ///< the device drafts `gamma` tokens per round, the cloud verifies
  cloud_prefix,  ///< the cloud writes `prefix_tokens` tokens, then the device completes
};

/// Name of a route kind ("device", "cloud", "speculative", "cloud_prefix").
///
/// ```cpp
/// std::string_view n = specdec::hybrid::to_string(r.kind);  // e.g. "speculative"
/// ```
[[nodiscard]] constexpr std::string_view to_string(route_kind k) noexcept {
  switch (k) {
    case route_kind::device: return "device";
    case route_kind::cloud: return "cloud";
    case route_kind::speculative: return "speculative";
    case route_kind::cloud_prefix: return "cloud_prefix";
  }
  return "?";
}

/// An arbiter's decision.
///
/// ```cpp
/// using specdec::hybrid::route;
/// route a = route::on_device();
/// route b = route::speculative(4);     // draft 4 tokens per round on the device
/// route c = route::cloud_prefix(16);   // the cloud writes 16 tokens, the device the rest
/// bool remote = b.uses_cloud();        // true
/// ```
struct route {
  route_kind kind = route_kind::device;
  std::size_t gamma = 0;          ///< draft length per round (speculative only)
  std::size_t prefix_tokens = 0;  ///< cloud-written tokens (cloud_prefix only)

  [[nodiscard]] static constexpr route on_device() noexcept { return {route_kind::device, 0, 0}; }
  [[nodiscard]] static constexpr route in_cloud() noexcept { return {route_kind::cloud, 0, 0}; }
  [[nodiscard]] static constexpr route speculative(std::size_t gamma) noexcept {
    return {route_kind::speculative, gamma, 0};
  }
  [[nodiscard]] static constexpr route cloud_prefix(std::size_t k) noexcept {
    return {route_kind::cloud_prefix, 0, k};
  }
  /// Whether the route needs the cloud at all (everything but `device`).
  [[nodiscard]] constexpr bool uses_cloud() const noexcept { return kind != route_kind::device; }
  friend constexpr bool operator==(const route&, const route&) = default;
};

/// What an arbiter believes about the link: RTT and bandwidths.
///
/// ```cpp
/// auto est = specdec::hybrid::link_estimate::of(specdec::hybrid::link_config::lte());
/// // est.rtt_seconds == 0.06, est.up_bps == 20e6, est.down_bps == 50e6
/// ```
struct link_estimate {
  double rtt_seconds = 0.015;
  double up_bps = 100e6;
  double down_bps = 100e6;

  /// The nominal estimate of a simulated link: its (median) RTT, or for a
  /// Gilbert-Elliott channel the stationary mix of the two states' RTTs.
  [[nodiscard]] static link_estimate of(const link_config& c) {
    double rtt = c.rtt_seconds;
    if (c.channel) {
      const double pb = c.channel->stationary_bad_fraction();
      rtt = (1.0 - pb) * c.channel->good_rtt_seconds + pb * c.channel->bad_rtt_seconds;
    }
    return {rtt, c.up_bps, c.down_bps};
  }
  void validate() const {
    detail::check_non_negative("link_estimate.rtt_seconds", rtt_seconds);
    detail::check_positive("link_estimate.up_bps", up_bps);
    detail::check_positive("link_estimate.down_bps", down_bps);
  }
};

/// Limits on cloud use. `max_cloud_fraction` caps the share of requests routed to the
/// cloud (honoured by calibration or by `budget_guard`). A cloud forward pass costs
/// `cost_per_cloud_token` units of money, which latency-based arbiters turn into seconds
/// with the exchange rate `lambda` (seconds per unit of money).
///
/// ```cpp
/// specdec::hybrid::budget b{.max_cloud_fraction = 0.3, .cost_per_cloud_token = 1e-4, .lambda = 10.0};
/// b.validate();
/// ```
struct budget {
  double max_cloud_fraction = 1.0;   ///< in [0, 1]
  double cost_per_cloud_token = 0.0;  ///< >= 0, money per cloud forward pass
  double lambda = 1.0;               ///< >= 0, seconds per unit of money

  void validate() const {
    detail::check_range("budget.max_cloud_fraction", max_cloud_fraction, 0.0, 1.0, "in [0, 1]");
    detail::check_non_negative("budget.cost_per_cloud_token", cost_per_cloud_token);
    detail::check_non_negative("budget.lambda", lambda);
  }
};

/// Per-token compute times of the two sides (already scaled to the simulated hardware,
/// e.g. with `compute_model`), and the time a cloud request waits before its prefill
/// starts (admission queueing under load).
///
/// ```cpp
/// specdec::hybrid::cost_model c{.t_device_per_token = 0.02, .t_cloud_per_token = 0.01,
///                               .cloud_prefill_seconds_per_token = 1e-4};
/// ```
struct cost_model {
  double t_device_per_token = 0.02;               ///< one device decode step, seconds
  double t_cloud_per_token = 0.01;                ///< one cloud forward (decode or verify), seconds
  double cloud_prefill_seconds_per_token = 1e-4;  ///< cloud prefill per prompt token, seconds
  double cloud_queue_seconds = 0.0;               ///< wait before a cloud request is served, seconds

  void validate() const {
    detail::check_non_negative("cost_model.t_device_per_token", t_device_per_token);
    detail::check_non_negative("cost_model.t_cloud_per_token", t_cloud_per_token);
    detail::check_non_negative("cost_model.cloud_prefill_seconds_per_token", cloud_prefill_seconds_per_token);
    detail::check_non_negative("cost_model.cloud_queue_seconds", cloud_queue_seconds);
  }
};

/// What one tier of a device-centric deployment offers a user: a decode rate and the time
/// from request to first token (network, queueing, prefill). The named profiles are the
/// tiers hybrid AI is designed around: a phone-class device running a model of a few
/// billion parameters, an edge server with tens of billions, a loaded cloud with hundreds.
///
/// ```cpp
/// auto dev = specdec::hybrid::tier_profile::device();  // 30 tok/s, 30 ms to first token
/// auto cloud = specdec::hybrid::tier_profile::cloud(); // 60 tok/s, 1 s to first token
/// ```
struct tier_profile {
  double tokens_per_second = 30.0;   ///< > 0, decode rate per user
  double first_token_seconds = 0.03;  ///< >= 0, request to first token

  [[nodiscard]] static constexpr tier_profile device() noexcept { return {30.0, 0.03}; }
  [[nodiscard]] static constexpr tier_profile edge() noexcept { return {50.0, 0.3}; }
  [[nodiscard]] static constexpr tier_profile cloud() noexcept { return {60.0, 1.0}; }
  void validate() const {
    detail::check_positive("tier_profile.tokens_per_second", tokens_per_second);
    detail::check_non_negative("tier_profile.first_token_seconds", first_token_seconds);
  }
};

/// What a per-segment arbiter sees in the middle of a generation.
///
/// ```cpp
/// specdec::hybrid::segment_state s{.tokens_so_far = 48, .recent_max_prob_mean = 0.31f,
///                                  .recent_mean_entropy = 2.4f, .current = route::on_device()};
/// ```
struct segment_state {
  std::size_t tokens_so_far = 0;
  float recent_max_prob_mean = 1.0f;  ///< draft confidence over the last segment
  float recent_mean_entropy = 0.0f;   ///< draft entropy (nats) over the last segment
  route current = route::on_device();
};

// ---------------------------------------------------------------------------------------
// Concepts

/// `a.decide(features, link, budget)` returns a `route`.
///
/// ```cpp
/// struct always_device {
///   specdec::hybrid::route decide(const specdec::hybrid::request_features&,
///                                 const specdec::hybrid::link_estimate&,
///                                 const specdec::hybrid::budget&) const { return {}; }
/// };
/// static_assert(specdec::hybrid::has_decide<always_device>);
/// ```
template <class A>
concept has_decide = requires(A& a, const request_features& f, const link_estimate& l, const budget& b) {
  { a.decide(f, l, b) } -> std::same_as<route>;
};

/// A router: decides per request and validates its knobs.
///
/// ```cpp
/// template <specdec::hybrid::arbiter A>
/// double cloud_share(A& a, const std::vector<specdec::hybrid::request_features>& reqs,
///                    const specdec::hybrid::link_estimate& l, const specdec::hybrid::budget& b) {
///   double n = 0;
///   for (const auto& f : reqs) n += a.decide(f, l, b).uses_cloud();
///   return n / reqs.size();
/// }
/// ```
template <class A>
concept arbiter = has_decide<A> && validatable<A>;

/// `a.on_segment(state)` re-routes the rest of a generation.
///
/// ```cpp
/// static_assert(specdec::hybrid::has_on_segment<specdec::hybrid::confidence_arbiter>);
/// ```
template <class A>
concept has_on_segment = requires(A& a, const segment_state& s) {
  { a.on_segment(s) } -> std::same_as<route>;
};

/// An arbiter that may also re-route mid-generation, once per segment.
///
/// ```cpp
/// template <specdec::hybrid::segment_arbiter A>
/// bool hand_over(A& a, const specdec::hybrid::segment_state& s) { return a.on_segment(s).uses_cloud(); }
/// ```
template <class A>
concept segment_arbiter = arbiter<A> && has_on_segment<A>;

/// `a.calibrated(sample, link, budget)` returns a copy of `a` whose threshold sends at
/// most `budget.max_cloud_fraction` of `sample` to the cloud.
///
/// ```cpp
/// auto tuned = arb.calibrated(calibration_sample, link, specdec::hybrid::budget{.max_cloud_fraction = 0.2});
/// ```
template <class A>
concept has_calibration =
    requires(const A& a, std::span<const request_features> s, const link_estimate& l, const budget& b) {
      { a.calibrated(s, l, b) } -> std::same_as<A>;
    };

/// An arbiter whose cloud share can be calibrated to a budget.
///
/// ```cpp
/// template <specdec::hybrid::calibratable_arbiter A>
/// A fit_budget(const A& a, std::span<const specdec::hybrid::request_features> s,
///              const specdec::hybrid::link_estimate& l, double frac) {
///   return a.calibrated(s, l, {.max_cloud_fraction = frac});
/// }
/// ```
template <class A>
concept calibratable_arbiter = arbiter<A> && has_calibration<A>;

namespace detail {

/// splitmix64 finaliser.
[[nodiscard]] constexpr std::uint64_t mix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
template <class T>
[[nodiscard]] std::uint64_t bits_of(T v) noexcept {
  if constexpr (sizeof(T) == 4) {
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    return u;
  } else {
    std::uint64_t u;
    std::memcpy(&u, &v, 8);
    return u;
  }
}
/// A hash of every field of the features, mixed with a seed.
[[nodiscard]] inline std::uint64_t hash_features(const request_features& f, std::uint64_t seed) noexcept {
  std::uint64_t h = mix64(seed ^ 0x5eedULL);
  auto add = [&h](std::uint64_t v) { h = mix64(h ^ v); };
  add(f.request_id);
  add(f.prompt_tokens);
  add(bits_of(f.draft_mean_entropy));
  add(bits_of(f.draft_max_prob_mean));
  add(bits_of(f.draft_first_token_entropy));
  add(bits_of(f.predicted_length));
  add(bits_of(f.predicted_difficulty));
  for (float e : f.extra) add(bits_of(e));
  return h;
}
/// A uniform in [0, 1) determined by (seed, features).
[[nodiscard]] inline double uniform_of(const request_features& f, std::uint64_t seed) noexcept {
  return static_cast<double>(hash_features(f, seed) >> 11) * 0x1.0p-53;
}

using specdec::detail::check_not_nan;

}  // namespace detail

// ---------------------------------------------------------------------------------------
// Arbiters

/// Sends a seeded pseudo-random `cloud_fraction` of requests to the cloud (capped by
/// the budget). The coin of a request is a hash of (seed, all its features), so a
/// decision never depends on call order. A baseline.
///
/// ```cpp
/// specdec::hybrid::random_arbiter a{.cloud_fraction = 0.25, .seed = 7};
/// auto r = a.decide(features, link, budget);
/// ```
struct random_arbiter {
  double cloud_fraction = 0.5;  ///< in [0, 1]
  std::uint64_t seed = 0;

  [[nodiscard]] route decide(const request_features& f, const link_estimate&, const budget& b) const {
    const double p = std::min(cloud_fraction, b.max_cloud_fraction);
    return detail::uniform_of(f, seed) < p ? route::in_cloud() : route::on_device();
  }
  void validate() const {
    detail::check_range("random_arbiter.cloud_fraction", cloud_fraction, 0.0, 1.0, "in [0, 1]");
  }
  /// A copy with `cloud_fraction = budget.max_cloud_fraction` (the sample is not needed).
  [[nodiscard]] random_arbiter calibrated(std::span<const request_features>, const link_estimate&,
                                          const budget& b) const {
    b.validate();
    random_arbiter a = *this;
    a.cloud_fraction = b.max_cloud_fraction;
    return a;
  }
};

/// For evaluation: knows whether the device's answer to a request is good enough
/// (`device_ok`) and sends exactly the requests it is not good enough for to the cloud;
/// with `hard_cloud_fraction < 1`, only that seeded fraction of them (to meet a budget).
///
/// ```cpp
/// std::vector<int> ok = {1, 0, 1};  // by request_id
/// auto o = specdec::hybrid::oracle_arbiter::from_labels(ok);
/// auto r = o.decide(f, link, budget);  // cloud iff ok[f.request_id] == 0
/// ```
struct oracle_arbiter {
  std::function<bool(const request_features&)> device_ok;  ///< the true label
  double hard_cloud_fraction = 1.0;  ///< in [0, 1]: share of hard requests sent to the cloud
  std::uint64_t seed = 0;

  /// Labels indexed by `request_features::request_id` (non-zero = device ok).
  [[nodiscard]] static oracle_arbiter from_labels(std::vector<int> labels) {
    auto shared = std::make_shared<const std::vector<int>>(std::move(labels));
    oracle_arbiter o;
    o.device_ok = [shared](const request_features& f) {
      if (f.request_id >= shared->size())
        throw invalid_argument("oracle_arbiter: request_id " + std::to_string(f.request_id) +
                               " has no label; expected request_id < " + std::to_string(shared->size()));
      return (*shared)[f.request_id] != 0;
    };
    return o;
  }

  [[nodiscard]] route decide(const request_features& f, const link_estimate&, const budget& b) const {
    if (b.max_cloud_fraction <= 0.0 || device_ok(f)) return route::on_device();
    return detail::uniform_of(f, seed) < hard_cloud_fraction ? route::in_cloud() : route::on_device();
  }
  void validate() const {
    if (!device_ok)
      throw invalid_argument("oracle_arbiter.device_ok must be set, got an empty function; expected a labeller");
    detail::check_range("oracle_arbiter.hard_cloud_fraction", hard_cloud_fraction, 0.0, 1.0, "in [0, 1]");
  }
  /// A copy with `hard_cloud_fraction = min(1, max_cloud_fraction / hard share of sample)`.
  [[nodiscard]] oracle_arbiter calibrated(std::span<const request_features> sample, const link_estimate&,
                                          const budget& b) const {
    b.validate();
    validate();
    if (sample.empty())
      throw invalid_argument("oracle_arbiter::calibrated: empty sample; expected a non-empty calibration sample");
    std::size_t hard = 0;
    for (const auto& f : sample) hard += !device_ok(f);
    oracle_arbiter o = *this;
    const double h = static_cast<double>(hard) / static_cast<double>(sample.size());
    o.hard_cloud_fraction = h > 0.0 ? std::min(1.0, b.max_cloud_fraction / h) : 1.0;
    return o;
  }
};

/// Whether arbiter `a` reads the look-ahead summaries of `probe_trajectory` (in
/// `request_features::extra`), so that whoever probes requests for it (`session`,
/// `net_session`) must run `probe_trajectory` rather than `probe_request`:
/// `a.reads_lookahead()` where `a` has it, false otherwise.
///
/// ```cpp
/// bool trajectory = specdec::hybrid::reads_lookahead(specdec::hybrid::confidence_arbiter{});  // true
/// ```
template <class A>
[[nodiscard]] bool reads_lookahead(const A& a) {
  if constexpr (requires {
                  { a.reads_lookahead() } -> std::convertible_to<bool>;
                })
    return static_cast<bool>(a.reads_lookahead());
  else
    return false;
}

/// The device answers when the small model is confident: a request goes to the cloud if
/// the device's max-probability is below `min_max_prob` or its mean entropy above
/// `max_entropy`. By default it reads the device's confidence on its *own first tokens*
/// (the look-ahead of `probe_trajectory`; sessions run that probe for it, see
/// `reads_lookahead`): on held-out KJV requests that predicts which device answers fall
/// short, where the confidence over the prompt does no better than a coin
/// (docs/hybrid_routing.md). `read_lookahead = false` reads the prompt rows of
/// `probe_request` instead. Optionally (GKT-style), a confident request whose *first* token is
/// uncertain (`draft_first_token_entropy > max_first_token_entropy`) gets a cloud-written
/// prefix of `prefix_tokens` tokens. Mid-generation, `on_segment` hands the rest of a
/// generation to the cloud when the recent segment's confidence fails the same test.
///
/// ```cpp
/// specdec::hybrid::confidence_arbiter a{.min_max_prob = 0.4f, .max_entropy = 2.0f};
/// auto r = a.decide(features, link, budget);  // features from probe_trajectory
/// auto tuned = a.calibrated(sample, link, {.max_cloud_fraction = 0.2});  // entropy threshold
/// specdec::hybrid::confidence_arbiter on_prompt{.read_lookahead = false};  // probe_request features
/// ```
struct confidence_arbiter {
  float min_max_prob = 0.5f;  ///< >= 0; 0 switches the rule off, > 1 sends everything to the cloud
  float max_entropy = 2.0f;   ///< not NaN; +inf switches the rule off, -inf sends everything
  float max_first_token_entropy = std::numeric_limits<float>::infinity();  ///< not NaN
  std::size_t prefix_tokens = 0;  ///< 0 = never route to cloud_prefix
  /// Read the device's confidence on its own first tokens (the look-ahead rows of
  /// `probe_trajectory`: `extra[trajectory_feature::mean_entropy]` and `::min_max_prob`);
  /// requests without trajectory features then throw. false = over the prompt
  /// (`draft_mean_entropy`, `draft_max_prob_mean`).
  bool read_lookahead = true;

  /// Whether a probe for this arbiter must run `probe_trajectory` (see `reads_lookahead`).
  [[nodiscard]] bool reads_lookahead() const noexcept { return read_lookahead; }

  /// Whether the device may answer; NaN confidence is never confident (goes remote).
  [[nodiscard]] bool confident(float max_prob_mean, float mean_entropy) const noexcept {
    return max_prob_mean >= min_max_prob && mean_entropy <= max_entropy;
  }
  /// The (max-probability, entropy) pair the rules read from `f`.
  [[nodiscard]] std::pair<float, float> signals(const request_features& f) const {
    if (!read_lookahead) return {f.draft_max_prob_mean, f.draft_mean_entropy};
    if (f.extra.size() < trajectory_feature::count)
      throw invalid_argument("confidence_arbiter.read_lookahead: request " + std::to_string(f.request_id) + " has " +
                             std::to_string(f.extra.size()) + " extra features, expected " +
                             std::to_string(trajectory_feature::count) + " (from probe_trajectory)");
    return {f.extra[trajectory_feature::min_max_prob], f.extra[trajectory_feature::mean_entropy]};
  }
  [[nodiscard]] route decide(const request_features& f, const link_estimate&, const budget& b) const {
    if (b.max_cloud_fraction <= 0.0) return route::on_device();
    const auto [max_prob, mean_entropy] = signals(f);
    if (!confident(max_prob, mean_entropy)) return route::in_cloud();
    if (prefix_tokens > 0 && f.draft_first_token_entropy > max_first_token_entropy)
      return route::cloud_prefix(prefix_tokens);
    return route::on_device();
  }
  [[nodiscard]] route on_segment(const segment_state& s) const {
    if (s.current.kind == route_kind::cloud) return s.current;  // already remote: stay
    return confident(s.recent_max_prob_mean, s.recent_mean_entropy) ? s.current : route::in_cloud();
  }
  void validate() const {
    if (!(min_max_prob >= 0.0f))
      throw invalid_argument("confidence_arbiter.min_max_prob must be >= 0 (0 = off), got " +
                             std::to_string(min_max_prob));
    detail::check_not_nan("confidence_arbiter.max_entropy", max_entropy, "in [-inf, +inf] (not NaN)");
    detail::check_not_nan("confidence_arbiter.max_first_token_entropy", max_first_token_entropy,
                          "in [-inf, +inf] (not NaN)");
  }
  /// A copy whose entropy threshold sends at most `b.max_cloud_fraction` of `sample` to
  /// the cloud; the max-probability and first-token rules are switched off.
  [[nodiscard]] confidence_arbiter calibrated(std::span<const request_features> sample, const link_estimate&,
                                              const budget& b) const {
    std::vector<double> s;
    s.reserve(sample.size());
    for (const auto& f : sample) s.push_back(signals(f).second);
    confidence_arbiter a = *this;
    a.max_entropy = static_cast<float>(calibrate_threshold(s, b.max_cloud_fraction));  // a float score: exact
    a.min_max_prob = 0.0f;
    a.max_first_token_entropy = std::numeric_limits<float>::infinity();
    return a;
  }
  /// As `calibrated`, but thresholding the draft's mean max-probability instead (entropy
  /// and first-token rules off).
  [[nodiscard]] confidence_arbiter calibrated_on_max_prob(std::span<const request_features> sample,
                                                          const budget& b) const {
    std::vector<double> s;
    s.reserve(sample.size());
    for (const auto& f : sample) s.push_back(-static_cast<double>(signals(f).first));
    confidence_arbiter a = *this;
    // cloud iff -p > t  <=>  p < -t
    a.min_max_prob = static_cast<float>(-calibrate_threshold(s, b.max_cloud_fraction));
    a.max_entropy = std::numeric_limits<float>::infinity();
    a.max_first_token_entropy = std::numeric_limits<float>::infinity();
    return a;
  }
};

/// Expected end-to-end times of the routes, as `latency_arbiter` computes them.
///
/// ```cpp
/// specdec::hybrid::route_costs c = latency.estimate(features, link, budget);
/// bool spec_wins = c.speculative < c.cloud;  // then c.best_gamma is the draft length
/// ```
struct route_costs {
  double device = 0.0;       ///< L * t_device + lambda * difficulty
  double cloud = 0.0;        ///< see `latency_arbiter`
  double speculative = std::numeric_limits<double>::infinity();  ///< best gamma; inf if disabled
  std::size_t best_gamma = 0;
  double cloud_prefix = std::numeric_limits<double>::infinity();  ///< inf if disabled

  /// The cheapest route that uses the cloud and its expected time.
  [[nodiscard]] std::pair<route, double> best_remote(std::size_t prefix_tokens) const {
    std::pair<route, double> best{route::in_cloud(), cloud};
    if (speculative < best.second) best = {route::speculative(best_gamma), speculative};
    if (cloud_prefix < best.second) best = {route::cloud_prefix(prefix_tokens), cloud_prefix};
    return best;
  }
};

/// Routes by expected latency plus a quality penalty. With L = `predicted_length`, P =
/// `prompt_tokens`, d = `predicted_difficulty` (P(the device's answer is not good
/// enough)), setup = RTT + 32 P / up_bps + t_queue + P t_prefill and
/// m = budget.lambda * budget.cost_per_cloud_token (seconds of money per cloud forward):
///
///     T_device      = L t_dev + lambda d                             (quality penalty)
///     T_cloud       = setup + L t_cloud + 32 L / down_bps + m L
///     T_spec(gamma) = setup + (L / E(gamma)) * (gamma t_dev + RTT + 32 gamma / up_bps + t_cloud
///                                               + 32 (gamma + 1) / down_bps + m)
///     T_prefix(k)   = setup + k' t_cloud + 32 k' / down_bps + m k' + (L - k') t_dev
///                     + lambda d (1 - prefix_quality_share),   k' = min(k, L)
///
/// With `run_ahead` (the server's rule, `completion_client::health().run_ahead`), a gamma
/// whose drafting rounds the rule would replace by running the session ahead is priced as
/// the server then serves it (hybrid/run_ahead.hpp): every token a cloud forward,
///
///     T_spec(gamma) = setup + L (max(t_cloud + 32 / down_bps, RTT / depth) + m),
///
/// the rule comparing that pace with the drafting round's (both without m).
///
/// (token ids are 4 bytes = 32 bits). The device's prefill of the prompt is the probe,
/// paid by every route, so it is not part of the comparison. Speculative decoding is
/// exact, so it carries no quality penalty; E(gamma) = (1 - a^(gamma+1)) / (1 - a) is the
/// expected number of tokens per verification round with per-token acceptance
/// a = clamp(draft_max_prob_mean, 0, 0.99), and the cloud runs one forward per round. A
/// cloud-written prefix of k tokens (GKT) removes a share `prefix_quality_share` of the
/// device's quality penalty (measure it: the mean quality gain of the prefix route over
/// the device's, divided by the cloud's). The arbiter takes the cheapest cloud-using route
/// (cloud, the best gamma in [1, max_gamma], or the prefix when `allow_cloud_prefix`) if
/// it beats T_device by more than `cloud_bias_seconds` (0 = pure cost; calibration raises
/// it to meet a budget); ties go to the device. Requests differ in L and d, so where the
/// tiers trade speed against quality the decisions mix routes.
///
/// ```cpp
/// specdec::hybrid::latency_arbiter a{.costs = {.t_device_per_token = 0.03, .t_cloud_per_token = 0.01},
///                                    .lambda = 2.0};
/// auto r = a.decide(features, specdec::hybrid::link_estimate::of(link_config::lte()), budget);
/// auto tiers = specdec::hybrid::latency_arbiter::from_profiles(
///     specdec::hybrid::tier_profile::device(), specdec::hybrid::tier_profile::cloud(), {.rtt_seconds = 0.08});
/// ```
struct latency_arbiter {
  cost_model costs{};
  double lambda = 0.0;              ///< >= 0, seconds of penalty per unit of difficulty on the device
  bool allow_speculative = true;
  std::size_t max_gamma = 8;        ///< >= 1 when allow_speculative
  double cloud_bias_seconds = 0.0;  ///< >= 0, extra advantage the cloud must show
  bool allow_cloud_prefix = false;
  std::size_t prefix_tokens = 4;        ///< >= 1 when allow_cloud_prefix
  double prefix_quality_share = 0.5;    ///< in [0, 1]
  /// The server's choice between drafting and running a split session ahead (specdec-serve
  /// reports it in `/health`); unset: speculative routes are priced as drafting rounds.
  std::optional<run_ahead_rule> run_ahead{};

  /// An arbiter for a device tier and a remote (edge or cloud) tier reached over `link`:
  /// per-token times from the decode rates; the remote's time to first token, less one
  /// RTT, becomes its queueing time (its prefill is folded into it).
  [[nodiscard]] static latency_arbiter from_profiles(const tier_profile& device, const tier_profile& remote,
                                                     const link_estimate& link, double lambda = 0.0) {
    device.validate();
    remote.validate();
    link.validate();
    latency_arbiter a;
    a.costs = {.t_device_per_token = 1.0 / device.tokens_per_second,
               .t_cloud_per_token = 1.0 / remote.tokens_per_second,
               .cloud_prefill_seconds_per_token = 0.0,
               .cloud_queue_seconds = std::max(0.0, remote.first_token_seconds - link.rtt_seconds)};
    a.lambda = lambda;
    return a;
  }

  [[nodiscard]] route_costs estimate(const request_features& f, const link_estimate& l, const budget& b) const {
    const double L = std::max(0.0, f.predicted_length);
    const double P = static_cast<double>(f.prompt_tokens);
    const double money = b.lambda * b.cost_per_cloud_token;  // seconds per cloud forward
    route_costs c;
    c.device = L * costs.t_device_per_token + lambda * f.predicted_difficulty;
    const double setup = l.rtt_seconds + 32.0 * P / l.up_bps + costs.cloud_queue_seconds +
                         P * costs.cloud_prefill_seconds_per_token;
    c.cloud = setup + L * costs.t_cloud_per_token + 32.0 * L / l.down_bps + money * L;
    if (allow_speculative) {
      const double a = std::clamp(static_cast<double>(f.draft_max_prob_mean), 0.0, 0.99);
      for (std::size_t g = 1; g <= max_gamma; ++g) {
        const double gd = static_cast<double>(g);
        const double turnaround =
            gd * costs.t_device_per_token + l.rtt_seconds + 32.0 * gd / l.up_bps + 32.0 * (gd + 1.0) / l.down_bps;
        double per_token = drafting_seconds_per_token(turnaround, costs.t_cloud_per_token + money, g, a);
        if (run_ahead) {
          const double ahead =
              run_ahead_seconds_per_token(l.rtt_seconds, costs.t_cloud_per_token + 32.0 / l.down_bps, run_ahead->depth);
          if (run_ahead->prefers_run_ahead(drafting_seconds_per_token(turnaround, costs.t_cloud_per_token, g, a), ahead))
            per_token = ahead + money;
        }
        const double t = setup + L * per_token;
        if (t < c.speculative) {
          c.speculative = t;
          c.best_gamma = g;
        }
      }
    }
    if (allow_cloud_prefix) {
      const double k = std::min(static_cast<double>(prefix_tokens), L);
      c.cloud_prefix = setup + k * (costs.t_cloud_per_token + 32.0 / l.down_bps + money) +
                       (L - k) * costs.t_device_per_token +
                       lambda * f.predicted_difficulty * (1.0 - prefix_quality_share);
    }
    return c;
  }
  /// T_device minus the cheapest cloud-using route: > 0 when the cloud is faster.
  [[nodiscard]] double cloud_advantage(const request_features& f, const link_estimate& l, const budget& b) const {
    const auto c = estimate(f, l, b);
    return c.device - c.best_remote(prefix_tokens).second;
  }
  [[nodiscard]] route decide(const request_features& f, const link_estimate& l, const budget& b) const {
    if (b.max_cloud_fraction <= 0.0) return route::on_device();
    const auto c = estimate(f, l, b);
    const auto [r, t] = c.best_remote(prefix_tokens);
    return c.device - t > cloud_bias_seconds ? r : route::on_device();
  }
  void validate() const {
    costs.validate();
    detail::check_non_negative("latency_arbiter.lambda", lambda);
    if (allow_speculative && max_gamma < 1)
      throw invalid_argument("latency_arbiter.max_gamma must be >= 1 when allow_speculative, got 0");
    detail::check_non_negative("latency_arbiter.cloud_bias_seconds", cloud_bias_seconds);
    if (allow_cloud_prefix && prefix_tokens < 1)
      throw invalid_argument("latency_arbiter.prefix_tokens must be >= 1 when allow_cloud_prefix, got 0");
    detail::check_range("latency_arbiter.prefix_quality_share", prefix_quality_share, 0.0, 1.0, "in [0, 1]");
    if (run_ahead) run_ahead->validate();
  }
  /// A copy whose `cloud_bias_seconds` is the smallest non-negative value that sends at
  /// most `b.max_cloud_fraction` of `sample` to the cloud.
  [[nodiscard]] latency_arbiter calibrated(std::span<const request_features> sample, const link_estimate& l,
                                           const budget& b) const {
    std::vector<double> s;
    s.reserve(sample.size());
    for (const auto& f : sample) s.push_back(cloud_advantage(f, l, b));
    latency_arbiter a = *this;
    a.cloud_bias_seconds = std::max(0.0, calibrate_threshold(s, b.max_cloud_fraction));
    return a;
  }
};

/// The feature vector the logistic arbiter uses: `probe_features(f)` followed by
/// `predicted_length` and `predicted_difficulty`.
///
/// ```cpp
/// std::vector<double> x = specdec::hybrid::arbiter_features(f);  // 6 + f.extra.size() values
/// ```
[[nodiscard]] inline std::vector<double> arbiter_features(const request_features& f) {
  auto x = probe_features(f);
  x.push_back(f.predicted_length);
  x.push_back(f.predicted_difficulty);
  return x;
}

/// Logistic regression on standardised `arbiter_features` (`logistic_regression`, see
/// training.hpp), trained in C++ from logged runs (label 1 = the device's output was good
/// enough), predicting P(device ok). Routes to the device when P >= `threshold`, to the
/// cloud otherwise.
///
/// ```cpp
/// specdec::hybrid::logistic_arbiter a;
/// a.train(X, y, /*iterations=*/500, /*learning_rate=*/0.5, /*l2=*/1e-3);
/// double p = a.probability_device_ok(f);
/// auto tuned = a.calibrated(sample, link, {.max_cloud_fraction = 0.3});
/// ```
struct logistic_arbiter {
  double threshold = 0.5;      ///< >= 0; > 1 sends everything to the cloud
  logistic_regression model{};  ///< P(device ok) from `arbiter_features`

  [[nodiscard]] bool trained() const noexcept { return model.trained(); }
  /// P(device ok) for a raw feature vector.
  [[nodiscard]] double probability(std::span<const double> x) const { return model.probability(x); }
  [[nodiscard]] double probability_device_ok(const request_features& f) const {
    const auto x = arbiter_features(f);
    return probability(x);
  }
  /// Weights on the raw (unstandardised) features.
  [[nodiscard]] std::vector<double> raw_weights() const { return model.raw_weights(); }

  [[nodiscard]] route decide(const request_features& f, const link_estimate&, const budget& b) const {
    if (b.max_cloud_fraction <= 0.0) return route::on_device();
    return probability_device_ok(f) >= threshold ? route::on_device() : route::in_cloud();
  }
  void validate() const {
    if (!(threshold >= 0.0))
      throw invalid_argument("logistic_arbiter.threshold must be >= 0 (a probability; > 1 = always cloud), got " +
                             std::to_string(threshold));
    model.validate();
  }

  /// Trains the model on raw feature rows (see `logistic_regression::train`).
  void train(const std::vector<std::vector<double>>& x, const std::vector<int>& y, int iterations = 500,
             double learning_rate = 0.5, double l2 = 1e-3) {
    model.train(x, y, iterations, learning_rate, l2);
  }
  /// Trains on logged requests' `arbiter_features`.
  void train(const std::vector<request_features>& features, const std::vector<int>& y, int iterations = 500,
             double learning_rate = 0.5, double l2 = 1e-3) {
    std::vector<std::vector<double>> x;
    x.reserve(features.size());
    for (const auto& f : features) x.push_back(arbiter_features(f));
    train(x, y, iterations, learning_rate, l2);
  }

  /// A copy whose threshold sends at most `b.max_cloud_fraction` of `sample` to the cloud.
  [[nodiscard]] logistic_arbiter calibrated(std::span<const request_features> sample, const link_estimate&,
                                            const budget& b) const {
    std::vector<double> s;
    s.reserve(sample.size());
    for (const auto& f : sample) s.push_back(-probability_device_ok(f));
    logistic_arbiter a = *this;
    // cloud iff -P > t  <=>  P < -t: the threshold on P is -t (+inf when all may go).
    a.threshold = -calibrate_threshold(s, b.max_cloud_fraction);
    return a;
  }
};

/// Wraps an arbiter and enforces `budget::max_cloud_fraction` exactly over the stream of
/// decisions it makes: a cloud-using route that would push the running cloud share above
/// the budget is demoted to the device. Stateful (decide is non-const), deterministic.
///
/// ```cpp
/// specdec::hybrid::budget_guard guard{specdec::hybrid::latency_arbiter{}};
/// for (const auto& f : requests) run(guard.decide(f, link, {.max_cloud_fraction = 0.2}));
/// ```
template <arbiter A>
struct budget_guard {
  A inner;
  std::size_t decisions = 0;
  std::size_t cloud_decisions = 0;

  [[nodiscard]] route decide(const request_features& f, const link_estimate& l, const budget& b) {
    route r = inner.decide(f, l, b);
    ++decisions;
    if (r.uses_cloud()) {
      if (static_cast<double>(cloud_decisions + 1) <= b.max_cloud_fraction * static_cast<double>(decisions) + 1e-9)
        ++cloud_decisions;
      else
        r = route::on_device();
    }
    return r;
  }
  void validate() const { inner.validate(); }
  [[nodiscard]] bool reads_lookahead() const { return hybrid::reads_lookahead(inner); }
  /// Forgets the decisions made so far.
  void reset() noexcept { decisions = cloud_decisions = 0; }
};
template <class A>
budget_guard(A) -> budget_guard<A>;

}  // namespace specdec::hybrid
