#pragma once
/// \file link.hpp
/// A seeded, simulated device <-> cloud network link with a virtual clock, plus the
/// payload-size and compute-time helpers hybrid experiments charge against it.
///
/// Nothing here sleeps or touches a socket: `simulated_link` advances a virtual clock by
/// the delay each message would take (half an RTT of propagation plus serialisation at the
/// link's bandwidth, plus a retransmit timeout per lost attempt) and keeps byte and
/// message counters. Compute time is charged with `advance`, scaled from really measured
/// work by a `compute_model`, so a simulated end-to-end latency rests on real work.
///
/// Randomness comes from `std::mt19937_64` (whose output sequence the C++ standard fixes)
/// through `random_source` (sampling.hpp: its own uniform and Box-Muller transforms), never through
/// `std::*_distribution`, so the same seed gives the same delays with every standard
/// library.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/validation.hpp"
#include "specdec/sampling.hpp"

namespace specdec::hybrid {

namespace detail {

using specdec::detail::check_below;
using specdec::detail::check_non_negative;
using specdec::detail::check_positive;
using specdec::detail::check_range;

}  // namespace detail

/// Two-state Gilbert-Elliott channel: the link is in a good or a bad state, switches
/// state before every transmission attempt with the given probabilities, and each state
/// has its own RTT and loss probability. The stationary fraction of attempts made in the
/// bad state is `p_good_to_bad / (p_good_to_bad + p_bad_to_good)`.
///
/// ```cpp
/// specdec::hybrid::gilbert_elliott ge{.p_good_to_bad = 0.05, .p_bad_to_good = 0.45,
///                                     .good_rtt_seconds = 0.04, .bad_rtt_seconds = 0.3,
///                                     .good_loss = 0.0, .bad_loss = 0.2};
/// ```
struct gilbert_elliott {
  double p_good_to_bad = 0.01;    ///< per attempt, in [0, 1]
  double p_bad_to_good = 0.2;     ///< per attempt, in [0, 1]; the two may not both be 0
  double good_rtt_seconds = 0.05;  ///< RTT (median, if jittered) in the good state
  double bad_rtt_seconds = 0.3;    ///< RTT (median, if jittered) in the bad state
  double good_loss = 0.0;          ///< per-attempt loss probability in the good state, [0, 1)
  double bad_loss = 0.1;           ///< per-attempt loss probability in the bad state, [0, 1)

  /// Long-run fraction of attempts made in the bad state.
  [[nodiscard]] double stationary_bad_fraction() const noexcept {
    return p_good_to_bad / (p_good_to_bad + p_bad_to_good);
  }

  void validate() const {
    detail::check_range("gilbert_elliott.p_good_to_bad", p_good_to_bad, 0.0, 1.0, "in [0, 1]");
    detail::check_range("gilbert_elliott.p_bad_to_good", p_bad_to_good, 0.0, 1.0, "in [0, 1]");
    if (p_good_to_bad + p_bad_to_good <= 0.0)
      throw invalid_argument(
          "gilbert_elliott.p_good_to_bad + p_bad_to_good must be > 0 (a channel that never moves has no "
          "stationary distribution), got 0");
    detail::check_non_negative("gilbert_elliott.good_rtt_seconds", good_rtt_seconds);
    detail::check_non_negative("gilbert_elliott.bad_rtt_seconds", bad_rtt_seconds);
    detail::check_below("gilbert_elliott.good_loss", good_loss, 0.0, 1.0, "in [0, 1)");
    detail::check_below("gilbert_elliott.bad_loss", bad_loss, 0.0, 1.0, "in [0, 1)");
  }
};

/// A window `[start, end)` of virtual time during which the link is down.
///
/// ```cpp
/// specdec::hybrid::outage_window w{.start_seconds = 1.0, .end_seconds = 3.5};
/// ```
struct outage_window {
  double start_seconds = 0.0;
  double end_seconds = 0.0;
  [[nodiscard]] bool contains(double t) const noexcept { return t >= start_seconds && t < end_seconds; }
};

/// Everything that shapes a simulated link.
///
/// RTT model: by default a fixed `rtt_seconds`. With `jitter_sigma > 0` every attempt's
/// RTT is lognormal with median `rtt_seconds` (= `rtt_seconds * exp(sigma * N(0,1))`).
/// With a `channel` (Gilbert-Elliott) the base RTT and the loss probability come from the
/// channel's current state instead of `rtt_seconds` / `loss_probability` (jitter, if any,
/// still multiplies the state's RTT).
///
/// One transmission attempt of `b` payload bytes takes `rtt / 2 + (b + header_bytes) * 8 /
/// bandwidth`; a delivered message adds `message_overhead_seconds` once, the fixed time its
/// endpoints spend handing it over (framing and parsing, socket and thread hand-offs, a
/// proxy hop) that no RTT or bandwidth accounts for. It defaults to 0 (a pure network
/// link); measure it on a real deployment as the excess of a round trip at RTT 0 over its
/// compute, halved (two messages per round). A request that opens a connection of its own
/// (`open_request`: the simulator calls it once per cloud stream, i.e. per HTTP request)
/// adds `request_overhead_seconds` once, the fixed cost of setting up that request beyond
/// its messages (the connection through any proxy, the server's worker hand-off, header
/// parsing); it defaults to 0, and is measured on a real deployment as the excess of a
/// streamed request's time to first token at RTT 0 over its simulation without it. A lost
/// attempt costs `retransmit_timeout_seconds` and is retried, up to
/// `max_retransmits` times; after that the send fails (`delivered = false`). A send that
/// starts inside an outage window, or that draws an outage with `outage_probability`,
/// fails after `outage_timeout_seconds`.
///
/// ```cpp
/// auto cfg = specdec::hybrid::link_config::lte();
/// cfg.loss_probability = 0.01;
/// cfg.outages.push_back({.start_seconds = 2.0, .end_seconds = 4.0});
/// cfg.validate();
/// specdec::hybrid::simulated_link link(cfg, /*seed=*/1);
/// ```
struct link_config {
  double rtt_seconds = 0.015;              ///< fixed RTT, or the median RTT with jitter
  double jitter_sigma = 0.0;               ///< sigma of log(RTT); 0 = no jitter
  std::optional<gilbert_elliott> channel;  ///< two-state channel; overrides rtt/loss when set
  double up_bps = 100e6;                   ///< uplink bandwidth, bits/s
  double down_bps = 100e6;                 ///< downlink bandwidth, bits/s
  std::size_t header_bytes = 40;           ///< per-message (per-attempt) overhead bytes
  double message_overhead_seconds = 0.0;   ///< per delivered message: endpoint handling time, >= 0
  double request_overhead_seconds = 0.0;   ///< per `open_request` (an HTTP request): its set-up, >= 0
  /// Per message of a stream, the sender's own handling of it (formatting and writing an
  /// event on the server's core), in series with producing the next one, >= 0. The link
  /// does not charge it; a streaming sender (remote_model's stream mode) adds it to its
  /// clock once per message.
  double stream_message_seconds = 0.0;
  double loss_probability = 0.0;           ///< per-attempt loss probability, [0, 1)
  double retransmit_timeout_seconds = 0.2;  ///< waited per lost attempt before retrying
  std::size_t max_retransmits = 8;         ///< retries after which the send fails
  std::vector<outage_window> outages;      ///< virtual-time windows when the link is down
  double outage_probability = 0.0;         ///< per-send probability of an outage, [0, 1]
  double outage_timeout_seconds = 1.0;     ///< how long a failed send takes to give up

  /// 2 ms RTT, 1 Gbit/s both ways, no loss.
  static link_config lan() { return with(0.002, 1e9, 1e9); }
  /// 15 ms RTT, 100 Mbit/s both ways, no loss.
  static link_config wan() { return with(0.015, 100e6, 100e6); }
  /// 60 ms median RTT with lognormal jitter (sigma 0.25), 20 Mbit/s up, 50 Mbit/s down.
  static link_config lte() {
    auto c = with(0.060, 20e6, 50e6);
    c.jitter_sigma = 0.25;
    return c;
  }
  /// 150 ms RTT, 5 Mbit/s both ways, 2% loss per attempt with a 300 ms retransmit timeout.
  static link_config degraded() {
    auto c = with(0.150, 5e6, 5e6);
    c.loss_probability = 0.02;
    c.retransmit_timeout_seconds = 0.3;
    return c;
  }
  /// The preset called `name`: "lan", "wan", "lte" or "degraded".
  static link_config preset(std::string_view name) {
    if (name == "lan") return lan();
    if (name == "wan") return wan();
    if (name == "lte") return lte();
    if (name == "degraded") return degraded();
    throw invalid_argument("link_config::preset: unknown preset \"" + std::string(name) +
                           "\"; expected one of lan, wan, lte, degraded");
  }

  void validate() const {
    detail::check_non_negative("link_config.rtt_seconds", rtt_seconds);
    detail::check_non_negative("link_config.jitter_sigma", jitter_sigma);
    if (channel) channel->validate();
    detail::check_positive("link_config.up_bps", up_bps);
    detail::check_positive("link_config.down_bps", down_bps);
    detail::check_non_negative("link_config.message_overhead_seconds", message_overhead_seconds);
    detail::check_non_negative("link_config.request_overhead_seconds", request_overhead_seconds);
    detail::check_non_negative("link_config.stream_message_seconds", stream_message_seconds);
    detail::check_below("link_config.loss_probability", loss_probability, 0.0, 1.0, "in [0, 1)");
    detail::check_non_negative("link_config.retransmit_timeout_seconds", retransmit_timeout_seconds);
    for (std::size_t i = 0; i < outages.size(); ++i) {
      const auto& w = outages[i];
      if (!std::isfinite(w.start_seconds) || !(w.end_seconds >= w.start_seconds))
        throw invalid_argument("link_config.outages[" + std::to_string(i) +
                               "] must have a finite start_seconds <= end_seconds, got [" +
                               std::to_string(w.start_seconds) + ", " + std::to_string(w.end_seconds) + ")");
    }
    detail::check_range("link_config.outage_probability", outage_probability, 0.0, 1.0, "in [0, 1]");
    detail::check_non_negative("link_config.outage_timeout_seconds", outage_timeout_seconds);
  }

 private:
  static link_config with(double rtt, double up, double down) {
    link_config c;
    c.rtt_seconds = rtt;
    c.up_bps = up;
    c.down_bps = down;
    return c;
  }
};

/// Sizes of the messages a hybrid decoder exchanges, in payload bytes (headers excluded).
///
/// ```cpp
/// using specdec::hybrid::payload_bytes;
/// std::size_t up = payload_bytes::token_ids(8);        // 32: eight int32 ids
/// std::size_t down = payload_bytes::top_k(8, 16);      // 768: 8 positions x 16 (fp16 prob + int32 id)
/// std::size_t full = payload_bytes::full_distribution(1, 32000);  // 128000: fp32 logits
/// ```
struct payload_bytes {
  /// n int32 token ids: 4n.
  static constexpr std::size_t token_ids(std::size_t n) noexcept { return 4 * n; }
  /// k (fp16 probability, int32 id) pairs per position: n_positions * k * (2 + 4).
  static constexpr std::size_t top_k(std::size_t n_positions, std::size_t k) noexcept {
    return n_positions * k * (2 + 4);
  }
  /// A full fp32 distribution per position: n_positions * vocab * 4.
  static constexpr std::size_t full_distribution(std::size_t n_positions, std::size_t vocab) noexcept {
    return n_positions * vocab * 4;
  }
};

/// Turns measured compute seconds into simulated device / cloud seconds: the same real
/// work, run on this machine, stands for the device after `device_scale` (a slowdown, say
/// 4 for a phone) and for the cloud after `cloud_scale` (say 0.1 for a GPU server).
///
/// ```cpp
/// specdec::hybrid::compute_model cm{.device_scale = 4.0, .cloud_scale = 0.1};
/// link.advance(cm.device(measured_draft_seconds));
/// ```
struct compute_model {
  double device_scale = 1.0;
  double cloud_scale = 1.0;

  [[nodiscard]] double device(double measured_seconds) const { return measured_seconds * device_scale; }
  [[nodiscard]] double cloud(double measured_seconds) const { return measured_seconds * cloud_scale; }

  void validate() const {
    detail::check_positive("compute_model.device_scale", device_scale);
    detail::check_positive("compute_model.cloud_scale", cloud_scale);
  }
};

/// The outcome of one logical message.
///
/// ```cpp
/// auto r = link.send_up(payload_bytes::token_ids(8));
/// if (!r.delivered) continue_on_device();  // the link gave up after r.delay_seconds
/// ```
struct send_result {
  double delay_seconds = 0.0;  ///< virtual time from send to delivery (or to giving up)
  bool delivered = true;       ///< false after an outage or too many losses
  std::size_t attempts = 0;    ///< transmission attempts made (0 for an outage)
};

/// The outcome of `round_trip`: upload, cloud compute, download.
///
/// ```cpp
/// auto rt = link.round_trip(payload_bytes::token_ids(5), payload_bytes::top_k(5, 8), cloud_seconds);
/// double wait = rt.total_seconds;  // up delay + cloud_seconds + down delay
/// ```
struct round_trip_result {
  double total_seconds = 0.0;  ///< virtual time from the first send to the end
  bool delivered = true;       ///< both directions delivered
  send_result up;
  send_result down;  ///< not attempted (attempts == 0, delivered == false) if the upload failed
};

/// Byte and message counters of a `simulated_link`. Bytes are counted on the wire, per
/// transmission attempt, headers included; messages count logical sends.
///
/// ```cpp
/// const auto& k = link.counters();
/// double loss_rate = double(k.retransmits) / double(k.attempts);
/// ```
struct link_counters {
  std::size_t bytes_up = 0;
  std::size_t bytes_down = 0;
  std::size_t messages_up = 0;
  std::size_t messages_down = 0;
  std::size_t round_trips = 0;
  std::size_t retransmits = 0;      ///< attempts beyond the first, both directions
  std::size_t timeouts = 0;         ///< sends that failed (outage or retries exhausted)
  std::size_t attempts = 0;         ///< transmission attempts, both directions
  std::size_t bad_state_attempts = 0;  ///< attempts made in the Gilbert-Elliott bad state
  std::size_t requests = 0;            ///< `open_request` calls (requests with a connection of their own)
};

/// A seeded simulated link with a virtual clock. Every call is deterministic given the
/// config, the seed and the sequence of calls.
///
/// ```cpp
/// specdec::hybrid::simulated_link link(specdec::hybrid::link_config::wan(), /*seed=*/7);
/// auto up = link.send_up(specdec::hybrid::payload_bytes::token_ids(10));
/// // up.delay_seconds == 0.015 / 2 + (40 + 40) * 8 / 100e6 == 0.0075064
/// link.advance(0.020);  // cloud compute
/// auto rt = link.round_trip(64, 32, 0.010);
/// double elapsed = link.now();
/// ```
class simulated_link {
 public:
  explicit simulated_link(link_config config = {}, std::uint64_t seed = 0)
      : config_(std::move(config)), rng_(seed) {
    config_.validate();
  }

  [[nodiscard]] const link_config& config() const noexcept { return config_; }
  [[nodiscard]] const link_counters& counters() const noexcept { return counters_; }
  /// Virtual time, seconds since construction.
  [[nodiscard]] double now() const noexcept { return now_; }
  /// Whether the Gilbert-Elliott channel is currently in its bad state.
  [[nodiscard]] bool in_bad_state() const noexcept { return bad_; }
  /// Whether virtual time `t` lies in a configured outage window.
  [[nodiscard]] bool in_outage_window(double t) const noexcept {
    for (const auto& w : config_.outages)
      if (w.contains(t)) return true;
    return false;
  }

  /// Charges `seconds` of compute (or idle) time to the clock.
  void advance(double seconds) {
    detail::check_non_negative("simulated_link::advance seconds", seconds);
    now_ += seconds;
  }

  /// A request with a connection of its own begins (an HTTP request): charges
  /// `request_overhead_seconds` to the clock, once; its messages are sent as usual.
  ///
  /// ```cpp
  /// link.open_request();
  /// auto up = link.send_up(specdec::hybrid::payload_bytes::token_ids(12));  // the prompt
  /// ```
  void open_request() {
    counters_.requests += 1;
    now_ += config_.request_overhead_seconds;
  }

  /// Device -> cloud message of `bytes` payload bytes; advances the clock by the delay.
  send_result send_up(std::size_t bytes) {
    counters_.messages_up += 1;
    return send(bytes, config_.up_bps, counters_.bytes_up);
  }
  /// Cloud -> device message of `bytes` payload bytes; advances the clock by the delay.
  send_result send_down(std::size_t bytes) {
    counters_.messages_down += 1;
    return send(bytes, config_.down_bps, counters_.bytes_down);
  }

  /// `bytes` more payload on the last message down, counted but not timed: tokens that
  /// join a verdict before it leaves (`remote_mode::run_ahead`).
  void extend_down(std::size_t bytes) noexcept { counters_.bytes_down += bytes; }

  /// A cloud -> device message that leaves the cloud at virtual time `start_seconds`,
  /// which may lie before `now()`: the messages of a pipelined stream, whose sender runs
  /// ahead of the device's clock. The delay is drawn as for `send_down` (outage windows
  /// are checked at the start time); afterwards `now()` is the later of its old value and
  /// the delivery (or give-up) time `start_seconds + delay`.
  ///
  /// ```cpp
  /// // the cloud finished token i at cloud_t; the device sees it when it arrives
  /// auto r = link.send_down_at(cloud_t, specdec::hybrid::payload_bytes::token_ids(1));
  /// ```
  send_result send_down_at(double start_seconds, std::size_t bytes) {
    detail::check_non_negative("simulated_link::send_down_at start_seconds", start_seconds);
    const double before = now_;
    now_ = start_seconds;
    send_result r = send_down(bytes);
    now_ = std::max(before, now_);
    return r;
  }

  /// Upload `up_bytes`, compute `cloud_compute_seconds` in the cloud, download
  /// `down_bytes`. Stops early (delivered == false) if the upload fails.
  round_trip_result round_trip(std::size_t up_bytes, std::size_t down_bytes, double cloud_compute_seconds) {
    detail::check_non_negative("simulated_link::round_trip cloud_compute_seconds", cloud_compute_seconds);
    counters_.round_trips += 1;
    const double start = now_;
    round_trip_result r;
    r.up = send_up(up_bytes);
    if (!r.up.delivered) {
      r.down.delivered = false;
      r.delivered = false;
      r.total_seconds = now_ - start;
      return r;
    }
    advance(cloud_compute_seconds);
    r.down = send_down(down_bytes);
    r.delivered = r.down.delivered;
    r.total_seconds = now_ - start;
    return r;
  }

 private:
  send_result send(std::size_t bytes, double bps, std::size_t& byte_counter) {
    send_result r;
    const bool window = in_outage_window(now_);
    const bool drawn = config_.outage_probability > 0.0 && rng_.bernoulli(config_.outage_probability);
    if (window || drawn) {
      r.delivered = false;
      r.delay_seconds = config_.outage_timeout_seconds;
      counters_.timeouts += 1;
      now_ += r.delay_seconds;
      return r;
    }
    const double serialisation = static_cast<double>(bytes + config_.header_bytes) * 8.0 / bps;
    for (std::size_t attempt = 0; attempt <= config_.max_retransmits; ++attempt) {
      double rtt = config_.rtt_seconds;
      double loss = config_.loss_probability;
      if (config_.channel) {
        const auto& ge = *config_.channel;
        bad_ = bad_ ? !rng_.bernoulli(ge.p_bad_to_good) : rng_.bernoulli(ge.p_good_to_bad);
        rtt = bad_ ? ge.bad_rtt_seconds : ge.good_rtt_seconds;
        loss = bad_ ? ge.bad_loss : ge.good_loss;
        if (bad_) counters_.bad_state_attempts += 1;
      }
      if (config_.jitter_sigma > 0.0) rtt *= std::exp(config_.jitter_sigma * rng_.normal());
      r.attempts += 1;
      counters_.attempts += 1;
      if (attempt > 0) counters_.retransmits += 1;
      byte_counter += bytes + config_.header_bytes;
      const bool lost = loss > 0.0 && rng_.bernoulli(loss);
      if (!lost) {
        r.delay_seconds += rtt / 2.0 + serialisation + config_.message_overhead_seconds;
        now_ += r.delay_seconds;
        return r;
      }
      r.delay_seconds += config_.retransmit_timeout_seconds;
    }
    r.delivered = false;
    counters_.timeouts += 1;
    now_ += r.delay_seconds;
    return r;
  }

  link_config config_;
  random_source rng_;
  link_counters counters_{};
  double now_ = 0.0;
  bool bad_ = false;
};

}  // namespace specdec::hybrid
