// Tests for include/specdec/verifier.hpp (and the draft_block values of draft.hpp): the
// verifier contract on local_verifier, `judge` on id-only drafts, and speculative
// decoding with drafters that emit ids only.
#include <gtest/gtest.h>

#include <cstddef>
#include <span>
#include <vector>

#include "specdec/decoder.hpp"
#include "specdec/draft.hpp"
#include "specdec/rollback.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"
#include "specdec/verifier.hpp"

namespace {

using specdec::token_id;
using specdec::testing::markov_model;

markov_model shared_target() { return markov_model({.vocab = 8, .order = 2, .seed = 3}); }

template <class R>
using markov_verifier = specdec::local_verifier<markov_model, R>;

}  // namespace

template <class R>
struct specdec::testing::verifier_factory<markov_verifier<R>> {
  static markov_model& target() {
    static markov_model m = shared_target();
    return m;
  }
  static markov_verifier<R> make() { return markov_verifier<R>(target(), R{}); }
  static markov_model reference() { return shared_target(); }
};

SPECDEC_VERIFIER_CONTRACT_TESTS(local, markov_verifier<specdec::greedy_match>,
                                markov_verifier<specdec::rejection_sampling>);

namespace {

static_assert(specdec::verifier<markov_verifier<specdec::greedy_match>>);
static_assert(!specdec::verifier<markov_model>);  // a model is not a verifier
static_assert(specdec::drafter<markov_model>);

/// Proposes the continuation of the last earlier occurrence of the final token (a tiny
/// prompt-lookup drafter): ids only.
struct lookup_drafter {
  std::vector<token_id> out;
  std::span<const token_id> propose(std::span<const token_id> seq, std::size_t max) {
    out.clear();
    for (std::size_t i = seq.size() - 1; i-- > 0;) {
      if (seq[i] != seq.back()) continue;
      for (std::size_t j = i + 1; j < seq.size() && out.size() < max; ++j) out.push_back(seq[j]);
      break;
    }
    return out;
  }
};
static_assert(specdec::token_drafter<lookup_drafter>);
static_assert(specdec::drafter<lookup_drafter>);
static_assert(!specdec::language_model<lookup_drafter>);

/// A broken rollback policy that accepts every draft (the negative control).
struct accept_all {
  static constexpr bool exact = true;
  specdec::verify_result verify(const specdec::verify_input& in) const {
    return {in.k(), specdec::argmax(in.p_row(in.k()))};
  }
};

TEST(judge, an_id_only_block_is_judged_as_one_hot_q) {
  markov_model target = shared_target();
  const std::vector<token_id> s{1, 3, 4};
  std::vector<token_id> block(s);
  const std::vector<token_id> draft{5, 6};
  block.insert(block.end(), draft.begin(), draft.end());
  const specdec::logits_block all = target.forward(block);
  const specdec::logits_block rows{all.data + (all.rows - 3) * all.vocab, 3, all.vocab};
  specdec::detail::judge_buffers buf;
  specdec::random_source a(5), b(5);
  specdec::rejection_sampling policy;
  const specdec::sampling_params hot{.temperature = 1.0f};
  // ids only, and the same block with explicit one-hot q rows: the same verdict, the same draws.
  const specdec::verdict v1 = specdec::judge(policy, rows, {.tokens = draft, .position = 3}, hot, a, buf, "test");
  std::vector<float> q(2 * all.vocab, 0.0f);
  q[5] = 1.0f;
  q[all.vocab + 6] = 1.0f;
  const specdec::verdict v2 =
      specdec::judge(policy, rows, {.tokens = draft, .q = q, .position = 3}, hot, b, buf, "test");
  EXPECT_EQ(v1.accepted, v2.accepted);
  EXPECT_EQ(v1.next, v2.next);
  EXPECT_EQ(a.uniform(), b.uniform());
  // A q of the wrong size, a draft id out of range, and rows that do not fit the block throw.
  EXPECT_THROW((void)specdec::judge(policy, rows, {.tokens = draft, .q = std::span<const float>(q).first(3)}, hot,
                                    a, buf, "test"),
               specdec::invalid_argument);
  const std::vector<token_id> bad{5, 99};
  EXPECT_THROW((void)specdec::judge(policy, rows, {.tokens = bad}, hot, a, buf, "test"), specdec::error);
  EXPECT_THROW((void)specdec::judge(policy, rows, {.tokens = std::span<const token_id>(draft).first(1)}, hot, a, buf,
                                    "test"),
               specdec::error);
}

TEST(id_only_drafter, greedy_output_equals_the_targets_own) {
  markov_model target = shared_target(), reference = shared_target();
  lookup_drafter ids;
  const std::vector<token_id> prompt{1, 3, 4, 5, 3, 4};
  const specdec::generation_options opts{.max_new_tokens = 40, .stop_at_eos = false};
  specdec::autoregressive_decoder ar(reference);
  const auto want = ar.generate(prompt, opts).tokens;
  for (std::size_t gamma : {1u, 3u, 6u}) {
    specdec::speculative_decoder dec(ids, target, specdec::fixed_gamma{.gamma = gamma}, specdec::greedy_match{});
    const auto r = dec.generate(prompt, opts);
    EXPECT_EQ(r.tokens, want) << "gamma " << gamma;
    EXPECT_GT(r.stats.draft_tokens_proposed, 0u);
    // The target ran fewer times than there are tokens only if some proposals were right.
    EXPECT_LE(r.stats.target_calls, want.size());
  }
}

TEST(id_only_drafter, sampled_steps_keep_the_target_s_law_at_the_first_position) {
  // With one-hot q, rejection sampling accepts a proposed id x with probability p(x) and
  // otherwise draws from p without x, renormalised: the first token is distributed as p.
  markov_model target = shared_target();
  struct constant_drafter {
    token_id id;
    std::vector<token_id> out;
    std::span<const token_id> propose(std::span<const token_id>, std::size_t max) {
      out.assign(std::min<std::size_t>(max, 3), id);
      return out;
    }
  } ids{2, {}};
  const std::vector<token_id> prompt{1, 3};
  const specdec::sampling_params hot{.temperature = 1.0f};
  specdec::speculative_decoder dec(ids, target, specdec::fixed_gamma{.gamma = 3}, specdec::rejection_sampling{}, hot);
  markov_model probe = shared_target();
  const std::vector<double> p = probe.probabilities_after(prompt);
  constexpr std::size_t runs = 20000;
  const auto first_token_tv = [&](auto& decoder) {
    std::vector<std::size_t> counts(p.size(), 0);
    for (std::size_t run = 0; run < runs; ++run) {
      decoder.set_seed(run);
      ++counts[static_cast<std::size_t>(decoder.generate(prompt, {.max_new_tokens = 4, .stop_at_eos = false}).tokens[0])];
    }
    double tv = 0.0;
    for (std::size_t i = 0; i < p.size(); ++i) tv += std::abs(static_cast<double>(counts[i]) / runs - p[i]);
    return tv / 2;
  };
  // 3 sigma of the TV estimate at n = 20000 over 8 bins is about 0.012.
  EXPECT_LT(first_token_tv(dec), 0.015);
  // Negative control: a verifier that accepts every proposal emits the proposal's law.
  specdec::speculative_decoder bad(ids, target, specdec::fixed_gamma{.gamma = 3}, accept_all{}, hot);
  EXPECT_GT(first_token_tv(bad), 0.3);
}

}  // namespace
