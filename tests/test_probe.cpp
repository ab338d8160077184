// Tests for include/specdec/hybrid/probe.hpp on the analytic Markov model: the prompt
// probe's summaries equal a direct computation, the trajectory probe's look-ahead is the
// model's own greedy continuation, its summaries are consistent with the rows it saw, a
// stop token ends the look-ahead, and bad input throws.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "specdec/decoder.hpp"
#include "specdec/hybrid/probe.hpp"
#include "specdec/testing/archetypes.hpp"

namespace {
using namespace specdec::hybrid;
using specdec::token_id;
using specdec::testing::markov_model;
namespace tf = trajectory_feature;

// The model's softmax rows after `context` (one row per position of the block).
std::vector<std::vector<float>> rows_after(markov_model& m, const std::vector<token_id>& context) {
  m.truncate(0);
  const auto out = m.forward(context);
  std::vector<std::vector<float>> rows;
  for (std::size_t i = 0; i < out.rows; ++i) {
    std::vector<float> p(out.vocab);
    specdec::softmax(out.row(i), p);
    rows.push_back(p);
  }
  return rows;
}

TEST(probe_request, summaries_equal_a_direct_computation) {
  markov_model m({.vocab = 8, .order = 2, .seed = 5});
  const std::vector<token_id> prompt{1, 4, 5, 2, 6};
  const auto f = probe_request(m, prompt);
  const auto rows = rows_after(m, prompt);
  double h = 0, mp = 0;
  for (const auto& p : rows) h += specdec::entropy(p), mp += *std::max_element(p.begin(), p.end());
  EXPECT_EQ(f.prompt_tokens, 5u);
  EXPECT_NEAR(f.draft_mean_entropy, h / 5, 1e-5);
  EXPECT_NEAR(f.draft_max_prob_mean, mp / 5, 1e-5);
  EXPECT_NEAR(f.draft_first_token_entropy, specdec::entropy(rows.back()), 1e-5);
}

TEST(probe_trajectory, lookahead_is_the_greedy_continuation_and_summaries_match) {
  markov_model m({.vocab = 8, .order = 2, .seed = 5});
  const std::vector<token_id> prompt{1, 4, 5};
  const auto p = probe_trajectory(m, prompt, {.lookahead_tokens = 6});
  specdec::autoregressive_decoder dec(m);
  const auto greedy = dec.generate(prompt, {.max_new_tokens = 6, .stop_at_eos = false}).tokens;
  EXPECT_EQ(p.lookahead, greedy);
  ASSERT_EQ(p.features.extra.size(), tf::count);
  // Recompute the look-ahead rows: the last prompt row, then one row per greedy token.
  std::vector<token_id> ctx(prompt);
  ctx.insert(ctx.end(), greedy.begin(), greedy.end() - 1);
  const auto all = rows_after(m, ctx);
  const std::vector<std::vector<float>> look(all.end() - 6, all.end());
  double h = 0, margin = 0, minp = 1, nll = 0;
  for (const auto& r : look) {
    auto s = r;
    std::sort(s.begin(), s.end(), std::greater<>());
    h += specdec::entropy(r), margin += s[0] - s[1], minp = std::min<double>(minp, s[0]);
  }
  for (std::size_t i = 0; i + 1 < prompt.size(); ++i) nll -= std::log(all[i][static_cast<std::size_t>(prompt[i + 1])]);
  const auto& x = p.features.extra;
  EXPECT_NEAR(x[tf::mean_entropy], h / 6, 1e-5);
  EXPECT_NEAR(x[tf::mean_margin], margin / 6, 1e-5);
  EXPECT_NEAR(x[tf::min_max_prob], minp, 1e-6);
  EXPECT_NEAR(x[tf::prompt_nll], nll / 2, 1e-5);
  EXPECT_EQ(x[tf::stop_hazard], 0.0f);  // no stop tokens given
  EXPECT_EQ(x[tf::stopped_at], 0.0f);
  EXPECT_EQ(p.features.prompt_tokens, 3u);
  EXPECT_EQ(m.cache_length(), prompt.size() + 5);  // prompt + all look-ahead tokens but the last
}

TEST(probe_trajectory, a_stop_token_ends_the_lookahead_and_counts_in_the_hazard) {
  markov_model m({.vocab = 8, .order = 2, .seed = 5});
  const std::vector<token_id> prompt{1, 4, 5};
  const auto free_run = probe_trajectory(m, prompt, {.lookahead_tokens = 6});
  const token_id stop = free_run.lookahead[2];  // the third greedy token
  const auto p = probe_trajectory(m, prompt, {.lookahead_tokens = 6, .stop_tokens = {stop}});
  const auto first = std::find(free_run.lookahead.begin(), free_run.lookahead.end(), stop) - free_run.lookahead.begin();
  EXPECT_EQ(p.lookahead.size(), static_cast<std::size_t>(first) + 1);
  EXPECT_EQ(p.features.extra[tf::stopped_at], static_cast<float>(first + 1));
  EXPECT_GT(p.features.extra[tf::stop_hazard], 0.0f);
  EXPECT_LE(p.features.extra[tf::stop_hazard], 1.0f);
}

TEST(probe_trajectory, bad_input_throws_naming_it) {
  markov_model m({.vocab = 8, .order = 2, .seed = 5});
  EXPECT_THROW((void)probe_trajectory(m, std::vector<token_id>{}), specdec::invalid_argument);
  EXPECT_THROW((void)probe_trajectory(m, std::vector<token_id>{1}, {.lookahead_tokens = 0}), specdec::invalid_argument);
  EXPECT_THROW((void)probe_request(m, std::vector<token_id>{}), specdec::invalid_argument);
}
}  // namespace
