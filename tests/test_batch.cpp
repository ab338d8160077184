// Tests for include/specdec/batch.hpp: the batched model concept and independent_batch.
//
// Typed over batched models (independent_batch<markov_model>, independent_batch<
// cpu::transformer> on kjv-little, cpu::batched_transformer on kjv-little and
// stories260K): every row of every batch step equals, bit for bit,
// the per-sequence model's row for that token, whatever the mix of block lengths
// (including empty blocks), the block order, joins, leaves and per-sequence truncation.
// A backend's own batched model joins the typed list with a fixture like the ones below.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/batch.hpp"
#include "specdec/batch_decoder.hpp"
#include "specdec/decoder.hpp"
#include "specdec/testing/batch_archetypes.hpp"
#include "specdec/testing/contracts.hpp"

namespace {
using specdec::sequence_block;
using specdec::sequence_id;
using specdec::token_id;
using specdec::testing::markov_model;
using specdec::testing::markov_options;

std::shared_ptr<const specdec::cpu::checkpoint> kjv_little() {
  static const auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/kjv-little.bin"));
  return ck;
}

std::shared_ptr<const specdec::cpu::checkpoint> kjv_big() {
  static const auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/kjv-big.bin"));
  return ck;
}
std::shared_ptr<const specdec::cpu::checkpoint> stories260k() {
  static const auto ck = std::make_shared<const specdec::cpu::checkpoint>(
      specdec::cpu::load_checkpoint(std::string(SPECDEC_MODELS_DIR) + "/stories260K.bin"));
  return ck;
}

struct markov_fixture {
  static constexpr markov_options opts{.vocab = 11, .order = 2, .seed = 5};
  static auto make_batch() { return specdec::testing::markov_batch(opts); }
  static auto make_reference() { return markov_model(opts); }
  static specdec::testing::batch_check_options check() { return {.steps = 40, .max_sequences = 6}; }
};
struct kjv_little_fixture {
  static auto make_batch() {
    return specdec::independent_batch<specdec::cpu::transformer>(
        [] { return std::make_unique<specdec::cpu::transformer>(kjv_little()); });
  }
  static auto make_reference() { return std::make_unique<specdec::cpu::transformer>(kjv_little()); }
  static specdec::testing::batch_check_options check() {
    return {.steps = 14, .max_sequences = 5, .max_block = 5, .max_length = 32};
  }
};

// The real batched forward: one weight pass over all sequences' rows. Two threads, so
// the threaded split of products and attention runs too (results do not depend on it).
struct batched_kjv_little_fixture {
  static auto make_batch() { return specdec::cpu::batched_transformer(kjv_little(), {.threads = 2}); }
  static auto make_reference() { return std::make_unique<specdec::cpu::transformer>(kjv_little()); }
  static specdec::testing::batch_check_options check() {
    return {.steps = 14, .max_sequences = 5, .max_block = 5, .max_length = 32};
  }
};
struct batched_stories_fixture {
  static auto make_batch() { return specdec::cpu::batched_transformer(stories260k(), {.threads = 1}); }
  static auto make_reference() { return std::make_unique<specdec::cpu::transformer>(stories260k()); }
  static specdec::testing::batch_check_options check() {
    return {.steps = 24, .max_sequences = 6, .max_block = 6, .max_length = 48};
  }
};

// fp16 KV caches in the batch and in the per-sequence reference: rows still equal bit for
// bit (each key and value is rounded once, when stored, whatever the batch).
struct batched_kjv_little_kv_fp16_fixture {
  static constexpr specdec::cpu::transformer_options options{.threads = 2,
                                                             .kv_format = specdec::cpu::weight_format::fp16};
  static auto make_batch() { return specdec::cpu::batched_transformer(kjv_little(), options); }
  static auto make_reference() { return std::make_unique<specdec::cpu::transformer>(kjv_little(), options); }
  static specdec::testing::batch_check_options check() {
    return {.steps = 14, .max_sequences = 5, .max_block = 5, .max_length = 32};
  }
};

template <class F>
class batched_models : public ::testing::Test {};
using batched_types = ::testing::Types<markov_fixture, kjv_little_fixture, batched_kjv_little_fixture,
                                       batched_stories_fixture, batched_kjv_little_kv_fp16_fixture>;
TYPED_TEST_SUITE(batched_models, batched_types);

TYPED_TEST(batched_models, satisfies_the_concept) {
  using B = decltype(TypeParam::make_batch());
  static_assert(specdec::batched_model<B>);
}

TYPED_TEST(batched_models, rows_equal_per_sequence_rows_bit_for_bit) {
  for (std::uint64_t seed : {1u, 2u, 3u}) {
    auto bm = TypeParam::make_batch();
    auto o = TypeParam::check();
    o.seed = seed;
    const auto rep = specdec::testing::check_batch_against_reference(
        bm, [] { return TypeParam::make_reference(); }, o);
    EXPECT_TRUE(rep.ok()) << "seed " << seed << ": " << rep.first_mismatch;
    EXPECT_EQ(rep.max_abs_difference, 0.0f);
    EXPECT_GT(rep.rows_compared, 20u);
    // The scenario really exercised the batch: several blocks per step, joins, leaves,
    // truncations and empty blocks.
    EXPECT_GE(rep.max_blocks_in_a_step, 3u);
    EXPECT_GT(rep.joins, 2u);
    EXPECT_GT(rep.truncations, 0u);
    EXPECT_EQ(bm.sequence_count(), 0u);
  }
}

TYPED_TEST(batched_models, a_sequence_does_not_see_its_neighbours) {
  // The same three tokens give the same rows alone and next to other sequences' blocks
  // of other lengths, fed before or after it in the step.
  auto bm = TypeParam::make_batch();
  const std::vector<token_id> mine{1, 7, 3}, other5{1, 4, 4, 9, 2}, other1{6};
  const sequence_id a = bm.add_sequence();
  const std::vector<sequence_block> alone{{a, mine}};
  const auto l = bm.forward_batch(alone);
  const std::vector<float> want(l.data, l.data + l.rows * l.vocab);
  ASSERT_EQ(l.rows, 3u);
  bm.truncate(a, 0);
  const sequence_id b = bm.add_sequence(), c = bm.add_sequence();
  const std::vector<sequence_block> mixed{{b, other5}, {c, {}}, {a, mine}, {c, other1}};
  EXPECT_THROW(bm.forward_batch(mixed), specdec::invalid_argument);  // c twice
  EXPECT_EQ(bm.cache_length(a), 0u);  // nothing was fed
  EXPECT_EQ(bm.cache_length(b), 0u);
  const std::vector<sequence_block> ok{{b, other5}, {c, {}}, {a, mine}};
  const auto m = bm.forward_batch(ok);
  ASSERT_EQ(m.blocks(), 3u);
  EXPECT_EQ(m.rows, 8u);
  EXPECT_EQ(m.block(1).rows, 0u);
  const auto got = m.block(2);
  ASSERT_EQ(got.rows, 3u);
  EXPECT_EQ(std::vector<float>(got.data, got.data + 3 * got.vocab), want);
  EXPECT_EQ(bm.cache_length(a), 3u);
  EXPECT_EQ(bm.cache_length(b), 5u);
  EXPECT_EQ(bm.cache_length(c), 0u);
}

TYPED_TEST(batched_models, errors_leave_every_sequence_untouched) {
  auto bm = TypeParam::make_batch();
  const sequence_id a = bm.add_sequence(), b = bm.add_sequence();
  const std::vector<token_id> good{1, 2}, bad{1, static_cast<token_id>(bm.vocab_size())};
  const std::vector<sequence_block> out_of_range{{a, good}, {b, bad}};
  EXPECT_THROW(bm.forward_batch(out_of_range), specdec::token_out_of_range);
  EXPECT_EQ(bm.cache_length(a), 0u);
  const std::vector<sequence_block> unknown{{a, good}, {b + 100, good}};
  EXPECT_THROW(bm.forward_batch(unknown), specdec::invalid_argument);
  EXPECT_EQ(bm.cache_length(a), 0u);
  std::vector<token_id> too_long(bm.context_length() + 1, 1);
  const std::vector<sequence_block> overflow{{a, good}, {b, too_long}};
  EXPECT_THROW(bm.forward_batch(overflow), specdec::context_overflow);
  EXPECT_EQ(bm.cache_length(a), 0u);
  bm.remove_sequence(b);
  EXPECT_THROW(bm.remove_sequence(b), specdec::invalid_argument);
  EXPECT_THROW((void)bm.cache_length(b), specdec::invalid_argument);
  EXPECT_THROW(bm.truncate(b, 0), specdec::invalid_argument);
  // Ids are never recycled.
  const sequence_id c = bm.add_sequence();
  EXPECT_NE(c, a);
  EXPECT_NE(c, b);
  EXPECT_EQ(bm.cache_length(c), 0u);  // a reused pooled model starts empty
  EXPECT_EQ(bm.sequence_count(), 2u);
}

// One sequence of a batched model, next to a busy neighbour, as a language_model: the
// library's public model contract runs on it.
struct markov_batch_sequence {
  std::shared_ptr<specdec::independent_batch<markov_model>> batch =
      std::make_shared<specdec::independent_batch<markov_model>>(specdec::testing::markov_batch(markov_fixture::opts));
  specdec::sequence_view<specdec::independent_batch<markov_model>> view = make_view(*batch);

  static specdec::sequence_view<specdec::independent_batch<markov_model>> make_view(
      specdec::independent_batch<markov_model>& b) {
    const sequence_id neighbour = b.add_sequence();
    const std::vector<token_id> t{1, 2, 3};
    const std::vector<sequence_block> blocks{{neighbour, t}};
    b.forward_batch(blocks);
    return {b, b.add_sequence()};
  }
  std::size_t vocab_size() const { return view.vocab_size(); }
  std::size_t context_length() const { return view.context_length(); }
  std::size_t cache_length() const { return view.cache_length(); }
  specdec::logits_block forward(std::span<const token_id> tokens) { return view.forward(tokens); }
  void truncate(std::size_t n) { view.truncate(n); }
};
}  // namespace
template <>
struct specdec::testing::model_factory<markov_batch_sequence> {
  static markov_batch_sequence make() { return {}; }
};
namespace {
SPECDEC_MODEL_CONTRACT_TESTS(batch_sequence, markov_batch_sequence);

TEST(sequence_view, single_sequence_decoders_run_on_a_batched_model) {
  auto bm = kjv_little_fixture::make_batch();
  const sequence_id other = bm.add_sequence();
  const std::vector<token_id> busy{1, 450, 200, 17};
  const std::vector<sequence_block> blocks{{other, busy}};
  bm.forward_batch(blocks);
  specdec::sequence_view one(bm, bm.add_sequence());
  static_assert(specdec::language_model<decltype(one)>);
  specdec::autoregressive_decoder via_view(one);
  specdec::cpu::transformer plain(kjv_little());
  specdec::autoregressive_decoder direct(plain);
  const std::vector<token_id> prompt{1, 1043, 261};
  EXPECT_EQ(via_view.generate(prompt, {.max_new_tokens = 12}).tokens,
            direct.generate(prompt, {.max_new_tokens = 12}).tokens);
  EXPECT_EQ(bm.cache_length(other), 4u);  // the neighbour was not touched
}

TEST(batched_transformer, batched_greedy_speculative_equals_per_sequence_autoregressive) {
  specdec::cpu::batched_transformer little(kjv_little(), {.threads = 2});
  specdec::cpu::batched_transformer big(kjv_big(), {.threads = 2});
  const std::vector<specdec::batch_request> reqs{
      {.prompt = {1}, .options = {.max_new_tokens = 24}, .id = 0},
      {.prompt = {1, 450, 200}, .options = {.max_new_tokens = 20}, .id = 1},
      {.prompt = {1, 1043, 261}, .options = {.max_new_tokens = 24}, .id = 2},
      {.prompt = {1, 450, 200, 300, 17}, .options = {.max_new_tokens = 16}, .id = 3},
  };
  specdec::batched_speculative_decoder dec(little, big, specdec::fixed_gamma{.gamma = 4}, specdec::greedy_match{});
  for (const auto& r : reqs) dec.submit(r);
  const std::vector<specdec::batch_result> got = dec.run();
  ASSERT_EQ(got.size(), reqs.size());
  specdec::cpu::transformer single(kjv_big(), {.threads = 1});
  std::size_t accepted = 0;
  for (const auto& res : got) {
    const auto& r = reqs.at(res.id);
    single.reset();
    specdec::autoregressive_decoder ar(single);
    EXPECT_EQ(res.result.tokens, ar.generate(r.prompt, r.options).tokens) << "request " << r.id;
    accepted += res.result.stats.draft_tokens_accepted;
  }
  EXPECT_GT(accepted, 0u);
  EXPECT_EQ(little.sequence_count(), 0u);
  EXPECT_EQ(big.sequence_count(), 0u);
}

TEST(batched_transformer, loads_a_path_and_reports_options) {
  specdec::cpu::batched_transformer bm(std::filesystem::path(std::string(SPECDEC_MODELS_DIR) + "/stories260K.bin"),
                                       {.threads = 1, .format = specdec::cpu::weight_format::bf16});
  EXPECT_EQ(bm.options().threads, 1u);
  EXPECT_EQ(bm.vocab_size(), 512u);
  EXPECT_THROW(specdec::cpu::batched_transformer(std::shared_ptr<const specdec::cpu::checkpoint>{}),
               specdec::invalid_argument);
  // bf16 weights: still the bf16 transformer's rows bit for bit.
  specdec::cpu::transformer ref(stories260k(), {.threads = 1, .format = specdec::cpu::weight_format::bf16});
  const sequence_id a = bm.add_sequence(), b = bm.add_sequence();
  const std::vector<token_id> ta{1, 403, 407}, tb{1, 9};
  const std::vector<sequence_block> blocks{{b, tb}, {a, ta}};
  const auto out = bm.forward_batch(blocks);
  const auto want = ref.forward(ta);
  const auto got = out.block(1);
  ASSERT_EQ(got.rows, 3u);
  EXPECT_EQ(std::vector<float>(got.data, got.data + 3 * got.vocab),
            std::vector<float>(want.data, want.data + 3 * want.vocab));
}

TEST(independent_batch, factory_may_return_a_value_or_a_unique_ptr_and_deduces_the_model) {
  specdec::independent_batch by_value([] { return markov_model({.vocab = 5}); });
  specdec::independent_batch by_pointer([] { return std::make_unique<markov_model>(markov_options{.vocab = 5}); });
  static_assert(std::is_same_v<decltype(by_value), specdec::independent_batch<markov_model>>);
  static_assert(std::is_same_v<decltype(by_pointer), specdec::independent_batch<markov_model>>);
  EXPECT_EQ(by_value.vocab_size(), 5u);
  EXPECT_EQ(by_pointer.context_length(), 4096u);
  EXPECT_THROW(specdec::independent_batch<markov_model>([] { return std::unique_ptr<markov_model>{}; }),
               specdec::invalid_argument);
}

TEST(batch_check_options, validate_names_the_knob) {
  specdec::testing::batch_check_options o{.max_block = 0};
  try {
    o.validate();
    FAIL() << "expected invalid_argument";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("max_block"), std::string::npos);
  }
}

}  // namespace
