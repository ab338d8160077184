#pragma once
/// \file hybrid/link_monitor.hpp
/// What the device knows about its link, measured from the requests it really makes: the
/// round-trip time (an EWMA and percentiles over a window), the throughput of the bytes
/// it moved, and failures. `estimate()` turns it into the `link_estimate` an arbiter
/// decides from, so routing reads a measurement, not a preset. The simulated link
/// (link.hpp) stays for what-if studies.
///
/// ```cpp
/// specdec::hybrid::link_monitor mon;
/// mon.record(0.031, /*bytes_up=*/40, /*bytes_down=*/12);
/// specdec::hybrid::link_estimate e = mon.estimate();  // e.rtt_seconds ~ 0.031
/// ```
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "specdec/hybrid/arbiter.hpp"
#include "specdec/validation.hpp"

namespace specdec::hybrid {

/// Knobs of a `link_monitor`.
struct link_monitor_options {
  double ewma_weight = 0.2;  ///< weight of the newest RTT sample in the EWMA, in (0, 1]
  std::size_t window = 256;  ///< RTT samples kept for percentiles, >= 1
  /// What `estimate()` says before any sample: the prior an arbiter starts from.
  link_estimate prior{};

  void validate() const {
    specdec::detail::check_range("link_monitor_options.ewma_weight", ewma_weight, 1e-9, 1.0, "in (0, 1]");
    if (window == 0) specdec::detail::fail_knob("link_monitor_options.window", "0", ">= 1");
    prior.validate();
  }
};

/// Measured link state: RTT samples of successful round trips, bytes moved, failures.
class link_monitor {
 public:
  explicit link_monitor(link_monitor_options o = {}) : opt_(o) { opt_.validate(); }

  /// A successful round trip of `rtt_seconds` that moved the given bytes (payload and
  /// framing, as counted at the socket).
  void record(double rtt_seconds, std::uint64_t bytes_up, std::uint64_t bytes_down) {
    specdec::detail::check_non_negative("link_monitor::record rtt_seconds", rtt_seconds);
    ewma_ = samples_ == 0 ? rtt_seconds : (1.0 - opt_.ewma_weight) * ewma_ + opt_.ewma_weight * rtt_seconds;
    if (window_.size() < opt_.window) window_.push_back(rtt_seconds);
    else window_[samples_ % opt_.window] = rtt_seconds;
    ++samples_;
    bytes_up_ += bytes_up;
    bytes_down_ += bytes_down;
    busy_seconds_ += rtt_seconds;
  }
  /// A request that failed (timeout, refused connection, server error).
  void record_failure() noexcept { ++failures_; }

  [[nodiscard]] std::size_t samples() const noexcept { return samples_; }
  [[nodiscard]] std::size_t failures() const noexcept { return failures_; }
  [[nodiscard]] std::uint64_t bytes_up() const noexcept { return bytes_up_; }
  [[nodiscard]] std::uint64_t bytes_down() const noexcept { return bytes_down_; }
  /// The RTT's exponentially weighted moving average (the prior's RTT before any sample).
  [[nodiscard]] double rtt_ewma() const noexcept { return samples_ == 0 ? opt_.prior.rtt_seconds : ewma_; }
  /// The q-quantile (q in [0, 1]) of the RTTs in the window, nearest rank.
  [[nodiscard]] double rtt_quantile(double q) const {
    specdec::detail::check_range("link_monitor::rtt_quantile q", q, 0.0, 1.0, "in [0, 1]");
    if (window_.empty()) return opt_.prior.rtt_seconds;
    std::vector<double> s(window_);
    const std::size_t i = std::min(s.size() - 1, static_cast<std::size_t>(std::ceil(q * static_cast<double>(s.size()))) -
                                                     (q > 0.0 ? 1 : 0));
    std::nth_element(s.begin(), s.begin() + static_cast<std::ptrdiff_t>(i), s.end());
    return s[i];
  }
  /// The link as an arbiter sees it: the EWMA RTT and the measured byte rates over the
  /// time spent in round trips (the prior's rates while too little has been measured).
  [[nodiscard]] link_estimate estimate() const {
    link_estimate e = opt_.prior;
    if (samples_ == 0) return e;
    e.rtt_seconds = ewma_;
    if (busy_seconds_ > 0.0 && bytes_up_ > 0) e.up_bps = std::max(1.0, 8.0 * static_cast<double>(bytes_up_) / busy_seconds_);
    if (busy_seconds_ > 0.0 && bytes_down_ > 0)
      e.down_bps = std::max(1.0, 8.0 * static_cast<double>(bytes_down_) / busy_seconds_);
    return e;
  }

 private:
  link_monitor_options opt_;
  double ewma_ = 0.0;
  std::vector<double> window_;
  std::size_t samples_ = 0, failures_ = 0;
  std::uint64_t bytes_up_ = 0, bytes_down_ = 0;
  double busy_seconds_ = 0.0;
};

}  // namespace specdec::hybrid
