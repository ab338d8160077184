// Tests for server/specdec_serve/batching.hpp: a verify block is held while other
// sessions' blocks are due, never longer than the documented bound (a fraction of the
// expected step, capped), never while completions have work, never for nobody; and a
// session counts as due only within `due_factor` of its measured turnaround. Then in the
// engine: two sessions' blocks sent apart share one forward when held (one forward more
// without the hold), with the same verdicts, and a block whose peer never comes is
// released at the bound.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec_serve/batching.hpp"
#include "specdec_serve/engine.hpp"

namespace {
using namespace specdec::serve;

// t(R) = 1 ms up to 8 rows, then 0.125 ms per row (linear between the points).
cost_curve knee() {
  cost_curve t;
  t.observe(1, 0.001);
  t.observe(8, 0.001);
  t.observe(16, 0.002);
  t.observe(32, 0.004);
  return t;
}

TEST(hold_seconds, holds_a_fraction_of_the_step_the_due_blocks_would_join) {
  const cost_curve t = knee();
  const hold_policy p{.hold_fraction = 0.5, .max_hold_seconds = 0.1};
  // One block of 2 rows waits, 3 more are due: the step would carry 2 + 3 * 2 = 8 rows,
  // t(8) = 1 ms, so the block may wait 0.5 ms from its arrival.
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.0005);
  // ... of which 0.2 ms have passed.
  EXPECT_NEAR(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 0.0002}),
              0.0003, 1e-15);
  // Two blocks of 8 rows in all, 2 due at 4 rows each: 16 rows, t = 2 ms, half of it.
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 2, .ready_rows = 8, .due_blocks = 2}), 0.001);
  // The bound spent: run now.
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 0.0005}),
            0.0);
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 1.0}), 0.0);
}

TEST(hold_seconds, ends_when_the_due_blocks_are_overdue) {
  const cost_curve t = knee();
  const hold_policy p{.hold_fraction = 0.5, .max_hold_seconds = 0.1};
  // The bound leaves 0.5 ms, but the last due session is overdue in 0.1 ms.
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .due_for_seconds = 0.0001}),
                   0.0001);
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .due_for_seconds = -0.001}), 0.0);
}

TEST(hold_seconds, never_longer_than_the_cap) {
  const cost_curve t = knee();
  const hold_policy p{.hold_fraction = 10.0, .max_hold_seconds = 0.003};
  // 10 * t(8) = 10 ms, capped at 3 ms.
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.003);
  EXPECT_DOUBLE_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .oldest_wait_seconds = 0.001}),
                   0.002);
}

TEST(hold_seconds, does_not_hold_without_reason) {
  const cost_curve t = knee();
  const hold_policy p;
  EXPECT_GT(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 1}), 0.0);
  // Nobody due, no block waiting, a completion in the step, holding switched off, no
  // measured curve: run now.
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 0}), 0.0);
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 0, .ready_rows = 5, .due_blocks = 3}), 0.0);
  EXPECT_EQ(hold_seconds(p, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3, .completions = 1}), 0.0);
  EXPECT_EQ(hold_seconds({.hold_fraction = 0.0}, t, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.0);
  EXPECT_EQ(hold_seconds(p, cost_curve{}, {.ready_blocks = 1, .ready_rows = 2, .due_blocks = 3}), 0.0);
}

TEST(block_due, within_due_factor_turnarounds_of_the_last_verdict) {
  const hold_policy p{.due_factor = 2.0};
  EXPECT_TRUE(block_due(p, 0.0015, 0.001));
  EXPECT_TRUE(block_due(p, 0.002, 0.001));
  EXPECT_FALSE(block_due(p, 0.0021, 0.001));  // overdue: its device is not drafting for this server now
  EXPECT_TRUE(block_due(p, 0.005, 0.0));      // no turnaround measured yet: due for max_hold_seconds (10 ms)
  EXPECT_FALSE(block_due(p, 0.011, 0.0));
  EXPECT_FALSE(block_due({.due_factor = 0.5}, 0.0006, 0.001));
  // How much longer: 2 turnarounds less the time since the verdict; unmeasured: the cap.
  EXPECT_DOUBLE_EQ(due_for(p, 0.0015, 0.001), 0.0005);
  EXPECT_DOUBLE_EQ(due_for(p, 0.004, 0.0), 0.006);
}

TEST(hold_policy, is_validated) {
  EXPECT_NO_THROW(hold_policy{}.validate());
  EXPECT_NO_THROW((hold_policy{.hold_fraction = 0.0, .max_hold_seconds = 0.0}.validate()));
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (const hold_policy bad : {hold_policy{.hold_fraction = -0.1}, hold_policy{.hold_fraction = nan},
                                hold_policy{.max_hold_seconds = -1.0}, hold_policy{.max_hold_seconds = inf},
                                hold_policy{.due_factor = 0.0}, hold_policy{.due_factor = nan}}) {
    try {
      bad.validate();
      ADD_FAILURE() << "accepted a bad hold_policy";
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("hold_policy"), std::string::npos) << e.what();
    }
  }
}

namespace wire = specdec::hybrid::wire;
using specdec::token_id;

/// An engine on stories260K with two open greedy sessions holding only BOS (so opening
/// feeds nothing: every forward after the opens is a verify step). Both are due from
/// their `session_opened` on. Nothing is held before the step-time curve has a point, and
/// this engine does not calibrate: a third session verifies once, alone, and closes first.
struct two_sessions {
  specdec::cpu::batched_transformer model{std::string(SPECDEC_MODELS_DIR) + "/stories260K.bin", {.threads = 1}};
  specdec::serve::metrics_registry metrics;
  specdec::serve::engine<specdec::cpu::batched_transformer> eng;
  wire::session_id a{}, b{};
  explicit two_sessions(hold_policy hold)
      : eng(model, {.model_id = "m", .speculation = {.fixed = 2, .calibrate = false}, .hold = hold}, metrics) {
    eng.start();
    const wire::session_id c = open();
    (void)round(c, 1, {}, {5});
    eng.close(c, {});
    a = open();
    b = open();
  }
  wire::session_id open() {
    const wire::message m = eng.open({.prefix = {1}}, {});
    return std::get<wire::session_opened>(m).id;
  }
  static wire::verdict verdict_of(const wire::message& m) {
    if (const auto* v = std::get_if<wire::verdict>(&m)) return *v;
    ADD_FAILURE() << "no verdict: " << wire::name_of(m);
    return {};
  }
  double forwards() { return metrics.value("specdec_step_seconds"); }
  /// One round of session `id`: commit `delta`, verify `draft`.
  wire::verdict round(const wire::session_id& id, std::uint64_t seq, std::vector<token_id> delta,
                      std::vector<token_id> draft) {
    return verdict_of(eng.verify(id, {}, {.seq = seq, .committed = std::move(delta), .draft = std::move(draft)}, seq));
  }
};

TEST(engine_hold, blocks_of_two_sessions_sent_apart_share_one_forward) {
  std::vector<wire::verdict> verdicts[2];
  double forwards[2] = {0, 0};
  for (const bool hold : {true, false}) {
    two_sessions s(hold ? hold_policy{.hold_fraction = 1e6, .max_hold_seconds = 30.0} : hold_policy{.hold_fraction = 0.0});
    const double f0 = s.forwards();
    std::atomic<bool> b_sent{false}, a_after_b{false};
    wire::verdict va;
    std::thread ta([&] {
      va = s.round(s.a, 1, {}, {70, 71});
      a_after_b = b_sent.load();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    b_sent = true;
    const wire::verdict vb = s.round(s.b, 1, {}, {80});
    ta.join();
    forwards[hold ? 0 : 1] = s.forwards() - f0;
    verdicts[hold ? 0 : 1] = {va, vb};
    EXPECT_EQ(a_after_b.load(), hold);  // held: A's verdict waited for B's block
  }
  EXPECT_EQ(forwards[0], 1.0);  // one forward for both blocks
  EXPECT_EQ(forwards[1], 2.0);  // one each
  for (std::size_t i = 0; i < 2; ++i) {  // batching changes no verdict
    EXPECT_EQ(verdicts[0][i].accepted, verdicts[1][i].accepted) << i;
    EXPECT_EQ(verdicts[0][i].next, verdicts[1][i].next) << i;
  }
}

TEST(engine_hold, sessions_in_lockstep_share_every_forward_with_unchanged_verdicts) {
  // Two devices each run 6 rounds and close; with the hold every round of both is one
  // forward (due_factor large: a descheduled thread is never taken for a gone device).
  constexpr std::uint64_t rounds = 6;
  std::vector<std::pair<std::size_t, token_id>> got[2][2];
  double forwards = 0;
  for (const bool hold : {true, false}) {
    two_sessions s(hold ? hold_policy{.hold_fraction = 1e6, .max_hold_seconds = 30.0, .due_factor = 1e6}
                        : hold_policy{.hold_fraction = 0.0});
    const double f0 = s.forwards();
    const auto device = [&](const wire::session_id& id, token_id base, auto& out) {
      std::vector<token_id> delta;
      for (std::uint64_t seq = 1; seq <= rounds; ++seq) {
        const std::vector<token_id> draft{static_cast<token_id>(base + seq), static_cast<token_id>(base + 2 * seq)};
        const wire::verdict v = s.round(id, seq, delta, draft);
        out.emplace_back(v.accepted, v.next);
        delta.assign(draft.begin(), draft.begin() + v.accepted);  // what the device commits
        delta.push_back(v.next);
      }
      s.eng.close(id, {});
    };
    std::thread ta([&] { device(s.a, 40, got[hold ? 0 : 1][0]); });
    std::thread tb([&] { device(s.b, 90, got[hold ? 0 : 1][1]); });
    ta.join();
    tb.join();
    if (hold) forwards = s.forwards() - f0;
  }
  EXPECT_EQ(forwards, static_cast<double>(rounds));
  EXPECT_EQ(got[0][0], got[1][0]);
  EXPECT_EQ(got[0][1], got[1][1]);
  EXPECT_EQ(got[0][0].size(), rounds);
}

TEST(engine_hold, a_block_whose_peer_never_comes_is_released_at_the_bound) {
  two_sessions s(hold_policy{.hold_fraction = 1e6, .max_hold_seconds = 0.2});
  const auto t0 = std::chrono::steady_clock::now();
  const wire::verdict v = s.round(s.a, 1, {}, {70});
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(v.seq, 1u);
  EXPECT_GE(waited, 0.1);   // held for B, which was due (for 0.2 s after it opened) ...
  EXPECT_LT(waited, 10.0);  // ... but not beyond the bound (generous: a loaded host stalls)
  EXPECT_GT(s.metrics.value("specdec_step_hold_seconds_total"), 0.19);
}

}  // namespace
