#pragma once
/// \file specdec_serve/speculation.hpp
/// The server's dynamic speculation: how many draft tokens it announces it will verify
/// per round, from its measured step-time curve t(R) (seconds of one batched forward of R
/// rows) and its current load.
///
/// With S_n split-decoding sessions in a step when they verify n drafts each, C completion
/// streams decoding and a per-position acceptance rate a (pooled over the active sessions:
/// every session is told the same n, `pooled_acceptance`), such a step costs
/// t(S_n (n + 1) + C) and yields S_n E(n, a) + C tokens, E(n, a) = 1 + a + ... + a^n the
/// expected tokens of a round. The server announces the n in [0, max_draft] that
/// maximises tokens per server-second,
///
///     n* = argmax_n (S_n E(n, a) + C) / t(S_n (n + 1) + C),
///
/// and 0 unless that maximum beats n = 0 by `speculation_options::min_gain`: at n = 0 (with
/// anticipation) a session costs one row per token like a completion stream, parity with
/// cloud-only by construction, while a drafting regime's gain rests on predicted batches
/// and acceptance, whose errors a small predicted gain does not survive. Once drafting,
/// drafting goes on while it promises `keep_gain` (<= min_gain): hysteresis
/// (`speculation_options::keep_gain`).
///
/// S_n is not the count of sessions merely active: a session joins the steps its device
/// keeps up with (`expected_batch`, from each session's measured turnaround; for drafting
/// at least the batch measured while sessions drafted, `batch_estimate`). Drafting
/// sessions wait for their devices between rounds; at n = 0 the engine anticipates each
/// session's next row, so the session joins every step its device keeps up with, and
/// every step when it runs the session ahead (`speculation_options::run_ahead`), as a
/// completion stream does. Both batches are predicted rather than measured because the
/// regime not in force cannot be measured, and a measurement kept from an earlier load
/// would hold the announcement in whichever regime it was measured.
///
/// The rule counts tokens per second of forwards, not what the devices receive: at low
/// load over a slow link drafting saves forwards while each round trip yields a few
/// tokens, where a session run ahead gets a token a step. `device_rate` predicts the
/// devices' side; with `speculation_options::device_gain` set, drafts are not announced
/// while it favours none by that factor.
///
/// so n* = 0 (plain decoding through the verify protocol, one row per token) whenever no
/// draft length would serve more tokens per second than none: under load drafting never
/// costs the server rows (the verify protocol's own cost per token remains). At batch 1 on a bandwidth-bound model t(n + 1)
/// barely exceeds t(1) and n* is large; as the batch grows the forward turns compute-bound,
/// t(S (n + 1)) approaches (n + 1) t(S) and n* falls to 0.
///
/// ```cpp
/// specdec::serve::cost_curve t;
/// t.observe(1, 0.0010);
/// t.observe(16, 0.0030);
/// t.observe(64, 0.0110);
/// std::size_t n = specdec::serve::choose_draft(t, {.sessions = 1}, 0.7, 8);   // large
/// std::size_t m = specdec::serve::choose_draft(t, {.sessions = 16}, 0.7, 8);  // smaller
/// ```
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/hybrid/remote_model.hpp"
#include "specdec/hybrid/run_ahead.hpp"
#include "specdec/hybrid/wire.hpp"

namespace specdec::serve {

/// Seconds of one batched forward as a function of its row count. Two parts:
///
/// - a calibrated shape (`calibrate`): t(R) timed once per row count at start-up, dense
///   where the announcement decides (every R up to a few dozen rows). The knee where the
///   forward turns from streaming weights to compute-bound lies there, between row counts
///   the announcement compares (S sessions x 2 rows against S x 3);
/// - online observations: with a shape, one exponentially weighted mean of measured over
///   calibrated time (the load level); without, one mean (rows, seconds) per
///   power-of-two bucket of rows.
///
/// With a shape, t(R) is the shape times the load level: the level is learnt online while
/// the knee stays where it was measured. One level for all rows, because a ratio per
/// bucket learnt from noisy steps bends the curve (a bucket of small steps measured on a
/// busy moment makes more rows look free). Without a shape, t(R) is
/// `hybrid::step_time_at` of the buckets' means (linear between them, proportional to the
/// rows above the largest: the compute-bound limit, the pessimistic side); an octave's
/// mean sits at its mean rows, so that line cuts across the knee.
class cost_curve {
 public:
  static constexpr std::size_t buckets = 24;

  /// Sets the calibrated shape from (rows, seconds) timings: each made no slower than any
  /// timing of more rows (read like `hybrid::step_time_at`); call it before observing
  /// (observations without a shape feed only the buckets). Fewer rows never cost more than
  /// more rows, so a timing above a later one is noise (a shared host's other tenants only
  /// ever add time) and would otherwise put a bump in the curve for good, since the online
  /// observations learn only the level. The steps of a real curve stay: a kernel that
  /// runs its rows in tiles of 8 makes 9 rows cost about what 16 do, which a convex fit
  /// drawn across the step prices too low.
  void calibrate(std::vector<std::pair<double, double>> timings) {
    std::sort(timings.begin(), timings.end());  // of equal rows the lower first: kept below
    std::vector<std::pair<double, double>> shape;
    for (const auto& p : timings)
      if (shape.empty() || shape.back().first != p.first) shape.push_back(p);
    for (std::size_t i = shape.size(); i-- > 1;) shape[i - 1].second = std::min(shape[i - 1].second, shape[i].second);
    shape_ = std::move(shape);
  }
  /// Records one forward of `rows` rows that took `seconds`. The first observations are
  /// averaged plainly, later ones weighted by `weight` (recent load counts).
  void observe(std::size_t rows, double seconds, double weight = 0.1) {
    if (rows == 0 || !(seconds >= 0.0) || !std::isfinite(seconds)) return;
    if (const double base = hybrid::step_time_at(shape_, static_cast<double>(rows)); base > 0.0) {
      ++level_n_;  // with a shape only the level is read
      level_ += std::max(weight, 1.0 / static_cast<double>(level_n_)) * (seconds / base - level_);
      return;
    }
    bucket& b = b_[std::min<std::size_t>(static_cast<std::size_t>(std::log2(static_cast<double>(rows))), buckets - 1)];
    ++b.n;
    const double w = std::max(weight, 1.0 / static_cast<double>(b.n));
    b.rows += w * (static_cast<double>(rows) - b.rows);
    b.seconds += w * (seconds - b.seconds);
  }
  [[nodiscard]] bool empty() const noexcept {
    return shape_.empty() && std::none_of(b_.begin(), b_.end(), [](const bucket& b) { return b.n > 0; });
  }
  /// Measured over calibrated time (1 before any observation, or without a shape).
  [[nodiscard]] double level() const noexcept { return level_; }
  /// The curve's (rows, seconds) points, by increasing rows: the calibrated shape's rows
  /// at their current t(R), or without a shape the buckets' means.
  [[nodiscard]] std::vector<std::pair<double, double>> points() const {
    std::vector<std::pair<double, double>> p;
    if (!shape_.empty()) {
      for (const auto& [rows, secs] : shape_) p.emplace_back(rows, secs * level_);
      return p;
    }
    for (const bucket& b : b_)
      if (b.n > 0) p.emplace_back(b.rows, b.seconds);
    return p;
  }
  /// t(rows); 0 when nothing was calibrated or observed.
  [[nodiscard]] double seconds(double rows) const {
    if (shape_.empty()) return hybrid::step_time_at(points(), rows);
    return hybrid::step_time_at(shape_, rows) * level_;
  }

 private:
  struct bucket {
    double rows = 0.0, seconds = 0.0;
    std::size_t n = 0;
  };
  std::vector<std::pair<double, double>> shape_;
  double level_ = 1.0;
  std::size_t level_n_ = 0;
  std::array<bucket, buckets> b_{};
};

/// E(n, a) of the file comment (hybrid/run_ahead.hpp).
using hybrid::expected_tokens;

/// The load the announcement is computed for.
struct load {
  double sessions = 1.0;     ///< split-decoding sessions verifying drafts in one step (S_n, n > 0; the asking one included; may be fractional)
  double completions = 0.0;  ///< completion streams decoding
  /// Sessions in one step when none drafts (S_0 of the file comment); absent: `sessions`.
  std::optional<double> undrafted_sessions{};
};

/// The sessions expected in one step (S_n of the file comment) of `step_seconds`, from each
/// active session's turnaround (its device's time from a verdict to its next request; <= 0:
/// not measured yet, counts fully). `anticipated` (n = 0 with anticipation): the session's
/// next row is computed in the step after its verdict and its request answered from it, so
/// it yields a row every max(step, turnaround). Otherwise (drafting, or anticipation off)
/// its request also waits for a step: one block every turnaround + step. A session run
/// R tokens ahead (`speculation_options::run_ahead`) yields R rows per turnaround: pass
/// its turnaround divided by R.
///
/// ```cpp
/// std::vector<double> turnarounds{0.0005, 0.004};  // seconds
/// double s0 = specdec::serve::expected_batch(turnarounds, 0.002, true);   // 1 + 0.5
/// double s1 = specdec::serve::expected_batch(turnarounds, 0.002, false);  // 0.8 + 0.33
/// ```
[[nodiscard]] inline double expected_batch(std::span<const double> turnarounds, double step_seconds, bool anticipated) {
  double s = 0.0;
  for (const double r : turnarounds) {
    if (!(r > 0.0) || !(step_seconds > 0.0)) {
      s += 1.0;
      continue;
    }
    s += std::min(1.0, step_seconds / (anticipated ? r : r + step_seconds));
  }
  return s;
}

/// The batch drafting sessions actually form: an exponentially weighted mean of the verify
/// blocks with drafts per step, over the steps that carry at least one. It complements
/// `expected_batch`, which does not see the hold policy lining blocks up: the announcement
/// prices drafting with the larger of the two (a measurement kept from a lighter load is
/// too small, and then the prediction is the better bound; neither exceeds the sessions
/// active).
///
/// ```cpp
/// specdec::serve::batch_estimate b;
/// b.observe(2);
/// b.observe(4);
/// specdec::serve::load l = b.for_announcement(8, 0);  // sessions = 3.0: the mean batch, not the 8 active
/// ```
class batch_estimate {
 public:
  /// Records a step that carried `verify_blocks` (> 0) verify blocks. The first
  /// observations are averaged plainly, later ones weighted by `weight`.
  void observe(std::size_t verify_blocks, double weight = 0.1) {
    if (verify_blocks == 0) return;
    ++n_;
    blocks_ += std::max(weight, 1.0 / static_cast<double>(n_)) * (static_cast<double>(verify_blocks) - blocks_);
  }
  [[nodiscard]] bool empty() const noexcept { return n_ == 0; }
  /// The mean verify blocks per step (0 before any observation).
  [[nodiscard]] double blocks() const noexcept { return blocks_; }
  /// The load an announcement is priced with when `active` sessions are active and
  /// `completions` streams decode: sessions = the measured mean batch, at least 1 and at
  /// most `active` (the active count while nothing is measured).
  [[nodiscard]] load for_announcement(std::size_t active, std::size_t completions) const {
    const double cap = static_cast<double>(std::max<std::size_t>(active, 1));
    return {n_ == 0 ? cap : std::clamp(blocks_, 1.0, cap), static_cast<double>(completions)};
  }

 private:
  double blocks_ = 0.0;
  std::size_t n_ = 0;
};

/// One session's draft positions so far: accepted, and examined.
struct draft_record {
  double accepted = 0.0;
  double trials = 0.0;
};

/// S_n of the file comment: the sessions in a step when they verify `n` drafts each (at
/// least 1).
[[nodiscard]] inline double sessions_in_step(const load& l, std::size_t n) {
  return std::max(n == 0 ? l.undrafted_sessions.value_or(l.sessions) : l.sessions, 1.0);
}

/// Predicted tokens per second of a step in which the sessions verify `n` drafts each
/// (the file comment's (S_n E(n, a) + C) / t(S_n (n + 1) + C)); 0 on an empty curve.
[[nodiscard]] inline double predicted_rate(const cost_curve& t, const load& l, double acceptance, std::size_t n) {
  const double c = std::max(l.completions, 0.0);
  const double s = sessions_in_step(l, n);
  const double secs = t.seconds(s * static_cast<double>(n + 1) + c);
  return secs > 0.0 ? (s * expected_tokens(n, std::clamp(acceptance, 0.0, 1.0)) + c) / secs : 0.0;
}

/// Tokens per second the devices of the active sessions receive, summed, when every
/// session verifies `n` drafts: a drafting session gets E(n, a) tokens every turnaround
/// plus a step of the drafting batch; at n = 0, `anticipated` (run ahead), a token every
/// step, at most one every `turnarounds[i]` (pass each turnaround divided by the session's
/// run-ahead depth, as for `expected_batch`), else one every turnaround plus a step. The
/// server's rate (`predicted_rate`) counts tokens per second of forwards and leaves out
/// the time a device's round trip keeps the server waiting, so at low load over a slow
/// link the two disagree: drafting saves forwards while each round trip yields a few
/// tokens, where run ahead the device gets a token a step. 0 on an empty curve.
///
/// ```cpp
/// std::vector<double> r{0.030};  // one session, 30 ms from a verdict to its next request
/// double drafting = specdec::serve::device_rate(curve, {.sessions = 1}, 0.7, 3, r, false);
/// std::vector<double> r_ahead{0.030 / 32};
/// double ahead = specdec::serve::device_rate(curve, {.sessions = 1}, 0.7, 0, r_ahead, true);  // far more
/// ```
[[nodiscard]] inline double device_rate(const cost_curve& t, const load& l, double acceptance, std::size_t n,
                                        std::span<const double> turnarounds, bool anticipated) {
  const double step = t.seconds(sessions_in_step(l, n) * static_cast<double>(n + 1) + std::max(l.completions, 0.0));
  if (!(step > 0.0)) return 0.0;
  double sum = 0.0;
  for (const double r : turnarounds)
    sum += 1.0 / (n == 0 && anticipated ? hybrid::run_ahead_seconds_per_token(r, step, 1)
                                        : hybrid::drafting_seconds_per_token(r, step, n, acceptance));
  return sum;
}

/// n* of the file comment; `max_draft` when the curve is still empty. A draft length is
/// chosen only if its predicted tokens per second are at least `min_gain` times n = 0's.
[[nodiscard]] inline std::size_t choose_draft(const cost_curve& t, load l, double acceptance, std::size_t max_draft,
                                              double min_gain = 1.0) {
  if (max_draft == 0 || t.empty()) return max_draft;
  const double plain = predicted_rate(t, l, acceptance, 0);
  std::size_t best_n = 0;
  double best = plain;
  for (std::size_t n = 1; n <= max_draft; ++n)
    if (const double g = predicted_rate(t, l, acceptance, n); g > best) best = g, best_n = n;
  return best >= min_gain * plain ? best_n : 0;
}

/// How the server announces draft lengths.
///
/// ```cpp
/// specdec::serve::speculation_options fixed{.fixed = 4};   // always announce 4
/// ```
struct speculation_options {
  std::size_t max_draft = 8;          ///< never announce more (<= the server's draft_limit)
  std::optional<std::size_t> fixed;   ///< announce this constant instead of n*
  double prior_acceptance = 0.6;      ///< a of a new session ...
  double prior_weight = 4.0;          ///< ... worth this many observed draft positions
  /// Announce drafts only when n*'s predicted tokens per server-second are at least this
  /// many times n = 0's (file comment). On the AMD EPYC family 25 model 17 host (Zen 4),
  /// 4 clients at RTT 0, a predicted gain of about 10 % for one draft served 0.76-0.85x
  /// of cloud-only, where announcing none serves it at parity.
  double min_gain = 1.2;
  /// While the last announcement was a draft length, drafting goes on as long as it
  /// promises at least this many times n = 0's rate (1 <= keep_gain <= min_gain):
  /// hysteresis. A rule flipping between the regimes serves less than either: anticipated
  /// sessions run a step at once, so drafting sessions' blocks are never held for each
  /// other (on the Intel Xeon family 6 model 207 host, 4 clients at RTT 0, flipping at
  /// min_gain served 0.84-1.20x of cloud-only, 1 draft throughout 1.47-1.49x).
  double keep_gain = 1.0;
  /// While drafting, another draft length replaces the last one only if it promises at
  /// least this many times the last one's rate (>= 1): a predicted batch that wavers
  /// between 3 and 4 sessions otherwise moves the length between 1 and 3 drafts, and
  /// every step that mixes them has rows past a multiple of its sessions, which a tiled
  /// kernel charges a whole tile for (on the Intel Xeon family 6 model 207 host, 4
  /// clients, the rule without it announced 2 to 4 drafts in about a tenth of the rounds
  /// of a run whose best length was 1).
  double switch_gain = 1.1;
  /// When set (>= 1), drafts are not announced while the devices would receive their
  /// tokens this many times faster without them (`device_rate`): at low load over a slow
  /// link, a drafting round yields a few tokens a round trip where a session run ahead
  /// gets a token a step, and the server, idle between round trips, has forwards to
  /// spare. The predicted run-ahead rate leaves out the gaps between steps and the
  /// replies' chunks, so a small predicted gain is none: on the Intel Xeon family 6 model
  /// 207 host, 4 clients at RTT 0 (four devices drafting on one CPU) were predicted about
  /// 1.5 times faster run ahead, got their tokens no faster, and with 1.2 the server
  /// served 1.09-1.42x of cloud-only's tokens per forward-second against 1.40-1.53x
  /// without the rule, 1.45-1.82x with 2; over 30 ms the gain is about 5. Unset, the
  /// announcement maximises the server's tokens per second alone. `/health` reports the
  /// rule (with `run_ahead`) so that a simulation of this server (hybrid/session.hpp,
  /// `session_options::run_ahead`) makes the same choice.
  std::optional<double> device_gain = 2.0;
  double active_window_seconds = 1.0; ///< a session counts as active this long after a verify
  bool calibrate = true;              ///< measure t(R) at startup (else learn it online only)
  /// Cached tokens each calibration sequence attends to (clamped to the context): the
  /// shape is measured where verify blocks sit, not at an empty cache.
  std::size_t calibration_position = 32;
  /// The curve learns only from forwards that start at most this long after the previous
  /// forward ended. A forward after the server idled pays a wake-up that a busy server
  /// does not (on a shared host the idle core's caches, and the L3 share holding the
  /// weights, go to other work: kjv-big's one-token forward after 3 ms or more of idling
  /// takes about twice its back-to-back time). That cost does not grow with the rows, so
  /// learnt from idle-gapped forwards the curve makes extra rows look cheap, and the
  /// announcement is priced for a loaded server, where forwards run back to back. (While
  /// the curve is empty every forward is learnt.)
  double busy_gap_seconds = 0.001;
  /// After a verdict announcing 0 drafts, decode the session's next token in the next
  /// step, as a completion stream would, and answer the request that commits exactly
  /// that verdict without drafts from it at once (engine.hpp, "Anticipation").
  bool anticipate = true;
  /// With `anticipate`, the most tokens the engine decodes past a session's last verdict
  /// before its device's next request (>= 1), if the session was opened with protocol
  /// version 4: that request's verdict carries them all as `following` tokens (engine.hpp,
  /// "Run-ahead"), so the session is in every step however long its round trip, as a
  /// completion stream is. Older sessions are anticipated one token deep. The bound is
  /// what a device that stops early (a stop sequence) leaves decoded for nothing; at most
  /// `wire::limits::max_following` + 1, what one verdict carries.
  std::size_t run_ahead = 32;
  /// A request of such a session that arrives while fewer than this many tokens are
  /// decoded ahead waits for them (or for the run-ahead to stop), so at RTT 0, where each
  /// device would ask for every token, a request and its two server wake-ups carry this
  /// many (>= 1; 1 answers at once). The tokens come in chunks, at the same rate.
  std::size_t run_ahead_reply = 4;

  /// The gain a draft length must promise when the last announcement was `last`:
  /// `min_gain` to start drafting, `keep_gain` to go on.
  [[nodiscard]] double gain_threshold(std::size_t last) const noexcept { return last > 0 ? keep_gain : min_gain; }

  /// The draft length to announce after `last` (dynamic rule, not `fixed`): `choose_draft`
  /// with `gain_threshold(last)`, except that a drafting `last` still promising
  /// `keep_gain` stays unless the new length promises `switch_gain` times its rate.
  ///
  /// ```cpp
  /// specdec::serve::speculation_options o;
  /// std::size_t n = o.next_draft(curve, {.sessions = 4}, 0.7, 1);  // 1 unless another length is 10 % better
  /// ```
  [[nodiscard]] std::size_t next_draft(const cost_curve& t, const load& l, double acceptance, std::size_t last) const {
    const std::size_t n = choose_draft(t, l, acceptance, max_draft, gain_threshold(last));
    if (last == 0 || n == 0 || n == last || last > max_draft || t.empty()) return n;
    const double kept = predicted_rate(t, l, acceptance, last);
    if (kept < keep_gain * predicted_rate(t, l, acceptance, 0)) return n;
    return predicted_rate(t, l, acceptance, n) >= switch_gain * kept ? n : last;
  }

  void validate(std::size_t draft_limit) const {
    if (max_draft > draft_limit || (fixed && *fixed > draft_limit))
      throw invalid_argument("speculation_options: max_draft = " + std::to_string(max_draft) +
                             (fixed ? ", fixed = " + std::to_string(*fixed) : std::string()) +
                             "; expected at most draft_limit = " + std::to_string(draft_limit));
    if (!(prior_acceptance >= 0.0 && prior_acceptance <= 1.0) || !(prior_weight > 0.0) ||
        !(active_window_seconds > 0.0) || !(busy_gap_seconds >= 0.0) || !(min_gain >= 1.0) ||
        !(keep_gain >= 1.0 && keep_gain <= min_gain) || !(switch_gain >= 1.0) ||
        (device_gain && !(*device_gain >= 1.0)) || run_ahead < 1 ||
        run_ahead > hybrid::wire::limits{}.max_following + 1 || run_ahead_reply < 1)
      throw invalid_argument("speculation_options: prior_acceptance in [0, 1], prior_weight > 0, "
                             "active_window_seconds > 0, busy_gap_seconds >= 0, min_gain >= 1 and "
                             "1 <= keep_gain <= min_gain, switch_gain >= 1, device_gain unset or >= 1, "
                             "1 <= run_ahead <= " +
                             std::to_string(hybrid::wire::limits{}.max_following + 1) +
                             " (a verdict's next and following tokens), run_ahead_reply >= 1 expected");
  }
};

/// The acceptance rate the announcement is priced with: the draft positions of every
/// active session pooled, with `prior_acceptance` worth `prior_weight` positions. One rate
/// and one hysteresis state for all sessions, so every session is told the same draft
/// length at a given load: each step's rows are a multiple of the sessions in it. Priced
/// one session at a time, a session accepting more than the others was told one draft more,
/// and the steps mixed blocks of 2 and 3 rows whose row counts fall between the kernel's
/// tiles (on the Intel Xeon family 6 model 207 host, 4 clients at RTT 0: 1.28-1.46x of
/// cloud-only, where every session at 1 draft served 1.64-1.73x; docs/hybrid.md).
///
/// ```cpp
/// std::vector<specdec::serve::draft_record> active{{9, 10}, {1, 10}};
/// double a = specdec::serve::pooled_acceptance(active, {});  // (10 + 0.6 * 4) / 24
/// ```
[[nodiscard]] inline double pooled_acceptance(std::span<const draft_record> active, const speculation_options& o) {
  double accepted = o.prior_acceptance * o.prior_weight, trials = o.prior_weight;
  for (const draft_record& r : active) accepted += r.accepted, trials += r.trials;
  return accepted / trials;
}

}  // namespace specdec::serve
