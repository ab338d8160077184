#pragma once
/// \file hybrid/link_monitor.hpp
/// What the device knows about its link, measured from the requests it really makes: the
/// round-trip time (an EWMA and percentiles over a window), the bytes it moved, the link's
/// capacity where the measurements show it, and failures. `estimate()` turns it into the
/// `link_estimate` an arbiter decides from, so routing reads a measurement, not a preset.
/// The clients feed it (`remote_verifier`, `pipelined_split_decoder`, `net_session`); the
/// simulated link (link.hpp) stays for what-if studies.
///
/// Capacity: a round trip of b bytes takes about rtt0 + 8 b / bps, so over the window the
/// slope of RTT against bytes is 8 / bps. Small messages of similar size do not show it
/// (the slope drowns in RTT noise); the estimate then keeps the prior's rates rather than
/// dividing bytes by time, which would mistake an idle link for a slow one.
///
/// ```cpp
/// specdec::hybrid::link_monitor mon;
/// mon.record(0.031, /*bytes_up=*/40, /*bytes_down=*/12);
/// specdec::hybrid::link_estimate e = mon.estimate();  // e.rtt_seconds ~ 0.031
/// double p95 = mon.rtt_quantile(0.95);
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
    const double bytes = static_cast<double>(bytes_up + bytes_down);
    if (window_.size() < opt_.window) {
      window_.push_back(rtt_seconds);
      sizes_.push_back(bytes);
    } else {
      window_[samples_ % opt_.window] = rtt_seconds;
      sizes_[samples_ % opt_.window] = bytes;
    }
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
  /// Bits moved per second of round trips: how much of the link the requests used (not
  /// its capacity); 0 before any sample.
  [[nodiscard]] double goodput_bps() const noexcept {
    return busy_seconds_ > 0.0 ? 8.0 * static_cast<double>(bytes_up_ + bytes_down_) / busy_seconds_ : 0.0;
  }
  /// The capacity the window shows (see the file comment), in bits per second, or 0 when
  /// its RTTs do not grow with message size beyond three standard errors.
  [[nodiscard]] double capacity_bps() const {
    const std::size_t n = window_.size();
    if (n < 8) return 0.0;
    double mx = 0.0, my = 0.0;
    for (std::size_t i = 0; i < n; ++i) mx += sizes_[i], my += window_[i];
    mx /= static_cast<double>(n);
    my /= static_cast<double>(n);
    double sxx = 0.0, sxy = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      sxx += (sizes_[i] - mx) * (sizes_[i] - mx);
      sxy += (sizes_[i] - mx) * (window_[i] - my);
    }
    if (!(sxx > 0.0)) return 0.0;
    const double slope = sxy / sxx, intercept = my - slope * mx;
    double sse = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      const double r = window_[i] - intercept - slope * sizes_[i];
      sse += r * r;
    }
    const double se = std::sqrt(sse / static_cast<double>(n - 2) / sxx);
    return slope > 0.0 && slope > 3.0 * se ? 8.0 / slope : 0.0;
  }
  /// The link as an arbiter sees it: the EWMA RTT, and the measured capacity for both
  /// directions when the window shows one (the prior's rates otherwise).
  [[nodiscard]] link_estimate estimate() const {
    link_estimate e = opt_.prior;
    if (samples_ == 0) return e;
    e.rtt_seconds = ewma_;
    if (const double c = capacity_bps(); c > 0.0) e.up_bps = e.down_bps = c;
    return e;
  }

 private:
  link_monitor_options opt_;
  double ewma_ = 0.0;
  std::vector<double> window_, sizes_;  ///< RTTs and bytes of the last `window` samples
  std::size_t samples_ = 0, failures_ = 0;
  std::uint64_t bytes_up_ = 0, bytes_down_ = 0;
  double busy_seconds_ = 0.0;
};

}  // namespace specdec::hybrid
