// Tests for include/specdec/backend/cpu/transformer.hpp: the language_model contract
// (bit-exact block forward, truncate, bookkeeping, bad input) over the markov archetype
// and three real checkpoints, and greedy decoding against an independent naive scalar
// implementation of llama2.c's forward pass.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <memory>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <random>
#include <type_traits>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/detail/thread_pool.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/model.hpp"
#include "specdec/testing/archetypes.hpp"

namespace {
using specdec::token_id;
using specdec::cpu::checkpoint;
using specdec::cpu::transformer;

std::string model_path(const char* name) { return std::string(SPECDEC_MODELS_DIR) + "/" + name; }

// Each checkpoint is loaded once per test binary and shared by every model built on it.
std::shared_ptr<const checkpoint> shared_checkpoint(const char* name) {
  static std::vector<std::pair<std::string, std::shared_ptr<const checkpoint>>> loaded;
  for (auto& [n, ck] : loaded)
    if (n == name) return ck;
  auto ck = std::make_shared<const checkpoint>(specdec::cpu::load_checkpoint(model_path(name)));
  loaded.emplace_back(name, ck);
  return ck;
}

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

std::vector<token_id> random_tokens(std::size_t n, std::size_t vocab, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<token_id> d(0, static_cast<token_id>(vocab) - 1);
  std::vector<token_id> out(n);
  for (auto& t : out) t = d(rng);
  out[0] = specdec::bos_token < static_cast<token_id>(vocab) ? specdec::bos_token : 0;
  return out;
}

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

// ---- weight formats and threads ----

const weight_format all_formats[] = {weight_format::fp32, weight_format::bf16, weight_format::fp16,
                                     weight_format::q8_0, weight_format::w8a8};

std::vector<float> flat_copy(const specdec::logits_block& b) { return {b.flat().begin(), b.flat().end()}; }

TEST(transformer_threads, results_do_not_depend_on_the_thread_count_bit_for_bit) {
  // The same block and single-token forwards on 1, 2 and 3 threads, every format (of the
  // weights and of the KV cache), on a
  // model where every product is threaded (kjv-big) and one where most are below the
  // threading threshold (kjv-little).
  for (const char* name : {"kjv-little.bin", "kjv-big.bin"}) {
    auto ck = shared_checkpoint(name);
    // Every weight format with an fp32 cache, then fp32 weights with each 16-bit cache.
    const std::pair<weight_format, weight_format> configs[] = {
        {weight_format::fp32, weight_format::fp32}, {weight_format::bf16, weight_format::fp32},
        {weight_format::fp16, weight_format::fp32}, {weight_format::q8_0, weight_format::fp32},
        {weight_format::w8a8, weight_format::fp32}, {weight_format::fp32, weight_format::fp16},
        {weight_format::fp32, weight_format::bf16}};
    for (auto [f, kv] : configs) {
      SCOPED_TRACE(std::string(name) + " " + std::string(specdec::cpu::to_string(f)) + ", kv " +
                   std::string(specdec::cpu::to_string(kv)));
      auto seq = random_tokens(24, std::size_t(ck->config.vocab_size), 77);
      std::vector<float> ref_block, ref_single;
      for (std::size_t threads : {1u, 2u, 3u}) {
        transformer m(ck, {.threads = threads, .format = f, .kv_format = kv});
        EXPECT_EQ(m.options().threads, threads);
        EXPECT_EQ(m.options().format, f);
        auto block = flat_copy(m.forward(std::span(seq).first(17)));
        auto single = flat_copy(specdec::forward_one(m, seq[17]));
        if (threads == 1) {
          ref_block = block, ref_single = single;
          continue;
        }
        std::size_t mismatches = 0;
        for (std::size_t j = 0; j < block.size(); ++j) mismatches += block[j] != ref_block[j];
        for (std::size_t j = 0; j < single.size(); ++j) mismatches += single[j] != ref_single[j];
        EXPECT_EQ(mismatches, 0u) << threads << " threads vs 1";
      }
    }
  }
}

TEST(work_split, static_parts_compute_their_slice_and_balanced_parts_take_over_a_stalled_one) {
  using specdec::cpu::detail::split_range;
  using specdec::cpu::detail::work_split;
  for (std::size_t parts : {1u, 2u, 3u, 4u})
    for (std::size_t n : {0u, 1u, 5u, 40u, 64u, 1001u})
      for (std::size_t chunk : {0u, 1u, 3u, 7u}) {
        SCOPED_TRACE(std::to_string(parts) + " parts, " + std::to_string(n) + " units, chunk " + std::to_string(chunk));
        work_split split;
        split.reset(n, parts, chunk);
        EXPECT_EQ(split.chunked(), chunk != 0);
        // Part 0 stalls until every other part has returned (a descheduled thread). The
        // others run concurrently.
        std::vector<std::atomic<int>> hits(n);
        std::vector<std::vector<std::pair<std::size_t, std::size_t>>> got(parts);
        const auto work = [&](std::size_t p) {
          split.run(p, [&](std::size_t b, std::size_t e) {
            got[p].emplace_back(b, e);
            for (std::size_t u = b; u < e; ++u) hits[u].fetch_add(1);
          });
        };
        std::vector<std::thread> others;
        for (std::size_t p = 1; p < parts; ++p) others.emplace_back(work, p);
        for (auto& t : others) t.join();
        work(0);
        for (std::size_t u = 0; u < n; ++u) ASSERT_EQ(hits[u].load(), 1) << "unit " << u;
        std::size_t b0, e0;
        split_range(n, 0, parts, 1, b0, e0);
        std::size_t by_part0 = 0;
        for (auto [b, e] : got[0]) by_part0 += e - b;
        if (chunk == 0 || parts == 1) {
          EXPECT_EQ(by_part0, e0 - b0);  // its own slice, all of it and nothing else
          for (auto [b, e] : got[0]) EXPECT_TRUE(b0 <= b && e <= e0);
        } else {
          EXPECT_EQ(by_part0, 0u);  // the others took over the stalled part's slice
        }
        // Every chunk is at most `chunk` units, and a part's own slice comes front to back.
        for (std::size_t p = 0; p < parts; ++p) {
          std::size_t bp, ep, next;
          split_range(n, p, parts, 1, bp, ep);
          next = bp;
          for (auto [b, e] : got[p]) {
            if (chunk != 0) {
              EXPECT_LE(e - b, chunk);
            }
            if (b >= bp && e <= ep && b >= next) {
              EXPECT_EQ(b, next) << "part " << p << " skipped part of its own slice";
              next = e;
            }
          }
        }
      }
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

TEST(transformer_threads, default_uses_all_cores_and_models_share_one_pool) {
  auto ck = shared_checkpoint("stories260K.bin");
  transformer a(ck), b(ck, {.threads = 1});
  EXPECT_EQ(a.options().threads, std::max(1u, std::thread::hardware_concurrency()));
  EXPECT_EQ(b.options().threads, 1u);
  EXPECT_EQ(a.options().format, weight_format::fp32);
}

// Grouped-query attention reads each value row once for all heads of a KV group. Grouping
// must change no bit: every head's outputs equal the one-head kernel's, for any group size
// (1..4 use one register tile, 5 and 7 split into 4 + 1 and 4 + 3) and widths that
// exercise the 64-wide, 16-wide and scalar paths; and they are the weighted sums (checked
// against a double-precision sum, since whether the vector path fuses its multiply-adds
// depends on the optimisation level).
TEST(kernels, grouped_weighted_value_sums_equal_one_head_sums_bit_for_bit) {
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const std::size_t count = 37, ldv = 160, lda = 41;
  std::vector<float> v(count * ldv), a(7 * lda);
  for (float& x : v) x = u(rng);
  for (float& x : a) x = u(rng);
  for (std::size_t heads : {1u, 2u, 3u, 4u, 5u, 7u}) {
    for (std::size_t n : {64u, 16u, 5u, 64u + 16u + 3u, 150u}) {
      const std::size_t ldo = n + 2;
      std::vector<float> out(heads * ldo, -1.0f), one(n);
      specdec::cpu::detail::weighted_rows_sum_heads(heads, a.data(), lda, count, v.data(), ldv, out.data(), ldo, n);
      for (std::size_t m = 0; m < heads; ++m) {
        specdec::cpu::detail::weighted_rows_sum_group<1>(a.data() + m * lda, lda, count, v.data(), ldv, one.data(), n,
                                                         n);
        for (std::size_t i = 0; i < n; ++i) {
          ASSERT_EQ(out[m * ldo + i], one[i]) << "heads " << heads << " n " << n << " head " << m << " i " << i;
          double want = 0.0;
          for (std::size_t p = 0; p < count; ++p) want += double(a[m * lda + p]) * double(v[p * ldv + i]);
          ASSERT_NEAR(out[m * ldo + i], want, 1e-5) << "heads " << heads << " n " << n << " head " << m;
        }
        EXPECT_EQ(out[m * ldo + n], -1.0f) << "wrote past the head's n outputs";
      }
    }
  }
}

// The buffers the kernels stream are cache-line aligned for speed (detail/aligned.hpp),
// but no result may depend on alignment: a matmul over weights and inputs at every
// 4-byte offset within a cache line, for token counts that take each tile path (1, 2, 3,
// 4-6, 7+ tokens) and in every weight format, gives the same bits as over aligned copies.
TEST(kernels, matmul_results_do_not_depend_on_buffer_alignment) {
  namespace d = specdec::cpu::detail;
  // The storage of the 1-, 2- and 4-byte formats starts on a cache line at any size.
  for (std::size_t size : {1u, 3u, 45u, 1000u, 300000u}) {
    const d::aligned_vector<std::int8_t> q(size);
    const d::aligned_vector<std::uint16_t> h(size);
    const d::aligned_vector<float> f(size);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(q.data()) % d::cache_line, 0u) << size;
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(h.data()) % d::cache_line, 0u) << size;
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f.data()) % d::cache_line, 0u) << size;
  }
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (std::size_t n : {std::size_t{48}, std::size_t{530}}) {
    const std::size_t rows = 29, kmax = 16;
    d::aligned_vector<float> w(rows * n + 16), x(kmax * n + 16);
    for (float& v : w) v = u(rng);
    for (float& v : x) v = u(rng);
    for (const auto f : all_formats) {
      for (std::size_t k : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 16u}) {
        std::vector<float> want(k * rows), got(k * rows);
        const d::weight_matrix wa(w.data(), rows, n, f);
        wa.matmul(0, rows, x.data(), k, n, want.data(), rows);
        for (std::size_t off = 1; off < 16; off += 3) {
          // The same values, shifted off the cache line.
          d::aligned_vector<float> ws(rows * n + 16), xs(kmax * n + 16);
          std::copy_n(w.data(), rows * n, ws.data() + off);
          std::copy_n(x.data(), k * n, xs.data() + (15 - off));
          const d::weight_matrix wb(ws.data() + off, rows, n, f);
          wb.matmul(0, rows, xs.data() + (15 - off), k, n, got.data(), rows);
          ASSERT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * sizeof(float)))
              << specdec::cpu::to_string(f) << " n " << n << " k " << k << " offset " << off;
        }
      }
    }
  }
}

// The summation order every weight product keeps (detail::matmul_panels): output (t, r)
// is one multiply-add chain over the columns in order, starting from 0, over the
// decoded weights. Checked bit for bit against that chain written out one element at a
// time, for row counts with partial 16-row panels, every tile path (1-9, 16, 17 tokens),
// every weight format, and products cut into two calls at a panel boundary (as the
// thread split cuts them). The chain is written with detail::fmadd (a fused multiply-add
// where the target has one), the rounding rule the kernels' fmadd_lanes keeps at every
// optimisation level.
TEST(kernels, weight_products_are_one_in_order_multiply_add_chain_per_output) {
  namespace d = specdec::cpu::detail;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const std::size_t rows : {1u, 16u, 37u, 100u}) {
    for (const std::size_t n : {1u, 45u, 64u}) {
      std::vector<float> w(rows * n), x(17 * n);
      for (float& v : w) v = u(rng);
      for (float& v : x) v = u(rng);
      for (const auto f : {weight_format::fp32, weight_format::bf16, weight_format::fp16, weight_format::q8_0}) {
        const d::weight_matrix wm(w.data(), rows, n, f);
        for (const std::size_t k : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 9u, 16u, 17u}) {
          std::vector<float> whole(k * rows), split(k * rows);
          wm.matmul(0, rows, x.data(), k, n, whole.data(), rows);
          const std::size_t cut = rows > 16 ? 16 : rows;
          wm.matmul(0, cut, x.data(), k, n, split.data(), rows, true);
          wm.matmul(cut, rows - cut, x.data(), k, n, split.data() + cut, rows);
          for (std::size_t t = 0; t < k; ++t) {
            for (std::size_t r = 0; r < rows; ++r) {
              float chain = 0.0f;
              for (std::size_t j = 0; j < n; ++j) chain = d::fmadd(wm.at(r, j), x[t * n + j], chain);
              ASSERT_EQ(whole[t * rows + r], chain) << specdec::cpu::to_string(f) << " rows " << rows << " n " << n
                                                    << " k " << k << " t " << t << " r " << r;
              ASSERT_EQ(split[t * rows + r], chain) << specdec::cpu::to_string(f) << " split, k " << k;
            }
          }
        }
      }
    }
  }
}

// The w8a8 product rule (detail/int8_products.hpp), written out here from its definition:
// weights and inputs quantized per row and group of 32 (scale = max|v| / 127, q =
// nearest-even(v * (1 / scale)) in [-127, 127]), then per output (t, r):
// acc = fmadd(float(integer dot of the group), w_scale * x_scale, acc) over the groups in
// order. The VNNI tiles (every tile path: 1-9 and 16 tokens, partial panels, partial
// groups, a product cut at a panel boundary) and the portable scalar path must both give
// exactly that.
TEST(kernels, w8a8_products_follow_the_integer_group_rule) {
  namespace d = specdec::cpu::detail;
  const auto quantize = [](const float* v, std::size_t n, std::vector<int>& q, std::vector<float>& scale) {
    const std::size_t groups = (n + 31) / 32;
    q.assign(groups * 32, 0);
    scale.assign(groups, 0.0f);
    for (std::size_t g = 0; g < groups; ++g) {
      float amax = 0.0f;
      for (std::size_t j = g * 32; j < std::min(n, g * 32 + 32); ++j) amax = std::max(amax, std::abs(v[j]));
      scale[g] = amax / 127.0f;
      const float inv = scale[g] > 0.0f ? 1.0f / scale[g] : 0.0f;
      for (std::size_t j = g * 32; j < std::min(n, g * 32 + 32); ++j)
        q[j] = static_cast<int>(std::clamp(std::nearbyint(v[j] * inv), -127.0f, 127.0f));
    }
  };
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (const std::size_t rows : {1u, 16u, 37u, 130u}) {
    for (const std::size_t n : {1u, 45u, 64u, 172u}) {
      const std::size_t groups = (n + 31) / 32;
      std::vector<float> w(rows * n), x(17 * n);
      for (float& v : w) v = u(rng);
      for (float& v : x) v = u(rng);
      x[3] = 0.0f;
      for (std::size_t j = 0; j < std::min<std::size_t>(n, 32); ++j) x[n + j] = 0.0f;  // an all-zero group
      const d::weight_matrix wm(w.data(), rows, n, weight_format::w8a8);
      std::vector<std::vector<int>> wq(rows), xq(17);
      std::vector<std::vector<float>> ws(rows), xs(17);
      for (std::size_t r = 0; r < rows; ++r) quantize(w.data() + r * n, n, wq[r], ws[r]);
      for (std::size_t t = 0; t < 17; ++t) quantize(x.data() + t * n, n, xq[t], xs[t]);
      // The stored weights decode to q * scale.
      for (std::size_t r = 0; r < rows; ++r)
        for (std::size_t j = 0; j < n; ++j) ASSERT_EQ(wm.at(r, j), float(wq[r][j]) * ws[r][j / 32]) << r << "," << j;
      for (const std::size_t k : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 9u, 16u}) {
        std::vector<float> whole(k * rows), split(k * rows), scalar(k * rows);
        wm.matmul(0, rows, x.data(), k, n, whole.data(), rows);
        const std::size_t cut = rows > 16 ? 16 : rows;
        d::i8_inputs in;
        in.reserve(k, n);
        in.quantize(x.data(), k, n, n);
        wm.matmul(0, cut, x.data(), k, n, split.data(), rows, true, &in);
        wm.matmul(cut, rows - cut, x.data(), k, n, split.data() + cut, rows, false, &in);
        for (std::size_t t = 0; t < k; ++t)
          for (std::size_t j = 0; j < groups * 32; ++j) ASSERT_EQ(int(in.q[t * groups * 32 + j]), xq[t][j]) << t << "," << j;
        for (std::size_t t = 0; t < k; ++t) {
          for (std::size_t r = 0; r < rows; ++r) {
            float acc = 0.0f;
            for (std::size_t g = 0; g < groups; ++g) {
              int dot = 0;
              for (std::size_t j = g * 32; j < g * 32 + 32; ++j) dot += wq[r][j] * xq[t][j];
              acc = d::fmadd(float(dot), ws[r][g] * xs[t][g], acc);
            }
            ASSERT_EQ(whole[t * rows + r], acc) << "rows " << rows << " n " << n << " k " << k << " t " << t << " r " << r;
            ASSERT_EQ(split[t * rows + r], acc) << "split, k " << k;
          }
        }
        if (k == 3 || k == 9) {  // the portable path (what builds without AVX512-VNNI run)
          for (std::size_t p = 0; p * 16 < rows; ++p) {
            const std::size_t prow = std::min<std::size_t>(16, rows - p * 16);
            std::vector<float> part(k * 16);
            // Through the public accessors: the weights' layout is the header's business.
            d::i8_product_scalar(wm.i8_view(), p, prow, in, 0, k, part.data(), 16);
            for (std::size_t t = 0; t < k; ++t)
              for (std::size_t i = 0; i < prow; ++i)
                ASSERT_EQ(part[t * 16 + i], whole[t * rows + p * 16 + i]) << "scalar path, k " << k;
          }
        }
      }
    }
  }
}

// Input quantization: whole groups take a vector path, a partial last group a scalar one;
// both round half to even, clamp to +-127, skip NaN in the maximum and quantize it to 0.
TEST(kernels, w8a8_input_quantization_rounds_to_nearest_even_and_tolerates_nan) {
  namespace d = specdec::cpu::detail;
  for (const std::size_t n : {32u, 40u}) {  // the tie group is whole, or the partial last one
    std::vector<float> x(n, 0.0f);
    const std::size_t g0 = n == 32 ? 0 : 32;  // the group under test
    // max |x| = 127 gives scale 1 and inverse 1: every value is rounded as written.
    x[g0] = 127.0f;
    x[g0 + 1] = 2.5f;   // tie -> 2
    x[g0 + 2] = 3.5f;   // tie -> 4
    x[g0 + 3] = -2.5f;  // tie -> -2
    x[g0 + 4] = -0.4f;  // -> 0
    x[g0 + 5] = std::numeric_limits<float>::quiet_NaN();  // skipped in the max, quantized to 0
    x[g0 + 6] = 126.6f;  // -> 127
    d::i8_inputs in;
    in.reserve(1, n);
    in.quantize(x.data(), 1, n, n);
    const std::int8_t* q = in.q.data() + g0;
    const int want[] = {127, 2, 4, -2, 0, 0, 127};
    for (int i = 0; i < 7; ++i) EXPECT_EQ(int(q[i]), want[i]) << "n " << n << " i " << i;
    for (std::size_t i = 7; i < 32; ++i) EXPECT_EQ(int(q[i]), 0) << i;
    EXPECT_EQ(in.scale[g0 / 32], 1.0f);
    EXPECT_EQ(in.bias[g0 / 32], 128 * (127 + 2 + 4 - 2 + 127));
  }
}

// exp16 replaces std::exp in the softmax and SiLU: it must stay within 2 ulp of the
// correctly rounded e^x over the range it computes, give 0 / +inf / NaN outside it, and
// depend on the value only, whatever lane (or tail position) the value lands in.
TEST(kernels, vector_exp_is_within_two_ulp_and_elementwise) {
  namespace d = specdec::cpu::detail;
  const auto ulps = [](float a, float b) {
    std::int32_t ia, ib;
    std::memcpy(&ia, &a, 4);
    std::memcpy(&ib, &b, 4);
    return std::abs(ia - ib);
  };
  int worst = 0;
  std::vector<float> xs;
  for (float x = -86.5f; x <= 88.0f; x = std::nextafter(x + 0.0173f * std::abs(x) + 1e-6f, 100.0f)) xs.push_back(x);
  for (float x : {0.0f, -0.0f, 1e-30f, -1e-30f, 0.34657359f, -0.34657359f, 1.0f, -86.5f, 88.0f}) xs.push_back(x);
  ASSERT_GT(xs.size(), 1000u);
  std::vector<float> got = xs;
  d::exp_inplace(got.data(), got.size());
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const float want = static_cast<float>(std::exp(static_cast<double>(xs[i])));
    worst = std::max(worst, ulps(got[i], want));
    ASSERT_LE(ulps(got[i], want), 2) << "exp(" << xs[i] << ") = " << got[i] << ", want " << want;
  }
  std::printf("exp16: max %d ulp over %zu values\n", worst, xs.size());
  // Outside the range, and special values.
  std::vector<float> sp = {-86.6f, -1000.0f, -INFINITY, 88.1f, 1000.0f, INFINITY, NAN};
  d::exp_inplace(sp.data(), sp.size());
  EXPECT_EQ(sp[0], 0.0f);
  EXPECT_EQ(sp[1], 0.0f);
  EXPECT_EQ(sp[2], 0.0f);
  EXPECT_TRUE(std::isinf(sp[3]) && sp[3] > 0);
  EXPECT_TRUE(std::isinf(sp[4]) && sp[4] > 0);
  EXPECT_TRUE(std::isinf(sp[5]) && sp[5] > 0);
  EXPECT_TRUE(std::isnan(sp[6]));
  // Elementwise: the same values at every offset and in every tail length give the same bits.
  for (std::size_t off = 0; off < 17; ++off) {
    for (std::size_t n : {1u, 15u, 16u, 17u, 40u}) {
      std::vector<float> buf(off + n);
      for (std::size_t i = 0; i < n; ++i) buf[off + i] = xs[(i * 97) % xs.size()];
      d::exp_inplace(buf.data() + off, n);
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_EQ(buf[off + i], got[(i * 97) % xs.size()]) << "offset " << off << " n " << n << " i " << i;
    }
  }
}

// The softmax sum runs in 16 lanes by index and one fixed tree, so the result depends on
// the values and the length only (not on the buffer's alignment), and the SiLU gate is
// elementwise, so any slicing of a hidden row (threads split it) gives the same bits.
TEST(kernels, softmax_and_swiglu_are_fixed_order_and_accurate) {
  namespace d = specdec::cpu::detail;
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-12.0f, 12.0f);
  for (std::size_t n : {1u, 7u, 16u, 33u, 221u}) {
    std::vector<float> x(n);
    for (float& v : x) v = u(rng);
    std::vector<float> a = x;
    d::softmax(a.data(), n);
    double mx = x[0], sum = 0.0;
    for (float v : x) mx = std::max(mx, double(v));
    for (float v : x) sum += std::exp(double(v) - mx);
    double total = 0.0;
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_NEAR(a[i], std::exp(double(x[i]) - mx) / sum, 1e-6) << "n " << n << " i " << i;
      total += a[i];
    }
    EXPECT_NEAR(total, 1.0, 1e-5);
    for (std::size_t off = 1; off < 4; ++off) {
      std::vector<float> b(n + off);
      std::copy(x.begin(), x.end(), b.begin() + off);
      d::softmax(b.data() + off, n);
      ASSERT_TRUE(std::equal(a.begin(), a.end(), b.begin() + off)) << "n " << n << " offset " << off;
    }
  }
  const std::size_t hid = 101;
  std::vector<float> h(hid), g(hid);
  for (float& v : h) v = u(rng) * 8.0f;  // reaches both ends of exp16's range
  for (float& v : g) v = u(rng);
  std::vector<float> whole = h;
  d::swiglu(whole.data(), g.data(), hid);
  for (std::size_t i = 0; i < hid; ++i) {
    const double want = double(h[i]) / (1.0 + std::exp(-double(h[i]))) * double(g[i]);
    ASSERT_NEAR(whole[i], want, 1e-5 * std::max(1.0, std::abs(want))) << "i " << i;
  }
  for (std::size_t cut : {1u, 5u, 16u, 37u, 100u}) {
    std::vector<float> parts = h;
    d::swiglu(parts.data(), g.data(), cut);
    d::swiglu(parts.data() + cut, g.data() + cut, hid - cut);
    ASSERT_EQ(parts, whole) << "split at " << cut;
  }
}

TEST(weight_formats, conversions_round_to_nearest_even_and_widen_exactly) {
  using namespace specdec::cpu::detail;
  // bf16: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> even (1); just above rounds up.
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f)), 1.0f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(1.0f + 0x1p-8f + 0x1p-20f)), 1.0f + 0x1p-7f);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-3.5f)), -3.5f);
  // fp16: exact values, ties to even, subnormals, overflow.
  for (float v : {0.0f, 1.0f, -2.5f, 65504.0f, 0x1p-14f, 0x1p-24f, 3 * 0x1p-24f, -0.333251953125f})
    EXPECT_EQ(fp16_to_float(float_to_fp16(v)), v) << v;
  EXPECT_EQ(fp16_to_float(float_to_fp16(1.0f + 0x1p-11f)), 1.0f);  // tie -> even
  EXPECT_EQ(fp16_to_float(float_to_fp16(1.0f + 0x1p-11f + 0x1p-20f)), 1.0f + 0x1p-10f);
  EXPECT_EQ(fp16_to_float(float_to_fp16(0x1p-25f)), 0.0f);  // tie between 0 and 2^-24 -> 0
  EXPECT_EQ(fp16_to_float(float_to_fp16(1e6f)), INFINITY);
  EXPECT_EQ(fp16_to_float(float_to_fp16(65519.0f)), 65504.0f);
  // Every fp16 bit pattern (not NaN) survives float and back.
  for (std::uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue;
    ASSERT_EQ(float_to_fp16(fp16_to_float(std::uint16_t(h))), h) << h;
  }
  // q8_0: per-group scale amax / 127, so |error| <= scale / 2; a partial last group.
  std::vector<float> w(2 * 45);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 0.1f);
  for (auto& v : w) v = nd(rng);
  w[50] = 0.0f;
  weight_matrix q(w.data(), 2, 45, specdec::cpu::weight_format::q8_0);
  // Stored as one panel of 16 rows (14 of them zero padding): 16 x 45 int8 weights and
  // 16 x 2 fp32 group scales.
  EXPECT_EQ(q.bytes(), 16 * 45 + 16 * 2 * 4u);
  for (std::size_t r = 0; r < 2; ++r) {
    for (std::size_t g = 0; g < 2; ++g) {
      float amax = 0;
      for (std::size_t j = g * 32; j < std::min<std::size_t>(45, g * 32 + 32); ++j) amax = std::max(amax, std::abs(w[r * 45 + j]));
      for (std::size_t j = g * 32; j < std::min<std::size_t>(45, g * 32 + 32); ++j)
        EXPECT_LE(std::abs(q.at(r, j) - w[r * 45 + j]), amax / 127 * 0.5001f) << r << "," << j;
    }
  }
  EXPECT_EQ(q.at(1, 5), 0.0f);
}

TEST(weight_formats, names_parse_and_unknown_names_throw) {
  using specdec::cpu::parse_weight_format;
  for (weight_format f : all_formats) EXPECT_EQ(parse_weight_format(specdec::cpu::to_string(f)), f);
  EXPECT_EQ(parse_weight_format("q8"), weight_format::q8_0);
  try {
    (void)parse_weight_format("int4");
    FAIL() << "expected invalid_argument";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("'int4'"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("fp32, bf16, fp16, q8_0 or w8a8"), std::string::npos);
  }
}

// Logit error of each format against fp32 on the same 64 tokens (teacher forced), as a
// fraction of the fp32 logits' standard deviation. Bounds are ~3x the measured values
// (docs/performance.md): bf16 has 8 mantissa bits (relative step 2^-8 per weight),
// fp16 11, q8_0 about 7 within a group's range; w8a8 rounds the inputs of every product
// to 8 bits too.
// The fp32 model's (fp32 weights and cache) logits of 64 random tokens, and their
// standard deviation: the scale the format tests measure their errors in.
struct reference_logits {
  std::vector<token_id> seq;
  std::vector<float> logits;
  double sd = 0;
};
reference_logits fp32_reference(const std::shared_ptr<const checkpoint>& ck, unsigned seed) {
  reference_logits r;
  r.seq = random_tokens(64, std::size_t(ck->config.vocab_size), seed);
  transformer ref_model(ck, {.threads = 2});
  r.logits = flat_copy(ref_model.forward(r.seq));
  double mean = 0, var = 0;
  for (float v : r.logits) mean += v;
  mean /= double(r.logits.size());
  for (float v : r.logits) var += (v - mean) * (v - mean);
  r.sd = std::sqrt(var / double(r.logits.size()));
  return r;
}

TEST(weight_formats, logits_stay_close_to_fp32) {
  struct bound { weight_format f; double max_rel; };
  for (const char* name : {"kjv-little.bin", "kjv-big.bin"}) {
    auto ck = shared_checkpoint(name);
    const auto [seq, ref, sd] = fp32_reference(ck, 31);
    for (bound b : {bound{weight_format::bf16, 0.04}, bound{weight_format::fp16, 0.006}, bound{weight_format::q8_0, 0.15},
                    bound{weight_format::w8a8, 0.2}}) {
      transformer m(ck, {.threads = 2, .format = b.f});
      auto got = flat_copy(m.forward(seq));
      double max_abs = 0, sum_sq = 0;
      for (std::size_t j = 0; j < ref.size(); ++j) {
        max_abs = std::max(max_abs, double(std::abs(got[j] - ref[j])));
        sum_sq += double(got[j] - ref[j]) * double(got[j] - ref[j]);
      }
      const double rms = std::sqrt(sum_sq / double(ref.size()));
      std::printf("%s %s: logit sd %.3f, max |diff| %.4f (%.4f sd), rms diff %.5f (%.5f sd)\n", name,
                  std::string(specdec::cpu::to_string(b.f)).c_str(), sd, max_abs, max_abs / sd, rms, rms / sd);
      EXPECT_LT(max_abs / sd, b.max_rel) << name << " " << specdec::cpu::to_string(b.f);
      EXPECT_LT(rms / sd, b.max_rel / 5) << name << " " << specdec::cpu::to_string(b.f);
    }
  }
}

// 16-bit KV caches round each key and value once; the logits must stay close to an fp32
// cache's. Measured (64 tokens): max |diff| / logit sd 6e-4 to 3e-3 (fp16) and 4e-3 to
// 2e-2 (bf16), the larger values on stories260K.
TEST(kv_formats, logits_stay_close_to_an_fp32_cache) {
  for (const char* name : {"stories260K.bin", "kjv-little.bin", "kjv-big.bin"}) {
    auto ck = shared_checkpoint(name);
    const auto [seq, ref, sd] = fp32_reference(ck, 37);
    for (auto [f, max_rel] : {std::pair{weight_format::fp16, 0.005}, std::pair{weight_format::bf16, 0.05}}) {
      transformer m(ck, {.threads = 2, .kv_format = f});
      auto got = flat_copy(m.forward(seq));
      double max_abs = 0;
      for (std::size_t j = 0; j < ref.size(); ++j) max_abs = std::max(max_abs, double(std::abs(got[j] - ref[j])));
      std::printf("%s kv %s: max |diff| %.5f (%.5f sd)\n", name, std::string(specdec::cpu::to_string(f)).c_str(),
                  max_abs, max_abs / sd);
      EXPECT_GT(max_abs, 0.0) << "a 16-bit cache that changes nothing is not rounding";
      EXPECT_LT(max_abs / sd, max_rel) << name << " kv " << specdec::cpu::to_string(f);
    }
  }
}

TEST(kv_formats, sizes_and_bad_formats) {
  specdec::cpu::kv_cache f32(6, 256, 128), f16(6, 256, 128, weight_format::fp16);
  // Cache-line aligned storage, like every buffer the kernels stream.
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f32.key(0, 0)) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f32.value(0, 0)) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f16.key16(0, 0)) % 64, 0u);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(f16.value16(0, 0)) % 64, 0u);
  EXPECT_EQ(f32.bytes_per_position(), 2u * 6 * 128 * 4);
  EXPECT_EQ(f16.bytes_per_position(), 2u * 6 * 128 * 2);
  EXPECT_EQ(f16.format(), weight_format::fp16);
  EXPECT_THROW(specdec::cpu::kv_cache(6, 256, 128, weight_format::q8_0), specdec::invalid_argument);
  EXPECT_THROW(specdec::cpu::kv_cache(6, 256, 128, weight_format::w8a8), specdec::invalid_argument);
  try {
    transformer m(shared_checkpoint("stories260K.bin"), {.kv_format = weight_format::q8_0});
    ADD_FAILURE() << "q8_0 KV cache accepted";
  } catch (const specdec::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("kv_format"), std::string::npos) << e.what();
  }
}

// Greedy agreement of kjv-big in each format with fp32 on held-out prompts: along fp32's
// own greedy continuation (teacher forced), the fraction of positions where the format's
// argmax equals fp32's.
TEST(weight_formats, kjv_big_greedy_agreement_with_fp32_on_held_out_prompts) {
  auto ck = shared_checkpoint("kjv-big.bin");
  specdec::cpu::tokenizer tok(model_path("kjv2k-tokenizer.bin"), std::size_t(ck->config.vocab_size));
  std::ifstream in(model_path("kjv_val_openings.tsv"));
  std::vector<std::vector<token_id>> prompts;
  std::string line;
  while (prompts.size() < 4 && std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::string verse = line.substr(line.rfind('\t') + 1);
    prompts.push_back(tok.encode(verse.substr(0, verse.find(' ', 30))));
  }
  ASSERT_EQ(prompts.size(), 4u);
  const std::size_t gen = 48;
  transformer ref_model(ck, {.threads = 2});
  std::vector<std::vector<token_id>> ref_seqs;  // prompt + fp32 greedy continuation
  for (const auto& p : prompts) {
    ref_model.reset();
    std::vector<token_id> s = p;
    auto out = ref_model.forward(p);
    token_id next = argmax(out.row(out.rows - 1));
    for (std::size_t i = 0; i < gen; ++i) {
      s.push_back(next);
      next = argmax(specdec::forward_one(ref_model, next).row(0));
    }
    ref_seqs.push_back(std::move(s));
  }
  for (weight_format f : {weight_format::bf16, weight_format::fp16, weight_format::q8_0, weight_format::w8a8}) {
    transformer m(ck, {.threads = 2, .format = f});
    std::size_t same = 0, total = 0;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      m.reset();
      const auto& s = ref_seqs[i];
      auto out = m.forward(std::span(s).first(s.size() - 1));
      for (std::size_t pos = prompts[i].size() - 1; pos + 1 < s.size(); ++pos, ++total)
        same += argmax(out.row(pos)) == s[pos + 1];
    }
    const double agreement = double(same) / double(total);
    std::printf("kjv-big %s greedy agreement with fp32: %zu / %zu = %.3f\n",
                std::string(specdec::cpu::to_string(f)).c_str(), same, total, agreement);
    EXPECT_GE(agreement, 0.9) << specdec::cpu::to_string(f);
  }
}

}  // namespace
