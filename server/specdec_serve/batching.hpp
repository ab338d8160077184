#pragma once
/// \file specdec_serve/batching.hpp
/// When the scheduler runs a step that carries verify blocks: the hold policy that lets
/// the blocks of different split-decoding sessions share one batched forward.
///
/// A completion stream waits inside the server, so it is in every step. A split session is
/// not: after its verdict the device commits, drafts and sends the next block, and that
/// block arrives while the server is idle or busy with someone else's. Run as it arrives,
/// every block pays a forward of its own (a whole t(1..8) for a handful of rows on a
/// bandwidth-bound model) and the server reads its weights once per session instead of
/// once per step. So a verify block may be held, briefly, while other sessions' blocks
/// are due, and they run together. The hold ends as soon as no block is due any more:
/// every due block has arrived, or the sessions that have not sent theirs are overdue.
///
/// The bound: the oldest waiting block is held at most `hold_fraction` of the expected
/// time of the step it would join, t(rows once the due blocks are in) from the measured
/// step-time curve, and never longer than `max_hold_seconds`, counted from when it could
/// first have run: from its arrival, or from the end of the step it arrived during
/// (counted from arrival, a block that came in mid-step has used its hold when the step
/// ends, runs without the sessions just answered, and the sessions settle into two groups
/// taking turns). A session's block is due
/// while the time since the server last answered it (its verdict, or `session_opened`:
/// a device sends its first block right after) is within `due_factor` times its own
/// measured turnaround (answer sent to next block received; a session with no turnaround
/// yet is due for `max_hold_seconds` after its answer, so one opened and abandoned holds
/// nobody for long). Nothing is held while a completion stream has work in the step (the
/// step runs for it anyway; a block that misses it joins the next one), nor when no block
/// is due, nor before the curve has a point. Holding adds at most the bound to a round's latency and costs no forward: the
/// server is idle while it holds.
///
/// ```cpp
/// specdec::serve::cost_curve t;
/// t.observe(8, 0.001);
/// specdec::serve::hold_policy p{.hold_fraction = 0.5};
/// double wait = specdec::serve::hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3});
/// // 0.5 * t(8 rows) = 0.5 ms: the oldest block has just arrived
/// ```
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <string>

#include "specdec/error.hpp"
#include "specdec_serve/speculation.hpp"

namespace specdec::serve {

/// How long verify blocks may wait for each other (see the file comment).
///
/// ```cpp
/// specdec::serve::hold_policy never{.hold_fraction = 0.0};  // run every block as it arrives
/// ```
struct hold_policy {
  double hold_fraction = 1.0;      ///< of the expected step time; 0 = never hold
  double max_hold_seconds = 0.01;  ///< absolute cap on how long the oldest block waits
  double due_factor = 2.0;         ///< a session is due within this many of its turnarounds

  void validate() const {
    if (!(hold_fraction >= 0.0) || !std::isfinite(hold_fraction) || !(max_hold_seconds >= 0.0) ||
        !std::isfinite(max_hold_seconds) || !(due_factor > 0.0) || !std::isfinite(due_factor))
      throw invalid_argument("hold_policy: hold_fraction >= 0, max_hold_seconds >= 0 and due_factor > 0 (all finite) "
                             "expected; got " +
                             std::to_string(hold_fraction) + ", " + std::to_string(max_hold_seconds) + ", " +
                             std::to_string(due_factor));
  }
};

/// What the scheduler sees before a step.
struct hold_view {
  std::size_t ready_blocks = 0;       ///< verify blocks waiting to run
  std::size_t ready_rows = 0;         ///< rows of the step as it stands (prefill chunks included)
  std::size_t due_blocks = 0;         ///< sessions whose next block is due (`block_due`)
  std::size_t completions = 0;        ///< completion streams with work in the step
  /// Since the oldest waiting verify block could first have run: its arrival, or the end
  /// of the step it arrived during (the file comment's bound).
  double oldest_wait_seconds = 0.0;
  /// How long the latest of the due blocks stays due (`due_for`).
  double due_for_seconds = std::numeric_limits<double>::infinity();
};

/// How much longer a session's next verify block is due, `since_verdict` seconds after
/// the server last answered it, with a measured turnaround of `turnaround` seconds (<= 0:
/// not measured yet, due for `max_hold_seconds`); negative: overdue.
[[nodiscard]] inline double due_for(const hold_policy& p, double since_verdict, double turnaround) {
  return (turnaround <= 0.0 ? p.max_hold_seconds : p.due_factor * turnaround) - since_verdict;
}
/// Whether that block is due (`due_for` >= 0).
[[nodiscard]] inline bool block_due(const hold_policy& p, double since_verdict, double turnaround) {
  return due_for(p, since_verdict, turnaround) >= 0.0;
}

/// Seconds the step may still wait for due blocks; 0 = run it now: the bound less the
/// oldest block's wait, and no longer than the due blocks stay due. The due blocks are
/// priced at the waiting blocks' mean rows.
[[nodiscard]] inline double hold_seconds(const hold_policy& p, const cost_curve& t, const hold_view& v) {
  if (v.ready_blocks == 0 || v.due_blocks == 0 || v.completions > 0 || p.hold_fraction <= 0.0) return 0.0;
  const double per_block = static_cast<double>(v.ready_rows) / static_cast<double>(v.ready_blocks);
  const double rows = static_cast<double>(v.ready_rows) + per_block * static_cast<double>(v.due_blocks);
  const double bound = std::min(p.max_hold_seconds, p.hold_fraction * t.seconds(rows));
  return std::max(0.0, std::min(bound - v.oldest_wait_seconds, v.due_for_seconds));
}

}  // namespace specdec::serve
