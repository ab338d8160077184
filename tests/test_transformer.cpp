// Tests for include/specdec/backend/cpu/transformer.hpp: the language_model contract
// (bit-exact block forward, truncate, bookkeeping, bad input) over the markov archetype
// and three real checkpoints, and greedy decoding against an independent naive scalar
// implementation of llama2.c's forward pass. (Kernels, formats and thread splits have
// their own files: test_kernels, test_weights, test_thread_pool.)
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <system_error>
#include <thread>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu_fixtures.hpp"
#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/detail/thread_pool.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/model.hpp"
#include "specdec/testing/archetypes.hpp"

namespace {
using namespace cpu_fixtures;

// ---- model factories for the typed contract tests ----
struct markov_traits {
  using model = specdec::testing::markov_model;
  static model make() { return model({.vocab = 7, .order = 2, .seed = 11, .context = 64}); }
};
struct stories_traits {
  using model = transformer;
  static model make() { return model(shared_checkpoint("stories260K.bin")); }
};
struct kjv_little_traits {
  using model = transformer;
  static model make() { return model(shared_checkpoint("kjv-little.bin")); }
};
struct kjv_big_traits {
  using model = transformer;
  static model make() { return model(shared_checkpoint("kjv-big.bin")); }
};
// The same contract for every weight format and for 1, 2 and 3 threads (3 > cores: an
// uneven split of rows and heads).
using specdec::cpu::weight_format;
template <weight_format F, std::size_t Threads>
struct formatted_traits {
  using model = transformer;
  static constexpr weight_format format = F;
  static constexpr std::size_t threads = Threads;
};
struct stories_q8_t2_traits : formatted_traits<weight_format::q8_0, 2> {
  static model make() { return model(shared_checkpoint("stories260K.bin"), {.threads = 2, .format = format}); }
};
struct kjv_little_bf16_t1_traits : formatted_traits<weight_format::bf16, 1> {
  static model make() { return model(shared_checkpoint("kjv-little.bin"), {.threads = 1, .format = format}); }
};
struct kjv_little_fp16_t3_traits : formatted_traits<weight_format::fp16, 3> {
  static model make() { return model(shared_checkpoint("kjv-little.bin"), {.threads = 3, .format = format}); }
};
struct kjv_little_q8_t2_traits : formatted_traits<weight_format::q8_0, 2> {
  static model make() { return model(shared_checkpoint("kjv-little.bin"), {.threads = 2, .format = format}); }
};
struct kjv_big_q8_t1_traits : formatted_traits<weight_format::q8_0, 1> {
  static model make() { return model(shared_checkpoint("kjv-big.bin"), {.threads = 1, .format = format}); }
};
// w8a8: stories260K's hidden width 172 ends in a partial 32-column group.
struct stories_w8a8_t3_traits : formatted_traits<weight_format::w8a8, 3> {
  static model make() { return model(shared_checkpoint("stories260K.bin"), {.threads = 3, .format = format}); }
};
struct kjv_little_w8a8_t2_traits : formatted_traits<weight_format::w8a8, 2> {
  static model make() { return model(shared_checkpoint("kjv-little.bin"), {.threads = 2, .format = format}); }
};
// 16-bit KV caches: the contract holds for them too (keys and values are rounded once,
// when stored). The three models cover head sizes 8 (scalar value tails), 32 and 64
// (grouped-query attention, 3 heads per KV head).
struct stories_kv_bf16_t3_traits : formatted_traits<weight_format::fp32, 3> {
  static model make() {
    return model(shared_checkpoint("stories260K.bin"), {.threads = 3, .kv_format = weight_format::bf16});
  }
};
struct kjv_little_bf16_kv_fp16_t2_traits : formatted_traits<weight_format::bf16, 2> {
  static model make() {
    return model(shared_checkpoint("kjv-little.bin"), {.threads = 2, .format = format, .kv_format = weight_format::fp16});
  }
};
struct kjv_big_kv_fp16_t1_traits : formatted_traits<weight_format::fp32, 1> {
  static model make() { return model(shared_checkpoint("kjv-big.bin"), {.threads = 1, .kv_format = weight_format::fp16}); }
};

template <class Traits>
class model_contract : public ::testing::Test {};
using model_types = ::testing::Types<markov_traits, stories_traits, kjv_little_traits, kjv_big_traits,
                                     stories_q8_t2_traits, kjv_little_bf16_t1_traits, kjv_little_fp16_t3_traits,
                                     kjv_little_q8_t2_traits, kjv_big_q8_t1_traits, stories_w8a8_t3_traits,
                                     kjv_little_w8a8_t2_traits, stories_kv_bf16_t3_traits,
                                     kjv_little_bf16_kv_fp16_t2_traits, kjv_big_kv_fp16_t1_traits>;
class type_names {
 public:
  template <class T>
  static std::string GetName(int) {
    if (std::is_same_v<T, markov_traits>) return "markov";
    if (std::is_same_v<T, stories_traits>) return "stories260K";
    if (std::is_same_v<T, kjv_little_traits>) return "kjv_little";
    if (std::is_same_v<T, stories_q8_t2_traits>) return "stories260K_q8_0_2threads";
    if (std::is_same_v<T, kjv_little_bf16_t1_traits>) return "kjv_little_bf16_1thread";
    if (std::is_same_v<T, kjv_little_fp16_t3_traits>) return "kjv_little_fp16_3threads";
    if (std::is_same_v<T, kjv_little_q8_t2_traits>) return "kjv_little_q8_0_2threads";
    if (std::is_same_v<T, kjv_big_q8_t1_traits>) return "kjv_big_q8_0_1thread";
    if (std::is_same_v<T, stories_w8a8_t3_traits>) return "stories260K_w8a8_3threads";
    if (std::is_same_v<T, kjv_little_w8a8_t2_traits>) return "kjv_little_w8a8_2threads";
    if (std::is_same_v<T, stories_kv_bf16_t3_traits>) return "stories260K_kv_bf16_3threads";
    if (std::is_same_v<T, kjv_little_bf16_kv_fp16_t2_traits>) return "kjv_little_bf16_kv_fp16_2threads";
    if (std::is_same_v<T, kjv_big_kv_fp16_t1_traits>) return "kjv_big_kv_fp16_1thread";
    return "kjv_big";
  }
};
TYPED_TEST_SUITE(model_contract, model_types, type_names);

// Logits of each token fed one at a time from an empty cache.
template <class M>
std::vector<std::vector<float>> single_token_rows(M& m, std::span<const token_id> seq) {
  m.truncate(0);
  std::vector<std::vector<float>> rows;
  for (token_id t : seq) {
    auto out = specdec::forward_one(m, t);
    rows.emplace_back(out.row(0).begin(), out.row(0).end());
  }
  return rows;
}

template <class M>
void expect_rows_equal(const specdec::logits_block& out, std::size_t first,
                       const std::vector<std::vector<float>>& ref, const std::string& what) {
  for (std::size_t i = 0; i < out.rows; ++i) {
    auto row = out.row(i);
    std::size_t mismatches = 0;
    for (std::size_t j = 0; j < row.size(); ++j) mismatches += row[j] != ref[first + i][j];
    EXPECT_EQ(mismatches, 0u) << what << ": row " << i << " (position " << first + i << ")";
  }
}

TYPED_TEST(model_contract, block_forward_equals_single_token_forwards_bit_for_bit) {
  auto m = TypeParam::make();
  static_assert(specdec::language_model<decltype(m)>);
  const std::size_t n = 3 + 8 + 8;
  auto seq = random_tokens(n, m.vocab_size(), 5);
  auto ref = single_token_rows(m, seq);
  for (std::size_t k : {1u, 2u, 3u, 5u, 6u, 8u}) {  // 5, 6: verify blocks of gamma 4, 5
    // 3-token prefix one at a time, then a k-token block, then another block after it.
    m.truncate(0);
    for (std::size_t i = 0; i < 3; ++i) specdec::forward_one(m, seq[i]);
    auto out = m.forward(std::span(seq).subspan(3, k));
    ASSERT_EQ(out.rows, k);
    ASSERT_EQ(out.vocab, m.vocab_size());
    expect_rows_equal<decltype(m)>(out, 3, ref, "block k=" + std::to_string(k));
    auto out2 = m.forward(std::span(seq).subspan(3 + k, std::min<std::size_t>(k, n - 3 - k)));
    expect_rows_equal<decltype(m)>(out2, 3 + k, ref, "second block k=" + std::to_string(k));
    EXPECT_EQ(m.cache_length(), 3 + k + out2.rows);
  }
  // The whole sequence as one block, and split at various points.
  for (std::size_t split : {0u, 1u, 4u, 7u, 12u, 18u, 19u}) {
    m.truncate(0);
    auto a = m.forward(std::span(seq).first(split));
    EXPECT_EQ(a.rows, split);
    expect_rows_equal<decltype(m)>(a, 0, ref, "split head " + std::to_string(split));
    auto b = m.forward(std::span(seq).subspan(split));
    expect_rows_equal<decltype(m)>(b, split, ref, "split tail " + std::to_string(split));
  }
}

TYPED_TEST(model_contract, truncate_then_forward_equals_fresh_model) {
  auto m = TypeParam::make();
  auto seq = random_tokens(16, m.vocab_size(), 9);
  auto other = random_tokens(16, m.vocab_size(), 10);
  for (std::size_t n : {0u, 1u, 5u, 11u}) {
    m.truncate(0);
    m.forward(seq);  // 16 tokens cached
    m.truncate(n);
    EXPECT_EQ(m.cache_length(), n);
    auto got = m.forward(std::span(other).first(5));
    std::vector<float> got_flat(got.flat().begin(), got.flat().end());

    auto fresh = TypeParam::make();
    if (n > 0) fresh.forward(std::span(seq).first(n));
    auto want = fresh.forward(std::span(other).first(5));
    ASSERT_EQ(want.flat().size(), got_flat.size());
    std::size_t mismatches = 0;
    for (std::size_t j = 0; j < got_flat.size(); ++j) mismatches += got_flat[j] != want.flat()[j];
    EXPECT_EQ(mismatches, 0u) << "after truncate(" << n << ")";
  }
}

TYPED_TEST(model_contract, logits_are_finite_and_cache_bookkeeping_holds) {
  auto m = TypeParam::make();
  EXPECT_EQ(m.cache_length(), 0u);
  EXPECT_GT(m.context_length(), 16u);
  auto seq = random_tokens(12, m.vocab_size(), 3);
  auto empty = m.forward(std::span<const token_id>());
  EXPECT_EQ(empty.rows, 0u);
  EXPECT_EQ(m.cache_length(), 0u);
  auto out = m.forward(std::span(seq).first(7));
  EXPECT_EQ(m.cache_length(), 7u);
  for (float v : out.flat()) ASSERT_TRUE(std::isfinite(v));
  m.forward(std::span(seq).subspan(7));
  EXPECT_EQ(m.cache_length(), 12u);
  m.truncate(20);  // beyond the cache: a no-op
  EXPECT_EQ(m.cache_length(), 12u);
  m.truncate(4);
  EXPECT_EQ(m.cache_length(), 4u);
  m.truncate(0);
  EXPECT_EQ(m.cache_length(), 0u);
}

TYPED_TEST(model_contract, bad_input_throws_and_leaves_the_cache_alone) {
  auto m = TypeParam::make();
  auto seq = random_tokens(3, m.vocab_size(), 4);
  m.forward(seq);
  std::vector<token_id> bad{1, static_cast<token_id>(m.vocab_size())};
  EXPECT_THROW(m.forward(bad), specdec::token_out_of_range);
  EXPECT_EQ(m.cache_length(), 3u);
  std::vector<token_id> negative{-1};
  EXPECT_THROW(m.forward(negative), specdec::token_out_of_range);
  EXPECT_EQ(m.cache_length(), 3u);
  const std::size_t room = m.context_length() - 3;
  std::vector<token_id> too_long(room + 1, 0);
  EXPECT_THROW(m.forward(too_long), specdec::context_overflow);
  EXPECT_EQ(m.cache_length(), 3u);
  // Filling the context exactly works; one more token overflows.
  too_long.pop_back();
  auto out = m.forward(too_long);
  EXPECT_EQ(out.rows, room);
  EXPECT_EQ(m.cache_length(), m.context_length());
  std::vector<token_id> one{0};
  EXPECT_THROW(m.forward(one), specdec::context_overflow);
  EXPECT_EQ(m.cache_length(), m.context_length());
  // After the failures the model still agrees with a fresh one.
  m.truncate(3);
  auto again = m.forward(std::span(seq).first(1));
  auto fresh = TypeParam::make();
  fresh.forward(seq);
  auto want = fresh.forward(std::span(seq).first(1));
  for (std::size_t j = 0; j < m.vocab_size(); ++j) ASSERT_EQ(again.row(0)[j], want.row(0)[j]);
}

TEST(transformer, long_blocks_deep_in_the_context_are_bit_exact) {
  // Long attention spans and many token tiles: a 200-token prompt as one block, then
  // blocks of 13 and 7 near the end of the context, against single-token forwards.
  for (const char* name : {"stories260K.bin", "kjv-little.bin"}) {
    SCOPED_TRACE(name);
    transformer m(shared_checkpoint(name));
    const std::size_t n = 220;
    auto seq = random_tokens(n, m.vocab_size(), 21);
    auto ref = single_token_rows(m, seq);
    m.reset();
    auto a = m.forward(std::span(seq).first(200));
    expect_rows_equal<transformer>(a, 0, ref, "200-token block");
    auto b = m.forward(std::span(seq).subspan(200, 13));
    expect_rows_equal<transformer>(b, 200, ref, "13-token block at 200");
    auto c = m.forward(std::span(seq).subspan(213, 7));
    expect_rows_equal<transformer>(c, 213, ref, "7-token block at 213");
  }
}

TEST(transformer, every_tile_configuration_gives_the_same_bits) {
  // Blocks of 1..16 tokens (every token tile path of every table, tiles.hpp) under each
  // configuration, against single-token forwards under another, in the formats whose
  // products take the tables; batches share the engine and its products.
  const auto ck = shared_checkpoint("kjv-little.bin");
  for (const auto f : {weight_format::fp32, weight_format::bf16, weight_format::q8_0}) {
    transformer ref_model(ck, {.threads = 1, .format = f, .tiles = specdec::cpu::tile_config::t4x6});
    const auto seq = random_tokens(3 + 16 + 12, ref_model.vocab_size(), 9);
    const auto ref = single_token_rows(ref_model, seq);
    for (const auto tiles : specdec::cpu::tile_configs) {
      SCOPED_TRACE(std::string(specdec::cpu::to_string(f)) + " tiles " + std::string(specdec::cpu::to_string(tiles)));
      transformer m(ck, {.threads = 2, .format = f, .tiles = tiles});
      EXPECT_EQ(m.options().tiles, tiles);
      expect_rows_equal<transformer>(m.forward(std::span(seq).first(3)), 0, ref, "3-token block");
      expect_rows_equal<transformer>(m.forward(std::span(seq).subspan(3, 16)), 3, ref, "16-token block");
      expect_rows_equal<transformer>(m.forward(std::span(seq).subspan(19, 12)), 19, ref, "12-token block");
    }
  }
}

// FNV-1a over the bits of every logit of a block: a digest that changes with any bit.
std::uint64_t logits_digest(const specdec::logits_block& out) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::size_t i = 0; i < out.rows; ++i)
    for (const float v : out.row(i)) {
      std::uint32_t bits;
      std::memcpy(&bits, &v, sizeof bits);
      for (int b = 0; b < 4; ++b) h = (h ^ ((bits >> (8 * b)) & 0xffu)) * 0x100000001b3ull;
    }
  return h;
}

// Whether this translation unit fuses a vector `a * b + c` (GCC contracts it from -O2 on):
// the elementwise kernels (exp_lanes's polynomial) are written that way, so their bits are
// an optimising build's.
[[gnu::noinline]] bool contracts_vector_multiply_add() {
  volatile float a = 1.0f + 0x1p-12f, c = -1.0f;
  specdec::cpu::detail::v16 va, vc;
  specdec::cpu::detail::splat(va, a);
  specdec::cpu::detail::splat(vc, c);
  const specdec::cpu::detail::v16 r = va * va + vc;
  return r[0] == std::fma(float(a), float(a), float(c));
}

TEST(transformer, logits_are_the_avx512_builds_bit_for_bit) {
  // The logits' bits depend on the checkpoint, the tokens, the formats and on whether the
  // target has a fused multiply-add (arch/vector.hpp), never on the vector instruction
  // set: these digests come from the -march=native build on an AVX-512 host, and an
  // x86-64-v3 (AVX2 + FMA) build reproduces them, in every weight format (w8a8: the VNNI
  // tiles there, the AVX2 or portable integer path here) and with a 16-bit KV cache.
  // A change of the kernels' arithmetic changes them: recompute them with that build.
#ifndef FP_FAST_FMAF
  GTEST_SKIP() << "this target has no fused multiply-add: its logits round every multiply-add twice";
#endif
  if (!contracts_vector_multiply_add())
    GTEST_SKIP() << "this build does not contract a * b + c (below -O2): exp_lanes rounds differently";
  struct expected {
    weight_format format, kv;
    std::uint64_t digest;
  };
  const expected cases[] = {
      {weight_format::fp32, weight_format::fp32, 0x1ad82e695455c47full},
      {weight_format::bf16, weight_format::fp32, 0x2ff6690d3c0047cdull},
      {weight_format::fp16, weight_format::fp32, 0x7ca097b429b285dfull},
      {weight_format::q8_0, weight_format::fp32, 0x206c9542a1baf29bull},
      {weight_format::w8a8, weight_format::fp32, 0x950b185b1b0bb1f7ull},
      {weight_format::fp32, weight_format::bf16, 0x6d657215b04a0c81ull},
  };
  const auto ck = shared_checkpoint("kjv-little.bin");
  for (const expected& e : cases) {
    transformer m(ck, {.threads = 2, .format = e.format, .kv_format = e.kv});
    const auto seq = random_tokens(40, m.vocab_size(), 23);
    (void)m.forward(std::span(seq).first(1));
    std::uint64_t h = logits_digest(m.forward(std::span(seq).subspan(1, 23)));
    h ^= logits_digest(m.forward(std::span(seq).subspan(24, 16))) * 3;
    char hex[32];
    std::snprintf(hex, sizeof hex, "0x%016llxull", static_cast<unsigned long long>(h));
    EXPECT_EQ(h, e.digest) << specdec::cpu::to_string(e.format) << " weights, " << specdec::cpu::to_string(e.kv)
                           << " KV cache: digest " << hex;
  }
}

TEST(transformer, tile_configuration_is_resolved_at_load_and_overridable) {
  const auto ck = shared_checkpoint("stories260K.bin");
  ::unsetenv("SPECDEC_TILES");
  // automatic: timed once per process, format and model shape, so two loads agree.
  transformer a(ck, {.threads = 1}), b(ck, {.threads = 1});
  EXPECT_NE(a.options().tiles, specdec::cpu::tile_config::automatic);
  EXPECT_EQ(a.options().tiles, b.options().tiles);
  // The environment variable overrides the timed choice, the option field both.
  ::setenv("SPECDEC_TILES", "1x6", 1);
  EXPECT_EQ(transformer(ck, {.threads = 1}).options().tiles, specdec::cpu::tile_config::t1x6);
  EXPECT_EQ(transformer(ck, {.threads = 1, .tiles = specdec::cpu::tile_config::t2x12}).options().tiles,
            specdec::cpu::tile_config::t2x12);
  ::setenv("SPECDEC_TILES", "3x3", 1);
  try {
    transformer bad(ck, {.threads = 1});
    ADD_FAILURE() << "an unknown SPECDEC_TILES was accepted";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("SPECDEC_TILES '3x3'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("2x12"), std::string::npos) << e.what();
  }
  ::unsetenv("SPECDEC_TILES");
  EXPECT_EQ(specdec::cpu::parse_tile_config("auto"), specdec::cpu::tile_config::automatic);
  for (const auto c : specdec::cpu::tile_configs) EXPECT_EQ(specdec::cpu::parse_tile_config(specdec::cpu::to_string(c)), c);
}

TEST(transformer, several_instances_share_one_checkpoint) {
  auto ck = shared_checkpoint("stories260K.bin");
  transformer a(ck), b(ck);
  EXPECT_EQ(a.weights().get(), b.weights().get());
  // One converted copy per checkpoint and format: shared by a batched model too, not by
  // another format, and freed with its last user (then rebuilt on demand).
  std::weak_ptr<const specdec::cpu::detail::model_weights> bf16_copy;
  {
    const specdec::cpu::batched_transformer batched(ck);
    const transformer c(ck, {.format = weight_format::bf16});
    EXPECT_EQ(a.converted_weights().get(), b.converted_weights().get());
    EXPECT_EQ(a.converted_weights().get(), batched.converted_weights().get());
    EXPECT_NE(a.converted_weights().get(), c.converted_weights().get());
    EXPECT_EQ(c.converted_weights()->format, weight_format::bf16);
    bf16_copy = c.converted_weights();
  }
  EXPECT_TRUE(bf16_copy.expired());
  const transformer d(ck, {.format = weight_format::bf16});
  EXPECT_EQ(d.converted_weights()->format, weight_format::bf16);
  EXPECT_EQ(a.config().dim, 64);
  std::vector<token_id> seq{1, 400, 401};
  auto ra = a.forward(seq);
  std::vector<float> first(ra.flat().begin(), ra.flat().end());
  auto rb = b.forward(seq);
  for (std::size_t j = 0; j < first.size(); ++j) ASSERT_EQ(first[j], rb.flat()[j]);
  EXPECT_THROW(transformer(std::shared_ptr<const checkpoint>()), specdec::invalid_argument);
  EXPECT_THROW(transformer(std::filesystem::path(model_path("no-such-model.bin"))), specdec::checkpoint_error);
}

// ---- an independent, deliberately naive scalar implementation of llama2.c's forward ----
class naive_llama {
 public:
  explicit naive_llama(const checkpoint& ck) : ck_(ck), c_(ck.config) {
    kv_dim_ = c_.dim * c_.n_kv_heads / c_.n_heads;
    key_.assign(std::size_t(c_.n_layers) * c_.seq_len * kv_dim_, 0.0f);
    value_ = key_;
  }

  // Reads the tensors straight from the flat file-order buffer with its own offsets.
  std::vector<float> forward(int token, int pos) {
    const int dim = c_.dim, hid = c_.hidden_dim, L = c_.n_layers, hs = dim / c_.n_heads;
    const int kv_mul = c_.n_heads / c_.n_kv_heads;
    const float* p = ck_.data.data();
    const float* emb = p; p += std::size_t(c_.vocab_size) * dim;
    const float* rms_att = p; p += std::size_t(L) * dim;
    const float* wq = p; p += std::size_t(L) * dim * dim;
    const float* wk = p; p += std::size_t(L) * dim * kv_dim_;
    const float* wv = p; p += std::size_t(L) * dim * kv_dim_;
    const float* wo = p; p += std::size_t(L) * dim * dim;
    const float* rms_ffn = p; p += std::size_t(L) * dim;
    const float* w1 = p; p += std::size_t(L) * dim * hid;
    const float* w2 = p; p += std::size_t(L) * hid * dim;
    const float* w3 = p; p += std::size_t(L) * hid * dim;
    const float* rms_final = p; p += dim;
    p += std::size_t(c_.seq_len) * hs;  // freq_cis_real and freq_cis_imag
    const float* wcls = c_.shared_classifier ? emb : p;

    std::vector<float> x(emb + std::size_t(token) * dim, emb + std::size_t(token + 1) * dim);
    std::vector<float> xb(dim), xb2(dim), q(dim), k(kv_dim_), v(kv_dim_), hb(hid), hb2(hid);
    std::vector<float> att(c_.seq_len), logits(c_.vocab_size);
    for (int l = 0; l < L; ++l) {
      rmsnorm(xb.data(), x.data(), rms_att + std::size_t(l) * dim, dim);
      matmul(q.data(), xb.data(), wq + std::size_t(l) * dim * dim, dim, dim);
      matmul(k.data(), xb.data(), wk + std::size_t(l) * dim * kv_dim_, dim, kv_dim_);
      matmul(v.data(), xb.data(), wv + std::size_t(l) * dim * kv_dim_, dim, kv_dim_);
      for (int i = 0; i < dim; i += 2) {
        int head_dim = i % hs;
        float freq = 1.0f / std::pow(10000.0f, head_dim / (float)hs);
        float val = pos * freq;
        float fcr = std::cos(val), fci = std::sin(val);
        int rotn = i < kv_dim_ ? 2 : 1;
        for (int r = 0; r < rotn; ++r) {
          float* vec = r == 0 ? q.data() : k.data();
          float v0 = vec[i], v1 = vec[i + 1];
          vec[i] = v0 * fcr - v1 * fci;
          vec[i + 1] = v0 * fci + v1 * fcr;
        }
      }
      float* kc = key_.data() + (std::size_t(l) * c_.seq_len + pos) * kv_dim_;
      float* vc = value_.data() + (std::size_t(l) * c_.seq_len + pos) * kv_dim_;
      std::copy(k.begin(), k.end(), kc);
      std::copy(v.begin(), v.end(), vc);
      for (int h = 0; h < c_.n_heads; ++h) {
        const float* qh = q.data() + h * hs;
        for (int t = 0; t <= pos; ++t) {
          const float* kt = key_.data() + (std::size_t(l) * c_.seq_len + t) * kv_dim_ + (h / kv_mul) * hs;
          float score = 0.0f;
          for (int i = 0; i < hs; ++i) score += qh[i] * kt[i];
          att[t] = score / std::sqrt((float)hs);
        }
        softmax(att.data(), pos + 1);
        float* out = xb.data() + h * hs;
        for (int i = 0; i < hs; ++i) out[i] = 0.0f;
        for (int t = 0; t <= pos; ++t) {
          const float* vt = value_.data() + (std::size_t(l) * c_.seq_len + t) * kv_dim_ + (h / kv_mul) * hs;
          for (int i = 0; i < hs; ++i) out[i] += att[t] * vt[i];
        }
      }
      matmul(xb2.data(), xb.data(), wo + std::size_t(l) * dim * dim, dim, dim);
      for (int i = 0; i < dim; ++i) x[i] += xb2[i];
      rmsnorm(xb.data(), x.data(), rms_ffn + std::size_t(l) * dim, dim);
      matmul(hb.data(), xb.data(), w1 + std::size_t(l) * dim * hid, dim, hid);
      matmul(hb2.data(), xb.data(), w3 + std::size_t(l) * dim * hid, dim, hid);
      for (int i = 0; i < hid; ++i) {
        float val = hb[i];
        val *= 1.0f / (1.0f + std::exp(-val));
        hb[i] = val * hb2[i];
      }
      matmul(xb.data(), hb.data(), w2 + std::size_t(l) * dim * hid, hid, dim);
      for (int i = 0; i < dim; ++i) x[i] += xb[i];
    }
    rmsnorm(x.data(), x.data(), rms_final, dim);
    matmul(logits.data(), x.data(), wcls, dim, c_.vocab_size);
    return logits;
  }

 private:
  static void rmsnorm(float* o, const float* x, const float* w, int n) {
    float ss = 0.0f;
    for (int j = 0; j < n; ++j) ss += x[j] * x[j];
    ss /= n;
    ss += 1e-5f;
    ss = 1.0f / std::sqrt(ss);
    for (int j = 0; j < n; ++j) o[j] = w[j] * (ss * x[j]);
  }
  static void softmax(float* x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; ++i) mx = std::max(mx, x[i]);
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
      x[i] = std::exp(x[i] - mx);
      sum += x[i];
    }
    for (int i = 0; i < n; ++i) x[i] /= sum;
  }
  // W (d,n) @ x (n) -> xout (d), in the natural order.
  static void matmul(float* xout, const float* x, const float* w, int n, int d) {
    for (int i = 0; i < d; ++i) {
      float val = 0.0f;
      for (int j = 0; j < n; ++j) val += w[std::size_t(i) * n + j] * x[j];
      xout[i] = val;
    }
  }

  const checkpoint& ck_;
  specdec::cpu::model_config c_;
  int kv_dim_ = 0;
  std::vector<float> key_, value_;
};

token_id argmax(std::span<const float> row) {
  return static_cast<token_id>(std::max_element(row.begin(), row.end()) - row.begin());
}

// Decodes ids with a llama2.c tokenizer.bin (for a readable test log only).
std::string decode(const std::string& tokenizer_path, const std::vector<token_id>& ids) {
  std::ifstream in(tokenizer_path, std::ios::binary);
  std::uint32_t max_len = 0;
  if (!in.read(reinterpret_cast<char*>(&max_len), 4)) return "<no tokenizer>";
  std::vector<std::string> pieces;
  float score;
  std::uint32_t len;
  while (in.read(reinterpret_cast<char*>(&score), 4) && in.read(reinterpret_cast<char*>(&len), 4)) {
    std::string s(len, '\0');
    if (!in.read(s.data(), len)) break;
    pieces.push_back(s);
  }
  std::string text;
  token_id prev = specdec::bos_token;
  for (token_id id : ids) {
    if (id < 0 || std::size_t(id) >= pieces.size()) return text + "<bad id>";
    std::string p = pieces[std::size_t(id)];
    if (prev == specdec::bos_token && !p.empty() && p[0] == ' ') p.erase(0, 1);
    unsigned byte = 0;
    if (p.size() == 6 && std::sscanf(p.c_str(), "<0x%02X>", &byte) == 1) p = std::string(1, char(byte));
    text += p;
    prev = id;
  }
  return text;
}

struct greedy_result {
  std::vector<token_id> tokens;  // generated tokens (without the BOS prompt)
  float max_logit_diff = 0.0f;   // over the first `compare_steps` steps
};

// Greedy decoding from BOS like llama2.c's `run -t 0 -n steps`: `steps` forwards starting
// with the BOS prompt, each producing one token, stopping early if BOS is generated, and
// at seq_len.
greedy_result greedy_both(const char* model, int steps, int compare_steps, std::vector<token_id>& naive_tokens) {
  auto ck = shared_checkpoint(model);
  naive_llama naive(*ck);
  transformer fast(ck);
  greedy_result r;
  steps = std::min(steps, ck->config.seq_len);
  token_id tok_fast = specdec::bos_token, tok_naive = specdec::bos_token;
  bool naive_done = false, fast_done = false;
  for (int pos = 0; pos < steps; ++pos) {
    std::vector<float> ref;
    if (!naive_done) {
      ref = naive.forward(tok_naive, pos);
      tok_naive = argmax(ref);
      if (tok_naive == specdec::bos_token) naive_done = true;
      else naive_tokens.push_back(tok_naive);
    }
    if (!fast_done) {
      auto out = specdec::forward_one(fast, tok_fast);
      if (pos < compare_steps && !naive_done) {
        for (std::size_t j = 0; j < ref.size(); ++j)
          r.max_logit_diff = std::max(r.max_logit_diff, std::abs(out.row(0)[j] - ref[j]));
      }
      tok_fast = argmax(out.row(0));
      if (tok_fast == specdec::bos_token) fast_done = true;
      else r.tokens.push_back(tok_fast);
    }
    if (naive_done && fast_done) break;
  }
  return r;
}

TEST(transformer_reference, stories260K_greedy_matches_naive_llama2c_forward) {
  std::vector<token_id> naive_tokens;
  auto r = greedy_both("stories260K.bin", 200, 20, naive_tokens);
  EXPECT_EQ(r.tokens, naive_tokens);
  EXPECT_LT(r.max_logit_diff, 1e-3f);
  // run.c's `-n 200` does 200 forwards from BOS and prints the 200 sampled tokens.
  EXPECT_EQ(r.tokens.size(), 200u);
  std::string ids;
  for (token_id t : r.tokens) ids += std::to_string(t) + " ";
  std::printf("stories260K greedy token ids from BOS (%zu): %s\n", r.tokens.size(), ids.c_str());
  std::printf("stories260K greedy text: %s\n", decode(model_path("tok512.bin"), r.tokens).c_str());
  std::printf("max |logit diff| vs naive over the first 20 steps: %g\n", double(r.max_logit_diff));
}

TEST(transformer_reference, kjv_big_greedy_matches_naive_llama2c_forward) {
  std::vector<token_id> naive_tokens;
  auto r = greedy_both("kjv-big.bin", 41, 10, naive_tokens);
  EXPECT_EQ(r.tokens, naive_tokens);
  EXPECT_LT(r.max_logit_diff, 1e-3f);
  EXPECT_GE(r.tokens.size(), 10u);
  std::printf("kjv-big greedy text: %s\n", decode(model_path("kjv2k-tokenizer.bin"), r.tokens).c_str());
  std::printf("max |logit diff| vs naive over the first 10 steps: %g\n", double(r.max_logit_diff));
}


// A worker that fails to start used to leave the started ones waiting on a condition
// variable the half-built pool destroyed: the process hung in pthread_cond_destroy.
TEST(thread_pool, a_worker_that_fails_to_start_unwinds_and_says_how_many_started) {
  using specdec::cpu::detail::thread_pool;
  for (int fail_at : {1, 3}) {
    int calls = 0;
    const auto start = [&](auto&& body) {
      if (++calls == fail_at)
        throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again), "thread creation");
      return std::thread(std::forward<decltype(body)>(body));
    };
    try {
      thread_pool pool(6, start);
      ADD_FAILURE() << "no exception";
    } catch (const specdec::thread_start_error& e) {
      const std::string m = e.what();
      // fail_at - 1 workers started, plus the caller.
      EXPECT_NE(m.find("could start only " + std::to_string(fail_at) + " of 6 threads"), std::string::npos) << m;
      EXPECT_NE(m.find("thread creation"), std::string::npos) << m;
    }
  }
  // Absurd counts are rejected before anything is reserved (reserve() used to throw
  // length_error or bad_alloc first).
  for (std::size_t n : {std::size_t{4096}, std::size_t{1} << 40, ~std::size_t{0}}) {
    try {
      thread_pool pool(n);
      ADD_FAILURE() << n;
    } catch (const specdec::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("expected at most 4095"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(transformer(shared_checkpoint("stories260K.bin"), {.threads = std::size_t{1} << 40}),
               specdec::invalid_argument);
  thread_pool fine(3);  // and a pool that can start still runs every part
  std::atomic<int> parts{0};
  fine.run([&](std::size_t, std::size_t) { parts.fetch_add(1); });
  EXPECT_EQ(parts.load(), 3);
}

// A header's seq_len x n_layers implied KV caches of any size, allocated unchecked (a
// bare std::bad_alloc, or an ASan abort). The engine now checks them, and its scratch,
// against transformer_options::memory_limit (default: available memory) first.
TEST(memory_limit, caches_over_the_limit_are_rejected_before_allocating_naming_checkpoint_sizes_and_limit) {
  auto ck = shared_checkpoint("stories260K.bin");  // 5 layers x 512 x kv_dim 32: 655360 bytes of fp32 cache, plus 20480 bytes of scratch on 1 thread
  const std::uint64_t one = specdec::cpu::kv_cache::bytes(5, 512, 32, weight_format::fp32);
  EXPECT_EQ(one, 5u * 512u * 32u * 2u * 4u);
  const auto expect_rejected = [&](auto make, const std::string& sizes) {
    try {
      make();
      ADD_FAILURE() << "no exception";
    } catch (const specdec::resource_error& e) {
      const std::string m = e.what();
      for (const std::string& part : {ck->path, sizes, std::string("memory limit of 500000 bytes")})
        EXPECT_NE(m.find(part), std::string::npos) << "'" << part << "' not in: " << m;
    }
  };
  expect_rejected([&] { transformer(ck, {.threads = 1, .memory_limit = 500000}); },
                  "1 KV cache(s) of n_layers 5 x seq_len 512 x kv_dim 32 in fp32 (655360 bytes each)");
  // fp16 halves the cache: then one fits.
  transformer half(ck, {.threads = 1, .kv_format = weight_format::fp16, .memory_limit = 500000});
  EXPECT_EQ(half.forward(std::vector<token_id>{1, 42}).rows, 2u);
  // The batched model counts every cache it holds, the pooled ones too.
  specdec::cpu::batched_transformer bm(ck, {.threads = 1, .kv_format = weight_format::fp16, .memory_limit = 500000});
  const specdec::sequence_id a = bm.add_sequence();
  expect_rejected([&] { (void)bm.add_sequence(); }, "2 KV cache(s) of n_layers 5 x seq_len 512 x kv_dim 32 in fp16");
  EXPECT_EQ(bm.sequence_count(), 1u);
  bm.remove_sequence(a);
  (void)bm.add_sequence();  // the pooled cache is reused: nothing new to allocate
  EXPECT_EQ(bm.sequence_count(), 1u);
  // Sizes whose product overflows are an error, not a wrapped allocation.
  EXPECT_THROW((void)specdec::cpu::kv_cache::bytes(std::size_t{1} << 30, std::size_t{1} << 30, std::size_t{1} << 30,
                                                   weight_format::fp32),
               specdec::invalid_argument);
  EXPECT_THROW(specdec::cpu::kv_cache(std::size_t{1} << 30, std::size_t{1} << 30, 1 << 4), specdec::invalid_argument);
}

TEST(memory_limit, a_header_implying_terabytes_of_cache_is_rejected_by_default) {
  // dim 2 (one head of 2), 65536 layers, seq_len 2^20: a 15 MB file whose fp32 caches
  // would take 1 TiB.
  specdec::cpu::model_config c;
  c.dim = 2, c.hidden_dim = 2, c.n_layers = 65536, c.n_heads = 1, c.n_kv_heads = 1, c.vocab_size = 300;
  c.seq_len = 1 << 20;
  auto ck = std::make_shared<specdec::cpu::checkpoint>();
  ck->config = c;
  ck->path = "terabyte-cache.bin";
  ck->data.assign(specdec::cpu::detail::expected_float_count(c, ck->path), 0.01f);
  try {
    transformer m(std::shared_ptr<const specdec::cpu::checkpoint>(ck), {.threads = 1});
    ADD_FAILURE() << "no exception";
  } catch (const specdec::resource_error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("terabyte-cache.bin"), std::string::npos) << m;
    EXPECT_NE(m.find("n_layers 65536 x seq_len 1048576 x kv_dim 2"), std::string::npos) << m;
    EXPECT_NE(m.find("memory limit of"), std::string::npos) << m;
  }
}

}  // namespace
