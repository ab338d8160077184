// Tests for include/specdec/model.hpp: the concept accepts its archetypes and rejects
// near-misses, and the archetypes and the reference transformer keep the contract (the
// public typed suite of specdec/testing/contracts.hpp).
#include <gtest/gtest.h>

#include <vector>

#include "specdec/model.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/contracts.hpp"

// The shared contract: the archetypes (default-made) and the bundled draft checkpoint.
template <>
struct specdec::testing::model_factory<specdec::cpu::transformer> {
  static specdec::cpu::transformer make() { return specdec::cpu::transformer(SPECDEC_MODELS_DIR "/kjv-little.bin"); }
};
SPECDEC_MODEL_CONTRACT_TESTS(archetypes, specdec::testing::minimal_model, specdec::testing::markov_model);
SPECDEC_MODEL_CONTRACT_TESTS(cpu, specdec::cpu::transformer);

namespace {
using specdec::token_id;
using specdec::testing::markov_model;
using specdec::testing::minimal_model;

struct no_truncate {
  std::size_t vocab_size() const { return 2; }
  std::size_t context_length() const { return 2; }
  std::size_t cache_length() const { return 0; }
  specdec::logits_block forward(std::span<const token_id>) { return {}; }
};
struct no_vocab {
  std::size_t context_length() const { return 2; }
  std::size_t cache_length() const { return 0; }
  specdec::logits_block forward(std::span<const token_id>) { return {}; }
  void truncate(std::size_t) {}
};
struct wrong_forward_result {
  std::size_t vocab_size() const { return 2; }
  std::size_t context_length() const { return 2; }
  std::size_t cache_length() const { return 0; }
  std::vector<float> forward(std::span<const token_id>) { return {}; }
  void truncate(std::size_t) {}
};
struct no_cache_length {
  std::size_t vocab_size() const { return 2; }
  std::size_t context_length() const { return 2; }
  specdec::logits_block forward(std::span<const token_id>) { return {}; }
  void truncate(std::size_t) {}
};

static_assert(specdec::language_model<minimal_model>);
static_assert(specdec::language_model<markov_model>);
static_assert(!specdec::language_model<no_truncate>);
static_assert(!specdec::has_truncate<no_truncate>);
static_assert(specdec::has_block_forward<no_truncate>);
static_assert(!specdec::language_model<no_vocab>);
static_assert(!specdec::has_vocabulary<no_vocab>);
static_assert(!specdec::has_block_forward<wrong_forward_result>);
static_assert(!specdec::has_context<no_cache_length>);

TEST(markov_model, rows_match_exact_probabilities_and_truncate_restores) {
  markov_model m({.vocab = 5, .order = 2, .seed = 7});
  std::vector<token_id> seq{1, 3, 4, 0, 2};
  auto out = m.forward(seq);
  ASSERT_EQ(out.rows, seq.size());
  EXPECT_EQ(m.cache_length(), seq.size());
  std::vector<float> row3(out.row(3).begin(), out.row(3).end());
  m.truncate(3);
  EXPECT_EQ(m.cache_length(), 3u);
  auto again = specdec::forward_one(m, seq[3]);
  for (std::size_t j = 0; j < 5; ++j) EXPECT_EQ(again.row(0)[j], row3[j]);
  auto p = m.probabilities_after(std::span(seq).first(4));
  double sum = 0;
  for (double x : p) sum += x;
  EXPECT_NEAR(sum, 1.0, 1e-12);
}

TEST(markov_model, rejects_bad_input) {
  markov_model m({.vocab = 4, .context = 3});
  std::vector<token_id> bad{0, 4};
  EXPECT_THROW(m.forward(bad), specdec::token_out_of_range);
  std::vector<token_id> four{0, 1, 2, 3};
  EXPECT_THROW(m.forward(four), specdec::context_overflow);
  EXPECT_THROW(markov_model({.vocab = 1}), specdec::invalid_argument);
}

TEST(model, vocabulary_mismatch_is_reported) {
  markov_model a({.vocab = 4});
  markov_model b({.vocab = 5});
  try {
    specdec::check_same_vocabulary(a, b);
    FAIL() << "expected vocabulary_mismatch";
  } catch (const specdec::vocabulary_mismatch& e) {
    EXPECT_NE(std::string(e.what()).find("4"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("5"), std::string::npos);
  }
}
}  // namespace
