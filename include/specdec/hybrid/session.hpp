#pragma once
/// \file session.hpp
/// One device/cloud hybrid request, end to end, on the virtual clock of a
/// `simulated_link`: probe the device model for `request_features`, ask an arbiter for a
/// `route`, and execute it with the generic decoders over `timed_model` (device) and
/// `remote_model` (cloud):
///
/// | route             | execution                                                           |
/// |-------------------|---------------------------------------------------------------------|
/// | `device`          | `autoregressive_decoder` on the device                              |
/// | `cloud`           | `autoregressive_decoder` on the cloud, prompt up, tokens streamed down |
/// | `speculative(g)`  | `speculative_decoder(device, cloud, fixed_gamma{g}, greedy_match or rejection_sampling)`; with `session_options::run_ahead`, when the server would run the session ahead, `autoregressive_decoder` on the cloud in `remote_mode::run_ahead` |
/// | `cloud_prefix(k)` | the cloud streams the first k tokens, the device completes (GKT)    |
///
/// If the link fails during a cloud-using leg (`link_unavailable`), the device continues
/// from the committed tokens and the result says `fell_back_to_device`. If the arbiter is
/// a `segment_arbiter`, it is consulted every `session_options::segment_tokens` tokens
/// generated on the device (with the device's mean confidence over that segment) and may
/// move the rest of the generation to another route.
///
/// Each request carries a privacy class (privacy/policy.hpp; the caller's, most
/// restrictive with the PII detector's decision). A leg whose route the class may not use
/// (`privacy::may_leave_device` with a plain payload: `local_only` never, `redactable` not
/// here either, since the simulated cloud leg cannot redact) runs on the device instead and
/// the result says `privacy_refused`; the arbiter is not asked to know the rule. The real
/// network path enforces the same rule in its transports (net_session.hpp).
///
/// ```cpp
/// specdec::hybrid::simulated_link link(specdec::hybrid::link_config::wan(), /*seed=*/1);
/// specdec::hybrid::session s(little, big, specdec::hybrid::confidence_arbiter{}, link,
///                            {.compute = {.device_scale = 3.0, .cloud_scale = 0.5}});
/// auto r = s.run(prompt, {.max_new_tokens = 48});
/// std::cout << to_string(r.planned.kind) << ' ' << r.latency_seconds << " s, "
///           << r.bytes_per_token() << " B/token\n";
/// ```
#include <algorithm>
#include <chrono>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/decoder.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/link.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/hybrid/probe.hpp"
#include "specdec/hybrid/remote_model.hpp"
#include "specdec/hybrid/run_ahead.hpp"
#include "specdec/model.hpp"
#include "specdec/privacy/policy.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"

namespace specdec::hybrid {

/// An arbiter that always returns the same route: the device-only, cloud-only,
/// always-speculative and always-prefix baselines.
///
/// ```cpp
/// specdec::hybrid::fixed_arbiter always_spec{specdec::hybrid::route::speculative(4)};
/// ```
struct fixed_arbiter {
  route fixed = route::on_device();

  [[nodiscard]] route decide(const request_features&, const link_estimate&, const budget&) const noexcept {
    return fixed;
  }
  void validate() const {
    if (fixed.kind == route_kind::speculative && fixed.gamma == 0)
      throw invalid_argument("fixed_arbiter.fixed.gamma must be >= 1 for a speculative route, got 0");
    if (fixed.kind == route_kind::cloud_prefix && fixed.prefix_tokens == 0)
      throw invalid_argument("fixed_arbiter.fixed.prefix_tokens must be >= 1 for a cloud_prefix route, got 0");
  }
};

/// Knobs of a `session`.
///
/// ```cpp
/// specdec::hybrid::session_options o{.sampling = {.temperature = 0.8f}, .seed = 7,
///                                    .compute = {.device_scale = 3.0, .cloud_scale = 0.5},
///                                    .segment_tokens = 16};
/// o.validate();
/// ```
struct session_options {
  sampling_params sampling{};  ///< temperature 0 = greedy (greedy_match), else rejection_sampling
  std::uint64_t seed = 0;      ///< seeds every decoder of a request (with the request id)
  compute_model compute{};     ///< device / cloud scale of the charged compute
  cost_function device_cost{};  ///< empty = measured wall time of each device forward
  cost_function cloud_cost{};   ///< empty = measured wall time of each cloud forward
  wire_format wire{};          ///< message format of speculative verification
  budget limits{};             ///< passed to the arbiter
  /// Consult a `segment_arbiter` after every `segment_tokens` device tokens; 0 = never.
  std::size_t segment_tokens = 16;
  /// Charge the feature probe (one device forward of the prompt, plus the look-ahead
  /// tokens when the arbiter `reads_lookahead`) to the clock, once: a device leg that
  /// re-forwards them from an empty cache is not charged for them again
  /// (`timed_model::prepay`), so every route pays the probe exactly once.
  bool charge_probe = true;
  /// Charge to the clock, after each speculative leg, the wall time its in-process decoder
  /// spent outside the two models' forwards: sampling the draft's q, the target's p and
  /// the verdict (in a deployment on the device and on the server, in series with every
  /// round). Negligible for greedy verification (an argmax per row), not for sampled
  /// verification with top-p over a large vocabulary.
  bool charge_decoder_work = false;
  /// The server's run-ahead (specdec-serve's `--device-draft-gain` and `--run-ahead`).
  /// Unset: a speculative leg drafts its route's gamma every round, as from a server that
  /// always announces drafts. Set: the leg runs ahead (`remote_mode::run_ahead`, no drafts)
  /// when the rule prefers it (hybrid/run_ahead.hpp), priced with the link's expected
  /// round trip plus two messages' overhead as the turnaround, the cloud's step times from
  /// `cloud_cost` (required), the device's draft forwards from `device_cost` (left out
  /// when empty) and `run_ahead_acceptance`.
  std::optional<run_ahead_rule> run_ahead{};
  /// The per-position acceptance drafting is priced with in that choice (specdec-serve's
  /// prior for a new session), in [0, 1].
  double run_ahead_acceptance = 0.6;

  void validate() const {
    sampling.validate();
    compute.validate();
    wire.validate();
    limits.validate();
    if (run_ahead) {
      run_ahead->validate();
      if (!cloud_cost)
        throw invalid_argument("session_options.run_ahead needs cloud_cost (the server's step times) to price the choice");
    }
    if (!(run_ahead_acceptance >= 0.0 && run_ahead_acceptance <= 1.0))
      throw invalid_argument("session_options.run_ahead_acceptance must be in [0, 1], got " +
                             std::to_string(run_ahead_acceptance));
  }
};

/// What a request produced and what it cost.
///
/// ```cpp
/// auto r = s.run(prompt, {.max_new_tokens = 32});
/// if (r.fell_back_to_device) std::cerr << "link lost; finished on the device\n";
/// double cost = double(r.cloud_tokens) / r.tokens.size();
/// ```
struct request_result {
  std::vector<token_id> tokens;  ///< generated tokens (not the prompt)
  request_features features;     ///< what the arbiter saw
  route planned;                 ///< the arbiter's decision
  /// The routes actually executed, in order (several after a segment switch, a prefix
  /// hand-over or a fallback).
  std::vector<route> legs;
  double latency_seconds = 0.0;  ///< virtual time from the request to its last token
  double ttft_seconds = std::numeric_limits<double>::quiet_NaN();  ///< to the first token (NaN if none)
  std::size_t bytes_up = 0;      ///< on the wire, headers and retransmits included
  std::size_t bytes_down = 0;
  std::size_t round_trips = 0;   ///< verify rounds and stream openings
  std::size_t cloud_tokens = 0;  ///< output tokens written or verified by the cloud
  std::size_t device_tokens = 0;  ///< output tokens written by the device alone
  std::size_t cloud_forward_tokens = 0;  ///< tokens the cloud model processed (its compute cost)
  std::size_t cloud_calls = 0;   ///< cloud forwards
  double device_seconds = 0.0;   ///< virtual device compute (probe included if charged)
  double cloud_seconds = 0.0;    ///< virtual cloud compute
  generation_stats stats;        ///< counters of all legs, method "hybrid"
  specdec::stop_reason stop_reason = specdec::stop_reason::none;  ///< as `generation_result::stop_reason`
  bool fell_back_to_device = false;  ///< a cloud-using leg lost the link
  bool privacy_refused = false;      ///< the request's class kept a cloud-using leg on the device
  std::size_t segment_switches = 0;  ///< routes changed by `on_segment`

  [[nodiscard]] double bytes_per_token() const noexcept {
    return tokens.empty() ? 0.0 : static_cast<double>(bytes_up + bytes_down) / static_cast<double>(tokens.size());
  }
  [[nodiscard]] double round_trips_per_token() const noexcept {
    return tokens.empty() ? 0.0 : static_cast<double>(round_trips) / static_cast<double>(tokens.size());
  }
  /// E.g. "device>speculative(4)" for a device start switched to speculation.
  [[nodiscard]] std::string route_trace() const {
    std::string s;
    for (const auto& r : legs) {
      if (!s.empty()) s += '>';
      s += to_string(r.kind);
      // Appended piece by piece: GCC 12 at -O3 warns (-Wrestrict, a false positive) on
      // s += "(" + std::to_string(n) + ")" once enough of the caller is inlined.
      const auto parenthesised = [&s](std::size_t n) {
        s += '(';
        s += std::to_string(n);
        s += ')';
      };
      if (r.kind == route_kind::speculative) parenthesised(r.gamma);
      if (r.kind == route_kind::cloud_prefix) parenthesised(r.prefix_tokens);
    }
    return s;
  }
};

/// Runs hybrid requests: device model, cloud model, arbiter, predictors, one link.
/// Holds references to the two models and the link (they must outlive the session); the
/// link's clock and counters keep running across requests, and each result reports its
/// own differences.
///
/// ```cpp
/// specdec::hybrid::simulated_link link(specdec::hybrid::link_config::lte(), 2);
/// specdec::hybrid::session s(little, big, specdec::hybrid::latency_arbiter{}, link, {},
///                            specdec::hybrid::constant_length_predictor{.length = 40});
/// for (const auto& p : prompts) {
///   auto r = s.run(p, {.max_new_tokens = 40});
///   std::cout << r.route_trace() << ' ' << r.latency_seconds << '\n';
/// }
/// auto forced = s.execute(prompts[0], {.max_new_tokens = 40}, specdec::hybrid::route::cloud_prefix(4));
/// ```
template <language_model Device, language_model Cloud, arbiter A,
          length_predictor LP = constant_length_predictor, difficulty_predictor DP = entropy_difficulty_predictor>
class session {
 public:
  session(Device& device, Cloud& cloud, A arb, simulated_link& link, session_options opts = {}, LP length = {},
          DP difficulty = {})
      : device_(device),
        cloud_(cloud),
        arbiter_(std::move(arb)),
        link_(link),
        opts_(validated(std::move(opts))),
        length_(std::move(length)),
        difficulty_(std::move(difficulty)),
        dev_(device, link, opts_.compute.device_scale, opts_.device_cost),
        remote_(cloud, link, opts_.compute.cloud_scale, opts_.wire, opts_.cloud_cost) {
    if (static_cast<const void*>(&device) == static_cast<const void*>(&cloud))
      throw invalid_argument("session: device and cloud are the same object; expected two model instances");
    check_same_vocabulary(device, cloud);
    arbiter_.validate();
    length_.validate();
    difficulty_.validate();
  }

  [[nodiscard]] A& arbiter() noexcept { return arbiter_; }
  [[nodiscard]] const session_options& options() const noexcept { return opts_; }
  [[nodiscard]] simulated_link& link() noexcept { return link_; }
  /// The smaller context length of the two models.
  [[nodiscard]] std::size_t context_length() const {
    return std::min<std::size_t>(device_.context_length(), cloud_.context_length());
  }

  /// Probes the device (charged to the clock if `charge_probe`) and fills the predictions:
  /// `probe_trajectory` (with `trajectory_options`' default look-ahead, stopping at EOS) if
  /// the arbiter `reads_lookahead`, else `probe_request`.
  [[nodiscard]] request_features features(std::span<const token_id> prompt, std::uint64_t request_id = 0) {
    request_features f;
    if (reads_lookahead(arbiter_)) {
      const trajectory_options t{.stop_tokens = {eos_token}};
      trajectory_probe p = opts_.charge_probe ? probe_trajectory(dev_, prompt, t) : probe_trajectory(device_, prompt, t);
      if (opts_.charge_probe) {
        // What the probe forwarded: the prompt, then its look-ahead tokens but the last. A
        // greedy device leg replays exactly these and pays them once.
        std::vector<token_id> paid(prompt.begin(), prompt.end());
        paid.insert(paid.end(), p.lookahead.begin(), p.lookahead.end() - 1);
        dev_.prepay(paid);
      }
      f = std::move(p.features);
    } else {
      f = opts_.charge_probe ? probe_request(dev_, prompt) : probe_request(device_, prompt);
      if (opts_.charge_probe) dev_.prepay(prompt);  // a device leg replaying the prompt pays it once
    }
    f.request_id = request_id;
    f.predicted_length = static_cast<double>(length_.predict(f));
    f.predicted_difficulty = static_cast<double>(difficulty_.predict(f));
    return f;
  }

  /// Features, the arbiter's route, execution: one request end to end, of privacy class
  /// `privacy` (see the file comment).
  [[nodiscard]] request_result run(std::span<const token_id> prompt, const generation_options& gen = {},
                                   std::uint64_t request_id = 0,
                                   specdec::privacy::privacy_class privacy = specdec::privacy::privacy_class::cloud_allowed) {
    const double t0 = link_.now();
    const link_counters c0 = link_.counters();
    const double dev0 = dev_.charged_seconds();
    request_features f = features(prompt, request_id);
    const route r = arbiter_.decide(f, link_estimate::of(link_.config()), opts_.limits);
    return execute_from(prompt, gen, r, std::move(f), t0, c0, dev0, privacy);
  }

  /// Executes `r` for `prompt` without probing or asking the arbiter (`features` are
  /// copied into the result; the segment hook is still consulted).
  [[nodiscard]] request_result execute(std::span<const token_id> prompt, const generation_options& gen, route r,
                                       request_features f = {},
                                       specdec::privacy::privacy_class privacy =
                                           specdec::privacy::privacy_class::cloud_allowed) {
    return execute_from(prompt, gen, r, std::move(f), link_.now(), link_.counters(), dev_.charged_seconds(), privacy);
  }

 private:
  enum class leg_end { done, switched, prefix_done, link_lost };

  static session_options validated(session_options o) {
    o.validate();
    return o;
  }

  [[nodiscard]] request_result execute_from(std::span<const token_id> prompt, const generation_options& gen, route r,
                                            request_features f, double t0, link_counters c0, double dev0,
                                            specdec::privacy::privacy_class privacy) {
    validate_route(r);
    specdec::detail::validate_request(prompt, gen, device_.vocab_size(), context_length(), "hybrid::session");
    request_result res;
    res.features = std::move(f);
    res.planned = r;
    res.stats.method = "hybrid";
    prompt_.assign(prompt.begin(), prompt.end());
    gen_ = &gen;
    res_ = &res;
    t0_ = t0;
    const double cloud0 = remote_.charged_seconds();
    const std::size_t rt0 = remote_.round_trips(), calls0 = remote_.calls(), tok0 = remote_.tokens();
    bool segments = segment_arbiter<A> && opts_.segment_tokens > 0;
    std::size_t leg_index = 0;
    route cur = r;
    if (gen.max_new_tokens == 0) res.stop_reason = stop_reason::max_tokens;
    while (res.stop_reason == stop_reason::none) {
      if (prompt_.size() + res.tokens.size() >= context_length()) {
        res.stop_reason = stop_reason::context;
        break;
      }
      if (cur.uses_cloud() && !specdec::privacy::may_leave_device(privacy, cur)) {
        res.privacy_refused = true;
        segments = false;  // a segment hook could only ask for the cloud again
        cur = route::on_device();
      }
      res.legs.push_back(cur);
      const std::uint64_t seed = leg_seed(res.features.request_id, leg_index++);
      route next = route::on_device();
      leg_end e = leg_end::done;
      switch (cur.kind) {
        case route_kind::device: e = run_device(seed, segments, cur, next); break;
        case route_kind::cloud: e = run_cloud(seed, gen.max_new_tokens); break;
        case route_kind::cloud_prefix: e = run_cloud(seed, cur.prefix_tokens); break;
        case route_kind::speculative: e = run_speculative(seed, cur.gamma); break;
      }
      if (e == leg_end::link_lost) {
        res.fell_back_to_device = true;
        segments = false;  // the link is gone: finish on the device
        cur = route::on_device();
      } else if (e == leg_end::switched) {
        ++res.segment_switches;
        cur = next;
      } else if (e == leg_end::prefix_done) {
        cur = route::on_device();
      }
    }
    const link_counters& c1 = link_.counters();
    res.latency_seconds = link_.now() - t0;
    res.bytes_up = c1.bytes_up - c0.bytes_up;
    res.bytes_down = c1.bytes_down - c0.bytes_down;
    res.round_trips = remote_.round_trips() - rt0;
    res.cloud_calls = remote_.calls() - calls0;
    res.cloud_forward_tokens = remote_.tokens() - tok0;
    res.cloud_seconds = remote_.charged_seconds() - cloud0;
    res.device_seconds = dev_.charged_seconds() - dev0;
    res.stats.method = "hybrid";
    res.stats.prompt_tokens = prompt_.size();
    res.stats.tokens_emitted = res.tokens.size();
    res_ = nullptr;
    gen_ = nullptr;
    dev_.prepay({});  // the probe's credit is this request's only
    return res;
  }

  static void validate_route(const route& r) {
    if (r.kind == route_kind::speculative && r.gamma == 0)
      throw invalid_argument("hybrid::session: route speculative needs gamma >= 1, got 0");
    if (r.kind == route_kind::cloud_prefix && r.prefix_tokens == 0)
      throw invalid_argument("hybrid::session: route cloud_prefix needs prefix_tokens >= 1, got 0");
  }

  [[nodiscard]] std::uint64_t leg_seed(std::uint64_t request_id, std::size_t leg) const noexcept {
    return detail::mix64(detail::mix64(opts_.seed ^ (request_id * 0x9e3779b97f4a7c15ULL)) + leg);
  }

  /// The leg's prompt: the request's prompt plus every token committed so far.
  std::vector<token_id> leg_prompt() const {
    std::vector<token_id> p = prompt_;
    p.insert(p.end(), res_->tokens.begin(), res_->tokens.end());
    return p;
  }

  /// Options for a leg that may write at most `cap` more tokens.
  generation_options leg_options(std::size_t cap) const {
    generation_options o;
    o.max_new_tokens = std::min(cap, gen_->max_new_tokens - res_->tokens.size());
    o.stop_at_eos = gen_->stop_at_eos;
    o.sync_caches = false;  // catch-up forwards would cost messages and compute
    return o;              // stop sequences are matched by `commit`, across legs
  }

  /// Records a committed token; false when the request is complete (stop sequence or
  /// the request's token budget; EOS is left to the decoder's own rule).
  bool commit(token_id t, bool by_cloud) {
    request_result& res = *res_;
    res.tokens.push_back(t);
    (by_cloud ? res.cloud_tokens : res.device_tokens) += 1;
    if (res.tokens.size() == 1) res.ttft_seconds = link_.now() - t0_;
    if (specdec::detail::ends_with_any(res.tokens, gen_->stop_sequences)) {
      res.stop_reason = stop_reason::stop_sequence;
      return false;
    }
    if (gen_->stop_at_eos && t == eos_token) res.stop_reason = stop_reason::eos;
    if (res.tokens.size() >= gen_->max_new_tokens && res.stop_reason == stop_reason::none)
      res.stop_reason = stop_reason::max_tokens;
    return res.stop_reason == stop_reason::none;
  }

  void merge_stats(const generation_stats& s) {
    generation_stats t = s;
    t.method.clear();
    res_->stats.method.clear();
    res_->stats.merge(t);
  }

  /// Maps a leg's stop reason to the request's (a leg that filled its own cap ends the leg, not the request).
  leg_end finish_leg(const generation_result& g, bool capped_leg) {
    merge_stats(g.stats);
    request_result& res = *res_;
    if (res.stop_reason != stop_reason::none) return leg_end::done;  // commit decided
    if (g.stop_reason == stop_reason::max_tokens && capped_leg) return leg_end::prefix_done;
    if (g.stop_reason != stop_reason::callback) res.stop_reason = g.stop_reason;
    return leg_end::done;
  }

  leg_end run_device(std::uint64_t seed, bool segments, const route& cur, route& next) {
    const auto p = leg_prompt();
    autoregressive_decoder<timed_model<Device>> dec(dev_, opts_.sampling, seed);
    bool switched = false;
    [[maybe_unused]] std::size_t in_segment = 0;
    dev_.track_confidence(segments);
    dev_.reset_confidence();
    auto on_token = [&](token_id t) {
      if (!commit(t, false)) return false;
      if constexpr (segment_arbiter<A>) {
        if (segments && ++in_segment >= opts_.segment_tokens) {
          in_segment = 0;
          segment_state s{.tokens_so_far = res_->tokens.size(), .recent_max_prob_mean = dev_.mean_max_prob(),
                          .recent_mean_entropy = dev_.mean_entropy(), .current = cur};
          dev_.reset_confidence();
          const route r = arbiter_.on_segment(s);
          if (r != cur) {
            validate_route(r);
            next = r;
            switched = true;
            return false;
          }
        }
      }
      return true;
    };
    const generation_result g = dec.generate(p, leg_options(gen_->max_new_tokens), on_token);
    dev_.track_confidence(false);
    if (switched) {
      merge_stats(g.stats);
      return leg_end::switched;
    }
    return finish_leg(g, false);
  }

  /// Autoregressive decoding in the cloud: streamed (cloud and cloud_prefix routes) or,
  /// for a speculative leg the server runs ahead, `remote_mode::run_ahead`.
  leg_end run_cloud(std::uint64_t seed, std::size_t cap, remote_mode mode = remote_mode::stream) {
    const auto p = leg_prompt();
    remote_.set_mode(mode);
    autoregressive_decoder<remote_model<Cloud>> dec(remote_, opts_.sampling, seed);
    auto on_token = [&](token_id t) { return commit(t, true); };
    const bool capped = cap < gen_->max_new_tokens - res_->tokens.size();
    try {
      const generation_result g = dec.generate(p, leg_options(cap), on_token);
      remote_.set_mode(remote_mode::verify);
      return finish_leg(g, capped);
    } catch (const link_unavailable&) {
      remote_.set_mode(remote_mode::verify);
      return res_->stop_reason == stop_reason::none ? leg_end::link_lost : leg_end::done;
    }
  }

  /// Whether the modelled server runs this speculative leg ahead (`session_options::run_ahead`).
  [[nodiscard]] bool runs_ahead(std::size_t gamma) const {
    if (!opts_.run_ahead) return false;
    const link_config& c = link_.config();
    const std::size_t cached = prompt_.size() + res_->tokens.size();
    const double turnaround = link_estimate::of(c).rtt_seconds + 2.0 * c.message_overhead_seconds;
    const auto step = [&](std::size_t rows) { return opts_.cloud_cost(rows, cached) * opts_.compute.cloud_scale; };
    const double drafts =
        opts_.device_cost ? static_cast<double>(gamma) * opts_.device_cost(1, cached) * opts_.compute.device_scale : 0.0;
    return opts_.run_ahead->prefers_run_ahead(
        drafting_seconds_per_token(turnaround + drafts, step(gamma + 1), gamma, opts_.run_ahead_acceptance),
        run_ahead_seconds_per_token(turnaround, step(1), opts_.run_ahead->depth));
  }

  leg_end run_speculative(std::uint64_t seed, std::size_t gamma) {
    if (runs_ahead(gamma)) {
      remote_.set_run_ahead(*opts_.run_ahead, gen_->max_new_tokens - res_->tokens.size());
      return run_cloud(seed, gen_->max_new_tokens, remote_mode::run_ahead);
    }
    const auto p = leg_prompt();
    remote_.set_mode(remote_mode::verify);
    auto on_token = [&](token_id t) { return commit(t, true); };
    // The decoder's own work: its wall time less both models' forwards (charged apart).
    const auto t0 = std::chrono::steady_clock::now();
    const double forwards0 = dev_.forward_wall_seconds() + remote_.forward_wall_seconds();
    const auto charge_work = [&] {
      if (!opts_.charge_decoder_work) return;
      const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      link_.advance(std::max(0.0, wall - (dev_.forward_wall_seconds() + remote_.forward_wall_seconds() - forwards0)));
    };
    try {
      generation_result g;
      if (opts_.sampling.greedy()) {
        speculative_decoder dec(dev_, remote_, fixed_gamma{gamma}, greedy_match{}, opts_.sampling, seed);
        g = dec.generate(p, leg_options(gen_->max_new_tokens), on_token);
      } else {
        speculative_decoder dec(dev_, remote_, fixed_gamma{gamma}, rejection_sampling{}, opts_.sampling, seed);
        g = dec.generate(p, leg_options(gen_->max_new_tokens), on_token);
      }
      charge_work();
      return finish_leg(g, false);
    } catch (const link_unavailable&) {
      charge_work();
      return res_->stop_reason == stop_reason::none ? leg_end::link_lost : leg_end::done;
    }
  }

  Device& device_;
  Cloud& cloud_;
  A arbiter_;
  simulated_link& link_;
  session_options opts_;
  LP length_;
  DP difficulty_;
  timed_model<Device> dev_;
  remote_model<Cloud> remote_;
  // Per-request state.
  std::vector<token_id> prompt_;
  const generation_options* gen_ = nullptr;
  request_result* res_ = nullptr;
  double t0_ = 0.0;
};

template <class D, class C, class A>
session(D&, C&, A, simulated_link&) -> session<D, C, A>;
template <class D, class C, class A>
session(D&, C&, A, simulated_link&, session_options) -> session<D, C, A>;
template <class D, class C, class A, class LP>
session(D&, C&, A, simulated_link&, session_options, LP) -> session<D, C, A, LP>;
template <class D, class C, class A, class LP, class DP>
session(D&, C&, A, simulated_link&, session_options, LP, DP) -> session<D, C, A, LP, DP>;

}  // namespace specdec::hybrid
