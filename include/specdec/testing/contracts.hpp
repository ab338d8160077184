#pragma once
/// \file testing/contracts.hpp
/// specdec's typed contract tests, public so that users can run them on their own model,
/// policy and metric types with one macro per concept.
///
/// **For test targets only**: this header includes `<gtest/gtest.h>` and defines
/// GoogleTest type-parameterised suites; link the test executable with GTest (e.g.
/// `GTest::gtest_main`). Never include it from library or application code.
///
/// ```cpp
/// #include <specdec/testing/contracts.hpp>
/// #include "my_model.hpp"   // struct my_model, struct my_policy, struct my_metric
///
/// // Optional: how to build a model for the tests (default: `M{}`).
/// template <> struct specdec::testing::model_factory<my_model> {
///   static my_model make() { return my_model("weights.bin"); }
/// };
/// // Optional: what the policy promises beyond the defaults.
/// template <> struct specdec::testing::fallback_traits<my_policy>
///     : specdec::testing::default_fallback_traits<my_policy> {
///   static constexpr std::size_t cap = 8;  // every block ends within 8 positions
/// };
///
/// SPECDEC_MODEL_CONTRACT_TESTS(mine, my_model);
/// SPECDEC_FALLBACK_CONTRACT_TESTS(mine, my_policy);
/// SPECDEC_DISTANCE_CONTRACT_TESTS(mine, my_metric);
/// ```
///
/// Each macro takes a prefix (any identifier, unique per macro within a test executable)
/// and one or more types, and may be used at namespace scope in any namespace. The
/// suites run as `prefix/specdec_<concept>_contract/<n>.<test>`.
///
/// | macro                               | concept           | customise with            |
/// |-------------------------------------|-------------------|---------------------------|
/// | `SPECDEC_MODEL_CONTRACT_TESTS`      | `language_model`  | `model_factory<M>`        |
/// | `SPECDEC_TREE_MODEL_CONTRACT_TESTS` | `tree_model`      | `model_factory<M>`, `tree_model_traits<M>` |
/// | `SPECDEC_FALLBACK_CONTRACT_TESTS`   | `fallback_policy` | `fallback_traits<P>`      |
/// | `SPECDEC_ROLLBACK_CONTRACT_TESTS`   | `rollback_policy` | `rollback_traits<R>`      |
/// | `SPECDEC_DISTANCE_CONTRACT_TESTS`   | `distance_metric` | `distance_traits<D>`      |
/// | `SPECDEC_VERIFIER_CONTRACT_TESTS`   | `verifier`        | `verifier_factory<V>`     |
/// | `SPECDEC_TREE_DRAFTER_CONTRACT_TESTS` | `tree_drafter`  | `tree_drafter_factory<D>` |
///
/// And for the statistical exactness harness of `testing/exactness.hpp`:
/// `SPECDEC_EXPECT_EXACT(report)` and `SPECDEC_EXPECT_NOT_EXACT(report)` (a negative
/// control) on an `exactness_report`, printing the report when the expectation fails.
///
/// What is checked:
/// - model: a block forward of k tokens gives the same rows, bit for bit, as k single
///   forwards; `truncate(n)` then forwarding again gives the rows a fresh model gives;
///   `cache_length()` counts what was forwarded and what truncate kept; logits are finite
///   and `vocab_size()` wide; an out-of-range id throws `token_out_of_range` and a block
///   past the context throws `context_overflow`, both leaving `cache_length()` unchanged.
/// - tree model (specdec/tree.hpp): each node's row of `forward_tree` equals (bit for bit,
///   or within `tree_model_traits<M>::tolerance`) the last row of a chain forward of its
///   root-to-node path, with and without cached tokens before the tree and across two
///   forwards extending one pending tree; `cache_length()` counts the pending nodes;
///   `keep_path` then forwarding equals a fresh model fed the kept path (empty, partial,
///   full paths); `truncate` ends a tree without keeping nodes; a chain `forward` while
///   a tree is pending, malformed parents and paths throw `invalid_argument`, bad ids
///   `token_out_of_range`, too many nodes `context_overflow`, all leaving the model
///   unchanged. Needs a context of >= 16 tokens.
/// - fallback: the default-made policy validates; every block stops (`keep_and_stop` or
///   `discard_and_stop`) within `cap` positions, for one-hot, uniform and random q, also
///   after arbitrary (even inconsistent or NaN-timed) outcomes were observed; bad knobs
///   (e.g. NaN) are rejected by `validate()` with a message naming the knob; `reset()`
///   restores the fresh behaviour.
/// - rollback: `accepted <= k`, `next` is in range and has non-zero target probability
///   p_accepted(next); with greedy one-hot inputs and identical draft/target every draft
///   is accepted, `next` is the target's argmax and no randomness is consumed; the same
///   seed gives the same verdict; bad knobs and malformed `verify_input`s throw.
/// - distance: non-negative and finite, also with zeros and disjoint supports; d(p, p)
///   is 0 (or -log p(y) for a cross-entropy-like metric); symmetry and an upper bound
///   where the traits promise them; mismatched sizes and out-of-range tokens throw.
/// - verifier: against `verifier_factory<V>::reference()`, a `language_model` with the
///   target's logits: an empty draft gets the target's greedy token; a draft of the
///   target's own greedy continuation is accepted whole and the bonus is the next greedy
///   token; a draft corrupted at position j keeps exactly j tokens and gets the greedy
///   replacement; the same seed gives the same sampled verdict; `sync` and `reset` keep it
///   reusable; a draft block at the wrong position throws `specdec::error`; and a
///   `basic_speculative_decoder` over it reproduces the reference's greedy output.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "specdec/decoder.hpp"
#include "specdec/distance.hpp"
#include "specdec/error.hpp"
#include "specdec/fallback.hpp"
#include "specdec/model.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/testing/exactness.hpp"
#include "specdec/token.hpp"
#include "specdec/tree.hpp"
#include "specdec/tree_drafter.hpp"
#include "specdec/verifier.hpp"

namespace specdec::testing {

// ---------------------------------------------------------------------------------------
// Customisation points

/// How the model contract builds a fresh model of type M. The primary template
/// default-constructs; specialise it for models that need arguments.
///
/// ```cpp
/// template <> struct specdec::testing::model_factory<specdec::cpu::transformer> {
///   static specdec::cpu::transformer make() { return specdec::cpu::transformer("models/kjv-little.bin"); }
/// };
/// ```
template <class M>
struct model_factory {
  static M make() { return M{}; }
};

/// Defaults of `tree_model_traits`; derive from it to override single members.
template <class M>
struct default_tree_model_traits {
  /// How far a node's logit may be from the chain forward's (0: bit for bit, as the CPU
  /// transformer and the archetypes promise).
  static constexpr float tolerance = 0.0f;
};

/// What a tree model promises to the tree-model contract (see `fallback_traits`).
template <class M>
struct tree_model_traits : default_tree_model_traits<M> {};

/// Defaults of `fallback_traits`; derive from it to override single members.
/// How the verifier contract builds a verifier of type V and the reference it must agree
/// with. No default: specialise it with `static V make()` (a fresh verifier; it may keep
/// its target in a static) and `static R reference()` (a fresh `language_model` whose
/// logits are the target's), plus `static std::size_t vocab()`.
///
/// ```cpp
/// template <> struct specdec::testing::verifier_factory<my_remote_verifier> {
///   static my_remote_verifier make() { return my_remote_verifier(server_address()); }
///   static my_model reference() { return my_model("target.bin"); }
/// };
/// ```
template <class V>
struct verifier_factory;

/// How the tree drafter contract builds a drafter of type D. No default: specialise it
/// with `static D make()` (a fresh drafter; a model it drafts with may live in a static).
///
/// ```cpp
/// template <> struct specdec::testing::tree_drafter_factory<specdec::text_index_drafter> {
///   static specdec::text_index_drafter make() { return specdec::text_index_drafter(32); }
/// };
/// ```
template <class D>
struct tree_drafter_factory;

template <class P>
struct default_fallback_traits {
  /// A fresh policy as the tests use it.
  static P make() { return P{}; }
  /// The most positions one draft block may last (the stopping position included).
  static constexpr std::size_t cap = 64;
  /// Policies with knob settings `validate()` must reject, each with the knob's name
  /// (which the error message must contain, along with "got").
  static std::vector<std::pair<P, std::string>> bad_knobs() { return {}; }
  /// Whether `decide` validates on first use (so a bad policy throws even unvalidated).
  static constexpr bool validates_on_use = false;
};

/// What a fallback policy promises to the fallback contract. Specialise, deriving from
/// `default_fallback_traits<P>`:
///
/// ```cpp
/// template <> struct specdec::testing::fallback_traits<my_policy>
///     : specdec::testing::default_fallback_traits<my_policy> {
///   static constexpr std::size_t cap = 8;
///   static std::vector<std::pair<my_policy, std::string>> bad_knobs() {
///     return {{{.threshold = std::nanf("")}, "threshold"}};
///   }
/// };
/// ```
template <class P>
struct fallback_traits : default_fallback_traits<P> {};

/// Defaults of `rollback_traits`; derive from it to override single members.
template <class R>
struct default_rollback_traits {
  static R make() { return R{}; }
  /// Policies with knob settings `validate()` must reject, with the knob's name.
  static std::vector<std::pair<R, std::string>> bad_knobs() { return {}; }
  /// Whether `verify` validates the knobs too (so a bad policy throws even unvalidated).
  static constexpr bool verify_validates = false;
  /// Whether `verify` rejects malformed inputs (short p or q, vocab 0: `invalid_argument`;
  /// a drafted id out of range: `token_out_of_range`). Every shipped policy does.
  static constexpr bool checks_input = true;
};

/// What a rollback policy promises to the rollback contract (see `fallback_traits`).
template <class R>
struct rollback_traits : default_rollback_traits<R> {};

/// What d(p, p, y) must be.
enum class self_distance {
  zero,               ///< a divergence: d(p, p, y) == 0 (up to `equal_tolerance`)
  minus_log_target,   ///< cross-entropy-like: d(p, p, y) == -log p(y)
  unspecified,        ///< not checked
};

/// Defaults of `distance_traits`; derive from it to override single members.
template <class D>
struct default_distance_traits {
  static D make() { return D{}; }
  static constexpr self_distance on_equal = self_distance::zero;
  /// Absolute tolerance of the d(p, p) == 0 check (0 = exactly zero).
  static constexpr float equal_tolerance = 1e-6f;
  /// Whether d(p, q, y) == d(q, p, y) (to 1e-6).
  static constexpr bool symmetric = false;
  /// An upper bound every value respects (to 1e-6), if any.
  static constexpr std::optional<float> upper_bound{};
  /// Whether two distributions with disjoint supports reach `upper_bound`.
  static constexpr bool disjoint_reaches_bound = false;
  /// Whether mismatched sizes and out-of-range tokens throw `invalid_argument`.
  static constexpr bool checks_input = true;
};

/// What a distance metric promises to the distance contract (see `fallback_traits`).
template <class D>
struct distance_traits : default_distance_traits<D> {};

// ---------------------------------------------------------------------------------------
// Helpers, public so that users' own tests can build the same inputs

/// `n` ids in [0, vocab), deterministic in `salt`, never all equal for vocab > 1.
///
/// ```cpp
/// auto ids = specdec::testing::some_tokens(model.vocab_size(), 8, 1);
/// ```
inline std::vector<token_id> some_tokens(std::size_t vocab, std::size_t n, std::uint64_t salt) {
  std::vector<token_id> out(n);
  for (std::size_t i = 0; i < n; ++i)
    out[i] = static_cast<token_id>((i * 7919 + salt * 104729 + 3) % vocab);
  return out;
}

/// A copy of all rows of a logits block (blocks are only valid until the next forward).
inline std::vector<float> copy_rows(const logits_block& b) {
  return {b.flat().begin(), b.flat().end()};
}

/// True when two float arrays are identical bit for bit (so NaN == NaN, 0 != -0).
inline bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// A uniform distribution over the first `n` of `vocab` entries (vocab 0: over n).
inline std::vector<float> uniform_distribution(std::size_t n, std::size_t vocab = 0) {
  std::vector<float> q(vocab == 0 ? n : vocab, 0.0f);
  for (std::size_t i = 0; i < n; ++i) q[i] = 1.0f / static_cast<float>(n);
  return q;
}

/// A distribution with all mass on `at`.
inline std::vector<float> one_hot_distribution(std::size_t vocab, std::size_t at) {
  std::vector<float> q(vocab, 0.0f);
  q[at] = 1.0f;
  return q;
}

/// A random distribution with exponential(1) weights.
inline std::vector<float> random_distribution(std::mt19937_64& g, std::size_t vocab) {
  std::exponential_distribution<float> e(1.0f);
  std::vector<float> q(vocab);
  float z = 0;
  for (float& x : q) z += x = e(g);
  for (float& x : q) x /= z;
  return q;
}

/// A random softmax distribution over `n` entries; a large `scale` makes it peaked, with
/// many entries underflowing to exact zeros.
inline std::vector<float> random_softmax(std::size_t n, std::mt19937& rng, float scale = 3.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> p(n);
  float mx = -1e30f;
  for (auto& x : p) {
    x = normal(rng);
    mx = std::max(mx, x);
  }
  double z = 0;
  for (auto& x : p) {
    x = std::exp(x - mx);
    z += x;
  }
  for (auto& x : p) x = static_cast<float>(x / z);
  return p;
}

/// Distributions over 4 entries with zeros in various places, including disjoint
/// supports and an all-zero (degenerate) vector.
inline std::vector<std::vector<float>> distributions_with_zeros() {
  return {{1, 0, 0, 0},         {0, 1, 0, 0},          {0, 0, 0.5f, 0.5f},
          {0.25f, 0.25f, 0.25f, 0.25f}, {0, 0, 0, 1}, {0.7f, 0, 0.3f, 0},
          {0, 0, 0, 0}};
}

/// Runs a draft loop with the same q at every position: the number of positions until the
/// policy stops (the stopping one included), and the final action. Gives up after `limit`
/// positions (returns limit + 1 and keep_and_continue).
///
/// ```cpp
/// auto [n, action] = specdec::testing::run_block(policy, q);
/// ```
template <class P>
std::pair<std::size_t, draft_action> run_block(P& policy, const std::vector<float>& q,
                                               std::size_t limit = 1000) {
  for (std::size_t pos = 0; pos < limit; ++pos) {
    const draft_action a = policy.decide(draft_step{pos, q, 0});
    if (a != draft_action::keep_and_continue) return {pos + 1, a};
  }
  return {limit + 1, draft_action::keep_and_continue};
}

/// Owns the arrays a `verify_input` views, built as a decoder would: p and q from target
/// and draft logits under `params`, drafted tokens drawn from q (argmax when greedy).
///
/// ```cpp
/// std::mt19937_64 g(1);
/// auto b = specdec::testing::verify_block::make(g, /*k=*/4, /*vocab=*/7, {}, /*noise=*/1.0f, 3);
/// specdec::verify_result r = policy.verify(b.input());
/// ```
struct verify_block {
  std::size_t vocab = 0;
  std::vector<token_id> drafted;
  std::vector<float> q, p, logits;
  sampling_params params{};
  random_source rng{0};

  verify_input input() { return {drafted, q, p, logits, vocab, &params, &rng}; }

  /// k drafted positions over `vocab` tokens. Draft logits are the target's plus noise of
  /// scale `noise` (0 = identical distributions); `rng` is seeded with `seed`.
  static verify_block make(std::mt19937_64& g, std::size_t k, std::size_t vocab, sampling_params params,
                           float noise, std::uint64_t seed) {
    verify_block b;
    b.vocab = vocab;
    b.params = params;
    b.rng.reseed(seed);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    b.logits.resize((k + 1) * vocab);
    for (float& x : b.logits) x = 2.0f * n01(g);
    b.p.resize((k + 1) * vocab);
    b.q.resize(k * vocab);
    std::vector<float> draft_logits(vocab);
    random_source draw_rng(seed ^ 0x9e3779b97f4a7c15ULL);
    for (std::size_t i = 0; i <= k; ++i) {
      std::span<const float> row(b.logits.data() + i * vocab, vocab);
      make_distribution(row, params, std::span(b.p.data() + i * vocab, vocab));
      if (i == k) break;
      for (std::size_t j = 0; j < vocab; ++j) draft_logits[j] = row[j] + noise * n01(g);
      auto qrow = std::span(b.q.data() + i * vocab, vocab);
      make_distribution(draft_logits, params, qrow);
      b.drafted.push_back(params.greedy() ? argmax(draft_logits) : sample_from(qrow, draw_rng.uniform()));
    }
    return b;
  }
};

namespace detail {

/// Fails the current test unless `f()` throws `E` whose message contains `knob` and "got".
template <class F>
void expect_knob_error(F&& f, const std::string& knob) {
  try {
    f();
    ADD_FAILURE() << "validate() accepted a bad " << knob;
  } catch (const invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find(knob), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("got"), std::string::npos) << e.what();
  }
}

}  // namespace detail
}  // namespace specdec::testing

// ---------------------------------------------------------------------------------------
// The suites. They live in the global namespace so that the macros below work from any
// namespace (including an anonymous one); their names carry the specdec_ prefix.

// ---- language_model ----------------------------------------------------------------------

template <class M>
class specdec_model_contract : public ::testing::Test {
 protected:
  static M make() { return specdec::testing::model_factory<M>::make(); }
};
TYPED_TEST_SUITE_P(specdec_model_contract);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(specdec_model_contract);

TYPED_TEST_P(specdec_model_contract, satisfies_the_concept) {
  static_assert(specdec::language_model<TypeParam>,
                "specdec: the type given to SPECDEC_MODEL_CONTRACT_TESTS is not a specdec::language_model");
  TypeParam m = TestFixture::make();
  EXPECT_GE(static_cast<std::size_t>(m.vocab_size()), 1u);
  EXPECT_GE(static_cast<std::size_t>(m.context_length()), 12u) << "the contract needs a context of >= 12 tokens";
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 0u) << "a fresh model has an empty cache";
}

TYPED_TEST_P(specdec_model_contract, block_forward_equals_single_forwards_bit_for_bit) {
  TypeParam block_model = TestFixture::make();
  TypeParam single_model = TestFixture::make();
  const std::size_t vocab = block_model.vocab_size();
  const auto prefix = specdec::testing::some_tokens(vocab, 3, 1);
  const auto tokens = specdec::testing::some_tokens(vocab, 6, 2);
  for (auto* m : {&block_model, &single_model}) (void)m->forward(prefix);
  const specdec::logits_block blk = block_model.forward(tokens);
  ASSERT_EQ(blk.rows, tokens.size());
  ASSERT_EQ(blk.vocab, vocab);
  const std::vector<float> rows = specdec::testing::copy_rows(blk);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const specdec::logits_block one = specdec::forward_one(single_model, tokens[i]);
    ASSERT_EQ(one.rows, 1u);
    ASSERT_EQ(one.vocab, vocab);
    EXPECT_TRUE(specdec::testing::same_bits(one.row(0), std::span(rows).subspan(i * vocab, vocab)))
        << "row " << i << " of a block forward differs from the single-token forward";
  }
  EXPECT_EQ(static_cast<std::size_t>(block_model.cache_length()), prefix.size() + tokens.size());
  EXPECT_EQ(static_cast<std::size_t>(single_model.cache_length()), prefix.size() + tokens.size());
}

TYPED_TEST_P(specdec_model_contract, truncate_then_forward_equals_a_fresh_model) {
  TypeParam used = TestFixture::make();
  const std::size_t vocab = used.vocab_size();
  const auto first = specdec::testing::some_tokens(vocab, 8, 3);
  const auto second = specdec::testing::some_tokens(vocab, 4, 4);
  (void)used.forward(first);
  for (std::size_t keep : {std::size_t{5}, std::size_t{1}, std::size_t{0}}) {
    used.truncate(keep);
    ASSERT_EQ(static_cast<std::size_t>(used.cache_length()), keep);
    const std::vector<float> got = specdec::testing::copy_rows(used.forward(second));
    TypeParam fresh = TestFixture::make();
    if (keep > 0) (void)fresh.forward(std::span(first).first(keep));
    const std::vector<float> want = specdec::testing::copy_rows(fresh.forward(second));
    EXPECT_TRUE(specdec::testing::same_bits(got, want)) << "after truncate(" << keep << ")";
    EXPECT_EQ(static_cast<std::size_t>(used.cache_length()), keep + second.size());
    // Put the cache back to the full first sequence for the next round.
    used.truncate(0);
    (void)used.forward(first);
  }
}

TYPED_TEST_P(specdec_model_contract, cache_length_bookkeeping) {
  TypeParam m = TestFixture::make();
  const std::size_t vocab = m.vocab_size();
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 0u);
  (void)m.forward(specdec::testing::some_tokens(vocab, 4, 5));
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 4u);
  (void)specdec::forward_one(m, specdec::token_id{0});
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 5u);
  m.truncate(7);  // keeping more than is cached changes nothing
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 5u);
  m.truncate(2);
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 2u);
  m.truncate(0);
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 0u);
}

TYPED_TEST_P(specdec_model_contract, logits_are_finite) {
  TypeParam m = TestFixture::make();
  const std::size_t vocab = m.vocab_size();
  const auto tokens = specdec::testing::some_tokens(vocab, 10, 6);
  const specdec::logits_block b = m.forward(tokens);
  ASSERT_EQ(b.rows, tokens.size());
  ASSERT_EQ(b.vocab, vocab);
  for (std::size_t i = 0; i < b.rows; ++i)
    for (float x : b.row(i)) ASSERT_TRUE(std::isfinite(x)) << "row " << i;
}

TYPED_TEST_P(specdec_model_contract, bad_input_throws_and_leaves_the_cache_alone) {
  TypeParam m = TestFixture::make();
  const std::size_t vocab = m.vocab_size();
  (void)m.forward(specdec::testing::some_tokens(vocab, 3, 7));
  const std::vector<specdec::token_id> too_big{0, static_cast<specdec::token_id>(vocab)};
  const std::vector<specdec::token_id> negative{-1};
  EXPECT_THROW((void)m.forward(too_big), specdec::token_out_of_range);
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 3u);
  EXPECT_THROW((void)m.forward(negative), specdec::token_out_of_range);
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 3u);
  const std::size_t room = static_cast<std::size_t>(m.context_length()) - 3;
  const std::vector<specdec::token_id> overflow(room + 1, specdec::token_id{0});
  EXPECT_THROW((void)m.forward(overflow), specdec::context_overflow);
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 3u);
  // Still usable afterwards.
  EXPECT_EQ(specdec::forward_one(m, specdec::token_id{0}).rows, 1u);
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 4u);
}

REGISTER_TYPED_TEST_SUITE_P(specdec_model_contract, satisfies_the_concept,
                            block_forward_equals_single_forwards_bit_for_bit,
                            truncate_then_forward_equals_a_fresh_model, cache_length_bookkeeping,
                            logits_are_finite, bad_input_throws_and_leaves_the_cache_alone);

// ---- tree_model --------------------------------------------------------------------------

template <class M>
class specdec_tree_model_contract : public ::testing::Test {
 protected:
  static M make() { return specdec::testing::model_factory<M>::make(); }
  static constexpr float tolerance = specdec::testing::tree_model_traits<M>::tolerance;

  // A 9-node tree with two roots, branching and depths up to 4, then 3 more nodes that
  // extend it (one under the deepest node, one under node 2, one under that new node).
  static std::vector<std::int32_t> parents() { return {-1, 0, 0, 1, 1, -1, 3, 5, 6}; }
  static std::vector<std::int32_t> more_parents() { return {8, 2, 9}; }
  static specdec::token_tree whole_tree(std::size_t vocab) {
    specdec::token_tree t(specdec::testing::some_tokens(vocab, 9, 11), parents());
    t.append(specdec::testing::some_tokens(vocab, 3, 12), more_parents());
    return t;
  }
  // Forwards `prefix`, then the tree in its two calls; returns all rows (12 x vocab).
  static std::vector<float> forward_whole_tree(M& m, const std::vector<specdec::token_id>& prefix) {
    const std::size_t vocab = m.vocab_size();
    if (!prefix.empty()) (void)m.forward(prefix);
    const auto a = specdec::testing::some_tokens(vocab, 9, 11), b = specdec::testing::some_tokens(vocab, 3, 12);
    const auto pa = parents(), pb = more_parents();
    std::vector<float> rows = specdec::testing::copy_rows(m.forward_tree(a, pa));
    EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), prefix.size() + 9) << "cache_length counts the pending nodes";
    const std::vector<float> more = specdec::testing::copy_rows(m.forward_tree(b, pb));
    EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), prefix.size() + 12);
    rows.insert(rows.end(), more.begin(), more.end());
    return rows;
  }
  // The last row of a chain forward of prefix + tokens on `ref` (reset first).
  static std::vector<float> chain_last_row(M& ref, const std::vector<specdec::token_id>& prefix,
                                           const std::vector<specdec::token_id>& tokens) {
    ref.truncate(0);
    std::vector<specdec::token_id> all = prefix;
    all.insert(all.end(), tokens.begin(), tokens.end());
    const specdec::logits_block out = ref.forward(all);
    const auto last = out.row(out.rows - 1);
    return {last.begin(), last.end()};
  }
  static void expect_rows_match(std::span<const float> got, std::span<const float> want, const std::string& what) {
    if (tolerance == 0.0f) {
      EXPECT_TRUE(specdec::testing::same_bits(got, want)) << what << " differs bit for bit";
      return;
    }
    ASSERT_EQ(got.size(), want.size()) << what;
    for (std::size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tolerance) << what << ", logit " << i;
  }
};
TYPED_TEST_SUITE_P(specdec_tree_model_contract);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(specdec_tree_model_contract);

TYPED_TEST_P(specdec_tree_model_contract, satisfies_the_concept) {
  static_assert(specdec::tree_model<TypeParam>,
                "specdec: the type given to SPECDEC_TREE_MODEL_CONTRACT_TESTS is not a specdec::tree_model");
  TypeParam m = TestFixture::make();
  EXPECT_GE(static_cast<std::size_t>(m.context_length()), 16u) << "the tree contract needs a context of >= 16 tokens";
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 0u) << "a fresh model has an empty cache";
  const specdec::logits_block none = m.forward_tree({}, {});
  EXPECT_EQ(none.rows, 0u) << "an empty tree gives no rows";
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), 0u);
}

TYPED_TEST_P(specdec_tree_model_contract, node_rows_equal_chain_forwards_of_their_paths) {
  TypeParam ref = TestFixture::make();
  const std::size_t vocab = ref.vocab_size();
  const specdec::token_tree t = TestFixture::whole_tree(vocab);
  for (const auto& prefix : {std::vector<specdec::token_id>{}, specdec::testing::some_tokens(vocab, 3, 10)}) {
    TypeParam m = TestFixture::make();
    const std::vector<float> rows = TestFixture::forward_whole_tree(m, prefix);
    ASSERT_EQ(rows.size(), t.size() * vocab);
    for (std::size_t node = 0; node < t.size(); ++node) {
      const std::vector<float> want = TestFixture::chain_last_row(ref, prefix, t.path_tokens(node));
      TestFixture::expect_rows_match(std::span(rows).subspan(node * vocab, vocab), want,
                                     "node " + std::to_string(node) + " (depth " + std::to_string(t.depth(node)) +
                                         ") after " + std::to_string(prefix.size()) + " cached tokens");
    }
  }
}

TYPED_TEST_P(specdec_tree_model_contract, keep_path_then_forward_equals_a_fresh_model) {
  TypeParam m = TestFixture::make();
  TypeParam fresh = TestFixture::make();
  const std::size_t vocab = m.vocab_size();
  const specdec::token_tree t = TestFixture::whole_tree(vocab);
  const auto prefix = specdec::testing::some_tokens(vocab, 3, 13);
  const auto next = specdec::testing::some_tokens(vocab, 2, 14);
  // Empty, one root, a partial path, the other root's path, the deepest path (through
  // the second forward's nodes), a path ending at a node of the second forward.
  const std::vector<std::vector<std::size_t>> paths{{}, {0}, {0, 1}, {5, 7}, t.path_to(11), t.path_to(10)};
  for (const auto& path : paths) {
    m.truncate(0);
    (void)TestFixture::forward_whole_tree(m, prefix);
    m.keep_path(path);
    ASSERT_EQ(static_cast<std::size_t>(m.cache_length()), prefix.size() + path.size());
    const std::vector<float> got = specdec::testing::copy_rows(m.forward(next));
    std::vector<specdec::token_id> kept = prefix;
    for (std::size_t n : path) kept.push_back(t.token(n));
    fresh.truncate(0);
    (void)fresh.forward(kept);
    const std::vector<float> want = specdec::testing::copy_rows(fresh.forward(next));
    TestFixture::expect_rows_match(got, want,
                                   "forward after keep_path of a " + std::to_string(path.size()) + "-node path");
    // A new tree on top of the kept path reads it too.
    m.truncate(kept.size());
    const std::vector<std::int32_t> root{specdec::no_parent};
    const std::vector<float> tree_row = specdec::testing::copy_rows(m.forward_tree(std::span(next).first(1), root));
    fresh.truncate(kept.size());
    const std::vector<float> chain_row = specdec::testing::copy_rows(fresh.forward(std::span(next).first(1)));
    TestFixture::expect_rows_match(tree_row, chain_row, "a new tree's root after keep_path");
  }
}

TYPED_TEST_P(specdec_tree_model_contract, truncate_ends_a_tree_without_keeping_nodes) {
  TypeParam m = TestFixture::make();
  TypeParam fresh = TestFixture::make();
  const std::size_t vocab = m.vocab_size();
  const auto prefix = specdec::testing::some_tokens(vocab, 4, 15);
  const auto next = specdec::testing::some_tokens(vocab, 3, 16);
  for (std::size_t keep : {std::size_t{100}, std::size_t{6}, std::size_t{4}, std::size_t{2}}) {
    m.truncate(0);
    (void)TestFixture::forward_whole_tree(m, prefix);
    m.truncate(keep);  // never keeps a tree node, whatever keep is
    const std::size_t kept = std::min(keep, prefix.size());
    ASSERT_EQ(static_cast<std::size_t>(m.cache_length()), kept) << "truncate(" << keep << ") during a tree";
    const std::vector<float> got = specdec::testing::copy_rows(m.forward(next));
    fresh.truncate(0);
    if (kept > 0) (void)fresh.forward(std::span(prefix).first(kept));
    const std::vector<float> want = specdec::testing::copy_rows(fresh.forward(next));
    TestFixture::expect_rows_match(got, want, "forward after truncate(" + std::to_string(keep) + ") during a tree");
  }
}

TYPED_TEST_P(specdec_tree_model_contract, bad_trees_and_paths_throw_and_leave_the_model_alone) {
  TypeParam m = TestFixture::make();
  TypeParam fresh = TestFixture::make();
  const std::size_t vocab = m.vocab_size();
  const auto prefix = specdec::testing::some_tokens(vocab, 3, 17);
  const std::vector<specdec::token_id> two{0, 1};
  // With no tree pending, a non-empty path names no node.
  (void)m.forward(prefix);
  const std::vector<std::size_t> root_path{0};
  EXPECT_THROW(m.keep_path(root_path), specdec::invalid_argument);
  EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), prefix.size());
  (void)m.forward_tree(two, std::vector<std::int32_t>{-1, 0});  // nodes 0 and 1 pending
  const std::size_t pending = prefix.size() + 2;
  const auto expect_unchanged = [&](const char* what) {
    EXPECT_EQ(static_cast<std::size_t>(m.cache_length()), pending) << what;
  };
  const auto expect_invalid = [&](auto&& call, const char* what, const char* mentions) {
    try {
      call();
      ADD_FAILURE() << what << ": no exception";
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(mentions), std::string::npos)
          << what << ": the message should mention '" << mentions << "': " << e.what();
    } catch (...) {
      ADD_FAILURE() << what << ": not a specdec::invalid_argument";
    }
    expect_unchanged(what);
  };
  // Malformed parents (nodes of this call are numbered from 2 on).
  const auto tree_with = [&](std::vector<std::int32_t> parents) {
    return [&m, &two, parents] { (void)m.forward_tree(two, parents); };
  };
  expect_invalid(tree_with({-1}), "fewer parents than tokens", "parent");
  expect_invalid(tree_with({-1, 3}), "a node as its own parent", "parents[1]");
  expect_invalid(tree_with({4, 0}), "a later node as parent", "parents[0]");
  expect_invalid(tree_with({-2, 0}), "a parent below -1", "parents[0]");
  // A chain forward while the tree is pending.
  expect_invalid([&] { (void)m.forward(two); }, "forward during a tree", "keep_path");
  // Malformed paths.
  expect_invalid([&] { m.keep_path(std::vector<std::size_t>{1}); }, "a path not starting at a root", "path[0]");
  expect_invalid([&] { m.keep_path(std::vector<std::size_t>{0, 0}); }, "a path that repeats a node", "path[1]");
  expect_invalid([&] { m.keep_path(std::vector<std::size_t>{0, 1, 2}); }, "a path past the tree", "path[2]");
  // Bad ids and too many nodes.
  const std::vector<specdec::token_id> bad_id{0, static_cast<specdec::token_id>(vocab)};
  EXPECT_THROW((void)m.forward_tree(bad_id, std::vector<std::int32_t>{-1, 0}), specdec::token_out_of_range);
  expect_unchanged("an out-of-range id");
  const std::size_t room = static_cast<std::size_t>(m.context_length()) - pending;
  const std::vector<specdec::token_id> overflow(room + 1, specdec::token_id{0});
  EXPECT_THROW((void)m.forward_tree(overflow, std::vector<std::int32_t>(room + 1, -1)), specdec::context_overflow);
  expect_unchanged("nodes past the context");
  // The tree is intact: extending it and keeping a path still gives a fresh model's rows.
  (void)m.forward_tree(std::span(two).first(1), std::vector<std::int32_t>{1});  // node 2 under node 1
  m.keep_path(std::vector<std::size_t>{0, 1, 2});
  ASSERT_EQ(static_cast<std::size_t>(m.cache_length()), prefix.size() + 3);
  const std::vector<float> got = specdec::testing::copy_rows(specdec::forward_one(m, specdec::token_id{1}));
  std::vector<specdec::token_id> kept = prefix;
  kept.insert(kept.end(), {0, 1, 0, 1});
  const specdec::logits_block out = fresh.forward(kept);
  const auto last = out.row(out.rows - 1);
  TestFixture::expect_rows_match(got, std::vector<float>(last.begin(), last.end()), "after the rejected calls");
}

REGISTER_TYPED_TEST_SUITE_P(specdec_tree_model_contract, satisfies_the_concept,
                            node_rows_equal_chain_forwards_of_their_paths,
                            keep_path_then_forward_equals_a_fresh_model, truncate_ends_a_tree_without_keeping_nodes,
                            bad_trees_and_paths_throw_and_leave_the_model_alone);

// ---- tree_drafter -------------------------------------------------------------------------

template <class D>
class specdec_tree_drafter_contract : public ::testing::Test {
 protected:
  /// Checks `d` against request `r` after S of `s_size` tokens in a vocabulary of `vocab`.
  static void expect_within(const specdec::tree_draft& d, const specdec::tree_request& r, std::size_t s_size,
                            std::size_t vocab, const std::string& what) {
    EXPECT_EQ(d.position, s_size) << what;
    EXPECT_LE(d.size(), r.drafts() ? r.max_nodes : 0) << what << ": more nodes than max_nodes";
    EXPECT_LE(d.tree.height(), r.max_depth) << what << ": deeper than max_depth";
    EXPECT_NO_THROW(d.check(vocab, "contract")) << what;
    for (std::size_t n = 0; n <= d.size(); ++n) {
      const auto kids = n == 0 ? d.tree.roots() : d.tree.children(n - 1);
      EXPECT_LE(kids.size(), r.branching) << what << ": more children than branching";
      for (std::size_t a = 0; a < kids.size(); ++a)
        for (std::size_t b = a + 1; b < kids.size(); ++b)
          EXPECT_NE(d.tree.token(kids[a]), d.tree.token(kids[b])) << what << ": two siblings share a token";
      if (!d.has_distributions()) continue;
      for (std::size_t k : kids) {
        if (d.sampled[k]) {
          EXPECT_GT(d.q_row(n)[static_cast<std::size_t>(d.tree.token(k))], 0.0f)
              << what << ": a sampled node has draft probability 0";
        }
      }
    }
  }
  /// Runs `steps` steps of drafting, accepting the path to the last node and a next
  /// token, as a decoder would; returns every tree's tokens.
  static std::vector<std::vector<specdec::token_id>> run(D& drafter, const specdec::tree_request& r,
                                                         const specdec::sampling_params& params, std::uint64_t seed,
                                                         std::size_t steps) {
    const std::size_t vocab = static_cast<std::size_t>(drafter.vocab_size());
    std::vector<specdec::token_id> s = specdec::testing::some_tokens(vocab, 6, 1);
    specdec::random_source rng(seed);
    std::vector<std::vector<specdec::token_id>> out;
    drafter.reset();
    for (std::size_t step = 0; step < steps; ++step) {
      const specdec::tree_draft& d = drafter.draft(s, r, params, rng);
      expect_within(d, r, s.size(), vocab, "step " + std::to_string(step));
      out.emplace_back(d.tree.tokens().begin(), d.tree.tokens().end());
      std::vector<std::size_t> path;
      if (!d.empty()) path = d.tree.path_to(d.size() - 1);
      drafter.accept(path);
      for (std::size_t n : path) s.push_back(d.tree.token(n));
      s.push_back(static_cast<specdec::token_id>((step * 7 + 3) % vocab));
    }
    drafter.sync(s);
    return out;
  }
};
TYPED_TEST_SUITE_P(specdec_tree_drafter_contract);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(specdec_tree_drafter_contract);

TYPED_TEST_P(specdec_tree_drafter_contract, every_tree_stays_within_its_request) {
  static_assert(specdec::tree_drafter<TypeParam>,
                "specdec: the type given to SPECDEC_TREE_DRAFTER_CONTRACT_TESTS is not a specdec::tree_drafter");
  TypeParam d = specdec::testing::tree_drafter_factory<TypeParam>::make();
  for (const specdec::sampling_params& params :
       {specdec::sampling_params{}, specdec::sampling_params{.temperature = 1.0f, .top_k = 5}})
    for (const specdec::tree_request& r :
         {specdec::tree_request{1, 1, 1}, specdec::tree_request{4, 4, 1}, specdec::tree_request{7, 3, 3},
          specdec::tree_request{12, 5, 2}, specdec::tree_request{0, 3, 2}})
      (void)TestFixture::run(d, r, params, 3, 6);
}

TYPED_TEST_P(specdec_tree_drafter_contract, reset_makes_it_reproducible) {
  TypeParam d = specdec::testing::tree_drafter_factory<TypeParam>::make();
  const specdec::tree_request r{8, 4, 2};
  const specdec::sampling_params t1{.temperature = 1.0f};
  const auto first = TestFixture::run(d, r, t1, 11, 5);
  EXPECT_EQ(TestFixture::run(d, r, t1, 11, 5), first) << "the same S and seed after reset() must give the same trees";
}

TYPED_TEST_P(specdec_tree_drafter_contract, a_bad_request_throws_invalid_argument) {
  TypeParam d = specdec::testing::tree_drafter_factory<TypeParam>::make();
  d.reset();
  specdec::random_source rng(1);
  const auto s = specdec::testing::some_tokens(static_cast<std::size_t>(d.vocab_size()), 6, 1);
  EXPECT_THROW((void)d.draft(s, specdec::tree_request{4, 2, 0}, specdec::sampling_params{}, rng),
               specdec::invalid_argument)
      << "branching 0 with a node budget";
}

REGISTER_TYPED_TEST_SUITE_P(specdec_tree_drafter_contract, every_tree_stays_within_its_request,
                            reset_makes_it_reproducible, a_bad_request_throws_invalid_argument);

// ---- fallback_policy ---------------------------------------------------------------------

template <class P>
class specdec_fallback_contract : public ::testing::Test {
 protected:
  using traits = specdec::testing::fallback_traits<P>;
};
TYPED_TEST_SUITE_P(specdec_fallback_contract);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(specdec_fallback_contract);

TYPED_TEST_P(specdec_fallback_contract, defaults_validate_and_blocks_stop_within_the_cap) {
  static_assert(specdec::fallback_policy<TypeParam>,
                "specdec: the type given to SPECDEC_FALLBACK_CONTRACT_TESTS is not a specdec::fallback_policy");
  using traits = typename TestFixture::traits;
  TypeParam policy = traits::make();
  EXPECT_NO_THROW(specdec::validate_policy(policy));
  constexpr std::size_t cap = traits::cap;
  std::mt19937_64 g(11);
  using specdec::testing::one_hot_distribution;
  using specdec::testing::uniform_distribution;
  std::vector<std::vector<float>> qs{one_hot_distribution(8, 3), uniform_distribution(8),
                                     uniform_distribution(2, 8), specdec::testing::random_distribution(g, 8)};
  for (const auto& q : qs) {
    auto [n, action] = specdec::testing::run_block(policy, q);
    EXPECT_GE(n, 1u);
    EXPECT_LE(n, cap);
    EXPECT_NE(action, specdec::draft_action::keep_and_continue);
  }
}

TYPED_TEST_P(specdec_fallback_contract, validate_names_the_bad_knob) {
  using traits = typename TestFixture::traits;
  for (const auto& [policy, knob] : traits::bad_knobs()) {
    specdec::testing::detail::expect_knob_error([&] { specdec::validate_policy(policy); }, knob);
    if constexpr (traits::validates_on_use) {
      TypeParam copy = policy;
      EXPECT_THROW((void)copy.decide(specdec::draft_step{0, specdec::testing::uniform_distribution(4), 0}),
                   specdec::invalid_argument)
          << knob;
    }
  }
}

TYPED_TEST_P(specdec_fallback_contract, observe_never_breaks_the_cap) {
  using traits = typename TestFixture::traits;
  constexpr double nan_d = std::numeric_limits<double>::quiet_NaN();
  TypeParam policy = traits::make();
  constexpr std::size_t cap = traits::cap;
  std::mt19937_64 g(5);
  const std::vector<specdec::step_outcome> odd{
      {},                                                        // nothing proposed
      {.proposed = 3, .accepted = 3},                            // no timing
      {.proposed = 4, .accepted = 9},                            // accepted > proposed (bad report)
      {.proposed = 4, .accepted = 0, .draft_seconds = 0.0, .draft_forwards = 4, .target_seconds = 0.0},
      {.proposed = 2, .accepted = 1, .draft_seconds = 1e-9, .draft_forwards = 0, .target_seconds = 1.0},
      {.proposed = 2, .accepted = 2, .draft_seconds = 1e300, .draft_forwards = 1, .target_seconds = 1e-300},
      {.proposed = 5, .accepted = 2, .draft_seconds = nan_d, .draft_forwards = 5, .target_seconds = 0.1},
  };
  for (int round = 0; round < 300; ++round) {
    specdec::step_outcome o = odd[static_cast<std::size_t>(round) % odd.size()];
    if (round >= 100) {  // then plausible random outcomes
      std::uniform_int_distribution<std::size_t> prop(0, 16);
      o.proposed = prop(g);
      o.accepted = std::uniform_int_distribution<std::size_t>(0, o.proposed)(g);
      o.draft_forwards = o.proposed;
      o.draft_seconds = 0.001 * static_cast<double>(o.proposed);
      o.target_seconds = 0.02;
    }
    EXPECT_NO_THROW(policy.observe(o));
    auto [n, action] = specdec::testing::run_block(policy, specdec::testing::random_distribution(g, 6));
    ASSERT_LE(n, cap) << "round " << round;
    ASSERT_NE(action, specdec::draft_action::keep_and_continue);
  }
}

TYPED_TEST_P(specdec_fallback_contract, reset_restores_the_fresh_behaviour) {
  using traits = typename TestFixture::traits;
  TypeParam fresh = traits::make();
  TypeParam used = traits::make();
  for (int i = 0; i < 20; ++i)
    used.observe({.proposed = 8, .accepted = 8, .draft_seconds = 0.001, .draft_forwards = 8, .target_seconds = 0.5});
  specdec::reset_policy(used);  // a policy without reset() must not learn at all
  const auto q = specdec::testing::uniform_distribution(3, 8);
  EXPECT_EQ(specdec::testing::run_block(fresh, q), specdec::testing::run_block(used, q));
}

REGISTER_TYPED_TEST_SUITE_P(specdec_fallback_contract, defaults_validate_and_blocks_stop_within_the_cap,
                            validate_names_the_bad_knob, observe_never_breaks_the_cap,
                            reset_restores_the_fresh_behaviour);

// ---- rollback_policy ---------------------------------------------------------------------

template <class R>
class specdec_rollback_contract : public ::testing::Test {
 protected:
  using traits = specdec::testing::rollback_traits<R>;
};
TYPED_TEST_SUITE_P(specdec_rollback_contract);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(specdec_rollback_contract);

TYPED_TEST_P(specdec_rollback_contract, accepted_is_at_most_k_and_next_is_possible_for_the_target) {
  static_assert(specdec::rollback_policy<TypeParam>,
                "specdec: the type given to SPECDEC_ROLLBACK_CONTRACT_TESTS is not a specdec::rollback_policy");
  using traits = typename TestFixture::traits;
  TypeParam policy = traits::make();
  EXPECT_NO_THROW(specdec::validate_policy(policy));
  std::mt19937_64 g(1);
  const std::vector<specdec::sampling_params> settings{
      {}, {.temperature = 1.0f}, {.temperature = 0.7f, .top_k = 3}, {.temperature = 1.3f, .top_p = 0.8f}};
  for (int trial = 0; trial < 400; ++trial) {
    const auto& params = settings[static_cast<std::size_t>(trial) % settings.size()];
    const std::size_t k = static_cast<std::size_t>(trial) % 6;  // includes k = 0
    auto b = specdec::testing::verify_block::make(g, k, 7, params, trial % 3 == 0 ? 0.0f : 1.5f,
                                                  static_cast<std::uint64_t>(trial));
    const specdec::verify_result r = policy.verify(b.input());
    ASSERT_LE(r.accepted, k);
    ASSERT_GE(r.next, 0);
    ASSERT_LT(static_cast<std::size_t>(r.next), b.vocab);
    EXPECT_GT(b.input().p_row(r.accepted)[static_cast<std::size_t>(r.next)], 0.0f)
        << "trial " << trial << ": next has zero target probability";
  }
}

TYPED_TEST_P(specdec_rollback_contract, greedy_identical_draft_accepts_everything) {
  using traits = typename TestFixture::traits;
  TypeParam policy = traits::make();
  std::mt19937_64 g(2);
  for (int trial = 0; trial < 100; ++trial) {
    const std::size_t k = 1 + static_cast<std::size_t>(trial) % 8;
    auto b = specdec::testing::verify_block::make(g, k, 9, specdec::sampling_params{}, /*noise=*/0.0f, 17);
    const double before = specdec::random_source(17).uniform();
    const specdec::verify_result r = policy.verify(b.input());
    EXPECT_EQ(r.accepted, k);
    EXPECT_EQ(r.next, specdec::argmax(b.input().logits_row(k)));
    EXPECT_EQ(b.rng.uniform(), before) << "greedy verification consumed randomness";
  }
}

TYPED_TEST_P(specdec_rollback_contract, same_seed_same_verdict) {
  using traits = typename TestFixture::traits;
  TypeParam policy = traits::make();
  std::mt19937_64 g(3);
  for (int trial = 0; trial < 100; ++trial) {
    auto b = specdec::testing::verify_block::make(g, 4, 6, {.temperature = 1.0f}, 1.0f, 99);
    auto c = b;
    const specdec::verify_result r1 = policy.verify(b.input());
    const specdec::verify_result r2 = policy.verify(c.input());
    EXPECT_EQ(r1.accepted, r2.accepted);
    EXPECT_EQ(r1.next, r2.next);
  }
}

TYPED_TEST_P(specdec_rollback_contract, bad_knobs_and_malformed_input_throw) {
  using traits = typename TestFixture::traits;
  for (const auto& [policy, knob] : traits::bad_knobs()) {
    specdec::testing::detail::expect_knob_error([&] { specdec::validate_policy(policy); }, knob);
    if constexpr (traits::verify_validates) {
      std::mt19937_64 g(4);
      auto b = specdec::testing::verify_block::make(g, 2, 5, {.temperature = 1.0f}, 1.0f, 1);
      TypeParam copy = policy;
      EXPECT_THROW((void)copy.verify(b.input()), specdec::invalid_argument) << knob;
    }
  }
  if constexpr (traits::checks_input) {
    TypeParam policy = traits::make();
    std::mt19937_64 g(5);
    auto b = specdec::testing::verify_block::make(g, 3, 5, {.temperature = 1.0f}, 1.0f, 1);
    specdec::verify_input in = b.input();
    in.p = in.p.first(3 * 5);  // one row short
    EXPECT_THROW((void)policy.verify(in), specdec::invalid_argument);
    in = b.input();
    in.q = in.q.first(2 * 5);
    EXPECT_THROW((void)policy.verify(in), specdec::invalid_argument);
    in = b.input();
    in.vocab = 0;
    EXPECT_THROW((void)policy.verify(in), specdec::invalid_argument);
    b.drafted[1] = 5;  // out of range
    EXPECT_THROW((void)policy.verify(b.input()), specdec::token_out_of_range);
  }
}

REGISTER_TYPED_TEST_SUITE_P(specdec_rollback_contract, accepted_is_at_most_k_and_next_is_possible_for_the_target,
                            greedy_identical_draft_accepts_everything, same_seed_same_verdict,
                            bad_knobs_and_malformed_input_throw);

// ---- distance_metric ---------------------------------------------------------------------

template <class D>
class specdec_distance_contract : public ::testing::Test {
 protected:
  using traits = specdec::testing::distance_traits<D>;
};
TYPED_TEST_SUITE_P(specdec_distance_contract);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(specdec_distance_contract);

TYPED_TEST_P(specdec_distance_contract, has_a_name) {
  static_assert(specdec::distance_metric<TypeParam>,
                "specdec: the type given to SPECDEC_DISTANCE_CONTRACT_TESTS is not a specdec::distance_metric");
  EXPECT_FALSE(std::string_view(TypeParam::name).empty());
}

TYPED_TEST_P(specdec_distance_contract, identical_inputs) {
  using traits = typename TestFixture::traits;
  const TypeParam d = traits::make();
  std::mt19937 rng(11);
  for (std::size_t n : {1u, 2u, 7u, 512u, 32000u}) {
    const auto p = specdec::testing::random_softmax(n, rng);
    const specdec::token_id y = static_cast<specdec::token_id>(n / 2);
    const float v = static_cast<float>(d(p, p, y));
    if constexpr (traits::on_equal == specdec::testing::self_distance::zero) {
      EXPECT_LE(std::abs(v), traits::equal_tolerance) << "d(p, p) = " << v << ", n = " << n;
    } else if constexpr (traits::on_equal == specdec::testing::self_distance::minus_log_target) {
      EXPECT_FLOAT_EQ(v, -std::log(p[static_cast<std::size_t>(y)])) << "n = " << n;
    }
  }
  for (const auto& p : specdec::testing::distributions_with_zeros()) {
    if constexpr (traits::on_equal == specdec::testing::self_distance::zero) {
      EXPECT_LE(std::abs(static_cast<float>(d(p, p, 0))), traits::equal_tolerance);
    }
  }
}

TYPED_TEST_P(specdec_distance_contract, non_negative_and_finite_with_zeros) {
  using traits = typename TestFixture::traits;
  const TypeParam d = traits::make();
  const auto dists = specdec::testing::distributions_with_zeros();
  for (const auto& p : dists) {
    for (const auto& q : dists) {
      for (specdec::token_id y = 0; y < 4; ++y) {
        const float v = static_cast<float>(d(p, q, y));
        EXPECT_TRUE(std::isfinite(v)) << TypeParam::name << " gave " << v;
        EXPECT_GE(v, 0.0f) << TypeParam::name;
      }
    }
  }
  std::mt19937 rng(5);
  for (int i = 0; i < 20; ++i) {
    // Very peaked distributions underflow to exact zeros in many entries.
    const auto p = specdec::testing::random_softmax(64, rng, 40.0f);
    const auto q = specdec::testing::random_softmax(64, rng, 40.0f);
    const float v = static_cast<float>(d(p, q, 3));
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_GE(v, 0.0f);
  }
}

TYPED_TEST_P(specdec_distance_contract, symmetry_and_bound_where_promised) {
  using traits = typename TestFixture::traits;
  const TypeParam d = traits::make();
  if constexpr (traits::symmetric) {
    std::mt19937 rng(3);
    for (std::size_t n : {2u, 16u, 2048u}) {
      const auto p = specdec::testing::random_softmax(n, rng);
      const auto q = specdec::testing::random_softmax(n, rng);
      EXPECT_NEAR(d(p, q, 0), d(q, p, 0), 1e-6f);
    }
  }
  constexpr auto bound = traits::upper_bound;
  if constexpr (bound.has_value()) {
    if constexpr (traits::disjoint_reaches_bound) {
      const std::vector<float> p{1, 0, 0}, q{0, 0.5f, 0.5f};
      EXPECT_NEAR(d(p, q, 0), *bound, 1e-6f);
    }
    std::mt19937 rng(9);
    for (int i = 0; i < 50; ++i) {
      const auto a = specdec::testing::random_softmax(100, rng, 1.0f + static_cast<float>(i));
      const auto b = specdec::testing::random_softmax(100, rng, 1.0f + static_cast<float>(i));
      EXPECT_LE(d(a, b, 0), *bound + 1e-6f);
    }
  }
}

TYPED_TEST_P(specdec_distance_contract, rejects_size_mismatch_and_bad_token) {
  using traits = typename TestFixture::traits;
  if constexpr (traits::checks_input) {
    const TypeParam d = traits::make();
    const std::vector<float> p3{0.2f, 0.3f, 0.5f}, p4{0.25f, 0.25f, 0.25f, 0.25f};
    try {
      (void)d(p3, p4, 0);
      FAIL() << "expected specdec::invalid_argument";
    } catch (const specdec::invalid_argument& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(std::string(std::string_view(TypeParam::name))), std::string::npos) << msg;
      EXPECT_NE(msg.find('3'), std::string::npos) << msg;
      EXPECT_NE(msg.find('4'), std::string::npos) << msg;
    }
    EXPECT_THROW((void)d(p4, p3, 0), specdec::invalid_argument);
    EXPECT_THROW((void)d(p3, p3, 3), specdec::invalid_argument);
    EXPECT_THROW((void)d(p3, p3, -1), specdec::invalid_argument);
    EXPECT_THROW((void)d(std::span<const float>{}, std::span<const float>{}, 0), specdec::invalid_argument);
    EXPECT_NO_THROW((void)d(p3, p3, 2));
  }
}

REGISTER_TYPED_TEST_SUITE_P(specdec_distance_contract, has_a_name, identical_inputs,
                            non_negative_and_finite_with_zeros, symmetry_and_bound_where_promised,
                            rejects_size_mismatch_and_bad_token);

// ---- verifier ----------------------------------------------------------------------------

template <class V>
class specdec_verifier_contract : public ::testing::Test {
 protected:
  using factory = specdec::testing::verifier_factory<V>;
  static constexpr specdec::sampling_params greedy{};

  /// The reference's greedy continuation of `prompt`, `n` tokens long.
  static std::vector<specdec::token_id> greedy_tokens(const std::vector<specdec::token_id>& prompt, std::size_t n) {
    auto ref = factory::reference();
    specdec::autoregressive_decoder<decltype(ref)> dec(ref);
    return dec.generate(prompt, {.max_new_tokens = n, .stop_at_eos = false}).tokens;
  }
  static std::vector<specdec::token_id> prompt() { return {1, 3, 4}; }
};
TYPED_TEST_SUITE_P(specdec_verifier_contract);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(specdec_verifier_contract);

TYPED_TEST_P(specdec_verifier_contract, satisfies_the_concept) {
  static_assert(specdec::verifier<TypeParam>, "the type does not model specdec::verifier");
  auto v = TestFixture::factory::make();
  auto ref = TestFixture::factory::reference();
  EXPECT_EQ(v.vocab_size(), static_cast<std::size_t>(ref.vocab_size()));
}

TYPED_TEST_P(specdec_verifier_contract, greedy_verdicts_follow_the_target) {
  auto v = TestFixture::factory::make();
  specdec::random_source rng(1);
  const auto s = TestFixture::prompt();
  const auto want = TestFixture::greedy_tokens(s, 6);
  const std::size_t vocab = v.vocab_size();
  // An empty draft: the target's own next token.
  v.reset();
  specdec::verdict r = v.verify(s, specdec::draft_block{.position = s.size()}, TestFixture::greedy, rng);
  EXPECT_EQ(r.accepted, 0u);
  EXPECT_EQ(r.next, want[0]);
  // The target's own continuation is accepted whole; the bonus is the next greedy token.
  for (std::size_t k = 1; k <= 5; ++k) {
    v.reset();
    const std::vector<specdec::token_id> draft(want.begin(), want.begin() + static_cast<std::ptrdiff_t>(k));
    r = v.verify(s, specdec::draft_block{.tokens = draft, .position = s.size()}, TestFixture::greedy, rng);
    EXPECT_EQ(r.accepted, k);
    EXPECT_EQ(r.next, want[k]);
  }
  // Corrupted at position j: exactly j survive and the replacement is the greedy token.
  for (std::size_t j = 0; j < 4; ++j) {
    v.reset();
    std::vector<specdec::token_id> draft(want.begin(), want.begin() + 4);
    draft[j] = static_cast<specdec::token_id>((static_cast<std::size_t>(draft[j]) + 1) % vocab);
    r = v.verify(s, specdec::draft_block{.tokens = draft, .position = s.size()}, TestFixture::greedy, rng);
    EXPECT_EQ(r.accepted, j) << "corrupted at " << j;
    EXPECT_EQ(r.next, want[j]) << "corrupted at " << j;
  }
}

TYPED_TEST_P(specdec_verifier_contract, consecutive_steps_continue_the_sequence) {
  // Two steps in a row without reset: the second sees S grown by the first verdict.
  auto v = TestFixture::factory::make();
  specdec::random_source rng(1);
  auto s = TestFixture::prompt();
  const auto want = TestFixture::greedy_tokens(s, 8);
  v.reset();
  std::vector<specdec::token_id> d1{want[0], want[1], static_cast<specdec::token_id>((want[2] + 1) % static_cast<specdec::token_id>(v.vocab_size()))};
  specdec::verdict r = v.verify(s, specdec::draft_block{.tokens = d1, .position = s.size()}, TestFixture::greedy, rng);
  ASSERT_EQ(r.accepted, 2u);
  ASSERT_EQ(r.next, want[2]);
  s.insert(s.end(), {want[0], want[1], want[2]});
  const std::vector<specdec::token_id> d2{want[3], want[4]};
  r = v.verify(s, specdec::draft_block{.tokens = d2, .position = s.size()}, TestFixture::greedy, rng);
  EXPECT_EQ(r.accepted, 2u);
  EXPECT_EQ(r.next, want[5]);
  s.insert(s.end(), {want[3], want[4], want[5]});
  v.sync(s);  // end of a generation: must stay usable after a reset
  v.reset();
  r = v.verify(TestFixture::prompt(), specdec::draft_block{.position = TestFixture::prompt().size()},
               TestFixture::greedy, rng);
  EXPECT_EQ(r.next, want[0]);
}

TYPED_TEST_P(specdec_verifier_contract, same_seed_same_sampled_verdict) {
  const auto s = TestFixture::prompt();
  const std::vector<specdec::token_id> draft{2, 3, 1};
  const specdec::sampling_params hot{.temperature = 1.0f};
  std::vector<std::pair<std::size_t, specdec::token_id>> seen;
  for (int rep = 0; rep < 2; ++rep) {
    auto v = TestFixture::factory::make();
    for (std::uint64_t seed = 0; seed < 8; ++seed) {
      v.reset();
      specdec::random_source rng(seed);
      const specdec::verdict r = v.verify(s, specdec::draft_block{.tokens = draft, .position = s.size()}, hot, rng);
      EXPECT_LE(r.accepted, draft.size());
      EXPECT_LT(static_cast<std::size_t>(r.next), v.vocab_size());
      if (rep == 0) seen.emplace_back(r.accepted, r.next);
      else EXPECT_EQ(seen[seed], std::make_pair(r.accepted, r.next)) << "seed " << seed;
    }
  }
}

TYPED_TEST_P(specdec_verifier_contract, a_draft_at_the_wrong_position_throws) {
  auto v = TestFixture::factory::make();
  specdec::random_source rng(1);
  const auto s = TestFixture::prompt();
  const std::vector<specdec::token_id> draft{2};
  v.reset();
  EXPECT_THROW((void)v.verify(s, specdec::draft_block{.tokens = draft, .position = s.size() + 1},
                              TestFixture::greedy, rng),
               specdec::error);
}

TYPED_TEST_P(specdec_verifier_contract, speculative_decoding_over_it_is_exact_under_greedy) {
  auto v = TestFixture::factory::make();
  auto draft = TestFixture::factory::reference();  // a perfect draft ...
  const auto s = TestFixture::prompt();
  const auto want = TestFixture::greedy_tokens(s, 24);
  specdec::basic_speculative_decoder dec(draft, specdec::fixed_gamma{.gamma = 3}, std::move(v));
  EXPECT_EQ(dec.generate(s, {.max_new_tokens = 24, .stop_at_eos = false}).tokens, want);
  // ... and an id-only drafter that is right only some of the time.
  struct every_other {
    std::vector<specdec::token_id> out;
    std::span<const specdec::token_id> propose(std::span<const specdec::token_id> seq, std::size_t max) {
      out.assign(std::min<std::size_t>(max, 2), seq.back());
      return out;
    }
  } ids;
  specdec::basic_speculative_decoder dec2(ids, specdec::fixed_gamma{.gamma = 2}, TestFixture::factory::make());
  EXPECT_EQ(dec2.generate(s, {.max_new_tokens = 24, .stop_at_eos = false}).tokens, want);
}

REGISTER_TYPED_TEST_SUITE_P(specdec_verifier_contract, satisfies_the_concept, greedy_verdicts_follow_the_target,
                            consecutive_steps_continue_the_sequence, same_seed_same_sampled_verdict,
                            a_draft_at_the_wrong_position_throws,
                            speculative_decoding_over_it_is_exact_under_greedy);

// ---------------------------------------------------------------------------------------
// The macros

/// Runs the `language_model` contract on each type (built by `model_factory<M>::make()`).
///
/// ```cpp
/// SPECDEC_MODEL_CONTRACT_TESTS(markov, specdec::testing::markov_model);
/// ```
#define SPECDEC_MODEL_CONTRACT_TESTS(prefix, ...) \
  using specdec_model_contract_types_##prefix = ::testing::Types<__VA_ARGS__>;       \
  INSTANTIATE_TYPED_TEST_SUITE_P(prefix, specdec_model_contract, specdec_model_contract_types_##prefix)

/// Runs the `tree_model` contract on each type (built by `model_factory<M>::make()`,
/// promises in `tree_model_traits<M>`).
///
/// ```cpp
/// SPECDEC_TREE_MODEL_CONTRACT_TESTS(markov, specdec::testing::markov_model);
/// ```
#define SPECDEC_TREE_MODEL_CONTRACT_TESTS(prefix, ...) \
  using specdec_tree_model_contract_types_##prefix = ::testing::Types<__VA_ARGS__>;       \
  INSTANTIATE_TYPED_TEST_SUITE_P(prefix, specdec_tree_model_contract, specdec_tree_model_contract_types_##prefix)

/// Runs the `fallback_policy` contract on each type (see `fallback_traits<P>`).
///
/// ```cpp
/// SPECDEC_FALLBACK_CONTRACT_TESTS(shipped, specdec::fixed_gamma, specdec::entropy_fallback);
/// ```
#define SPECDEC_FALLBACK_CONTRACT_TESTS(prefix, ...) \
  using specdec_fallback_contract_types_##prefix = ::testing::Types<__VA_ARGS__>;       \
  INSTANTIATE_TYPED_TEST_SUITE_P(prefix, specdec_fallback_contract, specdec_fallback_contract_types_##prefix)

/// Runs the `rollback_policy` contract on each type (see `rollback_traits<R>`).
///
/// ```cpp
/// SPECDEC_ROLLBACK_CONTRACT_TESTS(shipped, specdec::greedy_match);
/// ```
#define SPECDEC_ROLLBACK_CONTRACT_TESTS(prefix, ...) \
  using specdec_rollback_contract_types_##prefix = ::testing::Types<__VA_ARGS__>;       \
  INSTANTIATE_TYPED_TEST_SUITE_P(prefix, specdec_rollback_contract, specdec_rollback_contract_types_##prefix)

/// Runs the `distance_metric` contract on each type (see `distance_traits<D>`).
///
/// ```cpp
/// SPECDEC_DISTANCE_CONTRACT_TESTS(shipped, specdec::total_variation);
/// ```
#define SPECDEC_DISTANCE_CONTRACT_TESTS(prefix, ...) \
  using specdec_distance_contract_types_##prefix = ::testing::Types<__VA_ARGS__>;       \
  INSTANTIATE_TYPED_TEST_SUITE_P(prefix, specdec_distance_contract, specdec_distance_contract_types_##prefix)

/// Runs the `tree_drafter` contract on each type (built by `tree_drafter_factory<D>`):
/// every tree stays within its request (nodes, depth, branching, distinct siblings, ids
/// in range, sampled nodes with positive q) over several steps of draft/accept, greedy
/// and sampled; `reset()` makes the same S and seed give the same trees; branching 0
/// with a node budget throws `invalid_argument`.
///
/// ```cpp
/// SPECDEC_TREE_DRAFTER_CONTRACT_TESTS(text, specdec::text_index_drafter);
/// ```
#define SPECDEC_TREE_DRAFTER_CONTRACT_TESTS(prefix, ...) \
  using specdec_tree_drafter_contract_types_##prefix = ::testing::Types<__VA_ARGS__>;       \
  INSTANTIATE_TYPED_TEST_SUITE_P(prefix, specdec_tree_drafter_contract, specdec_tree_drafter_contract_types_##prefix)

/// Runs the `verifier` contract on each type (built by `verifier_factory<V>`).
///
/// ```cpp
/// SPECDEC_VERIFIER_CONTRACT_TESTS(local, my_local_verifier);
/// ```
#define SPECDEC_VERIFIER_CONTRACT_TESTS(prefix, ...) \
  using specdec_verifier_contract_types_##prefix = ::testing::Types<__VA_ARGS__>;       \
  INSTANTIATE_TYPED_TEST_SUITE_P(prefix, specdec_verifier_contract, specdec_verifier_contract_types_##prefix)

/// Expects an `exactness_report` (testing/exactness.hpp) to pass; prints it otherwise.
///
/// ```cpp
/// SPECDEC_EXPECT_EXACT(specdec::testing::check_case(c, my_generator_factory));
/// ```
#define SPECDEC_EXPECT_EXACT(report)                                    \
  do {                                                                  \
    const ::specdec::testing::exactness_report& specdec_report_ = (report); \
    EXPECT_TRUE(specdec_report_.passed()) << specdec_report_.describe(); \
  } while (false)

/// Expects an `exactness_report` to fail: a negative control, showing the check has the
/// power to see the bug it was given. Prints the report when it passes.
///
/// ```cpp
/// SPECDEC_EXPECT_NOT_EXACT(specdec::testing::check_case(c, broken_generator_factory));
/// ```
#define SPECDEC_EXPECT_NOT_EXACT(report)                                \
  do {                                                                  \
    const ::specdec::testing::exactness_report& specdec_report_ = (report); \
    EXPECT_FALSE(specdec_report_.passed())                              \
        << "the negative control passed: the check has no power against it\n" << specdec_report_.describe(); \
  } while (false)
