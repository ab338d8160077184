#pragma once
/// \file run_ahead.hpp
/// Split decoding's two regimes as a device sees them, and the rule that picks one.
///
/// - Drafting rounds: the device drafts n tokens, the cloud verifies them in one forward
///   (a step of n + 1 rows) and answers with E(n, a) tokens on average, then waits for the
///   device's next block: E(n, a) tokens every turnaround plus a step.
/// - Run ahead (no drafts; specdec-serve's `--run-ahead`): the cloud decodes the session a
///   token a step, at most `depth` tokens past its last verdict, and each verdict carries
///   what was decoded by the time the request arrived: a token every step, at most `depth`
///   every turnaround.
///
/// The turnaround is the time from a verdict leaving the cloud to the device's next
/// request reaching it (the round trip, the messages' handling, and while drafting the
/// device's drafting). Over a slow link the round trip dominates a drafting round, so run
/// ahead the device receives its tokens several times faster, while drafting saves the
/// cloud forwards. `run_ahead_rule` chooses run ahead when it is `device_gain` times
/// faster for the device; the server applies it per session (`--device-draft-gain`) and
/// the simulator (session.hpp) predicts the same choice.
///
/// ```cpp
/// using namespace specdec::hybrid;
/// const double drafting = drafting_seconds_per_token(0.030, 0.0025, 4, 0.7);  // 32.5 ms / 2.77
/// const double ahead = run_ahead_seconds_per_token(0.030, 0.0021, 32);         // 2.1 ms
/// bool run = run_ahead_rule{}.prefers_run_ahead(drafting, ahead);              // true
/// ```
#include <algorithm>
#include <cstddef>
#include <string>

#include "specdec/error.hpp"

namespace specdec::hybrid {

/// E(n, a) = 1 + a + ... + a^n: expected tokens of a round with n drafts, each accepted
/// with probability a independently (the verdict's own token included).
///
/// ```cpp
/// double e = specdec::hybrid::expected_tokens(3, 0.5);  // 1.875
/// ```
[[nodiscard]] inline double expected_tokens(std::size_t n, double a) {
  double e = 0.0, ai = 1.0;
  for (std::size_t i = 0; i <= n; ++i, ai *= a) e += ai;
  return e;
}

/// Seconds between the tokens a device receives from drafting rounds of `n` drafts at
/// per-position acceptance `a`: (turnaround + step) / E(n, a), `step` the cloud's forward
/// of the round's n + 1 rows.
///
/// ```cpp
/// double s = specdec::hybrid::drafting_seconds_per_token(0.030, 0.0025, 4, 0.7);
/// ```
[[nodiscard]] inline double drafting_seconds_per_token(double turnaround, double step, std::size_t n, double a) {
  return (std::max(turnaround, 0.0) + std::max(step, 0.0)) / expected_tokens(n, std::clamp(a, 0.0, 1.0));
}

/// Seconds between the tokens a device receives from a session run ahead: a token every
/// `step` (the cloud's forward of one row), at most `depth` (>= 1) every `turnaround`.
///
/// ```cpp
/// double s = specdec::hybrid::run_ahead_seconds_per_token(0.150, 0.0021, 32);  // 4.7 ms: 32 per round trip
/// ```
[[nodiscard]] inline double run_ahead_seconds_per_token(double turnaround, double step, std::size_t depth) {
  return std::max(std::max(step, 0.0), std::max(turnaround, 0.0) / static_cast<double>(std::max<std::size_t>(depth, 1)));
}

/// When a split session runs ahead instead of drafting: when its device would receive its
/// tokens `device_gain` times faster that way; and how the server then serves it
/// (specdec-serve's `--run-ahead` and `--run-ahead-reply`): at most `depth` tokens decoded
/// past a verdict, and a request that finds fewer than `reply` decoded waits for them, as
/// it waits for the generation's last tokens when they are due within its turnaround.
///
/// ```cpp
/// specdec::hybrid::run_ahead_rule rule{.depth = 32, .device_gain = 1.2};
/// rule.validate();
/// bool run = rule.prefers_run_ahead(/*drafting=*/0.0117, /*run_ahead=*/0.0021);  // true
/// ```
struct run_ahead_rule {
  std::size_t depth = 32;    ///< tokens decoded past the last verdict, >= 1
  double device_gain = 2.0;  ///< run ahead when it is this many times faster, >= 1 (specdec-serve's default)
  std::size_t reply = 4;     ///< a request waits for this many decoded tokens, >= 1

  /// Whether run ahead wins, given both regimes' seconds per token.
  [[nodiscard]] bool prefers_run_ahead(double drafting_seconds, double run_ahead_seconds) const noexcept {
    return drafting_seconds >= device_gain * run_ahead_seconds;
  }
  void validate() const {
    if (depth < 1 || !(device_gain >= 1.0) || reply < 1)
      throw invalid_argument("run_ahead_rule: depth >= 1, device_gain >= 1 and reply >= 1 expected, got depth = " +
                             std::to_string(depth) + ", device_gain = " + std::to_string(device_gain) +
                             ", reply = " + std::to_string(reply));
  }
};

}  // namespace specdec::hybrid
