// Tests for include/specdec/backend/cpu/detail/weights.hpp (and float16.hpp): the weight
// formats' conversions and names, their logits against fp32's, and the 16-bit KV cache
// formats (a KV format is a weight_format value).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "cpu_fixtures.hpp"
#include "specdec/backend/cpu/detail/weights.hpp"
#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/error.hpp"

namespace {
using namespace cpu_fixtures;

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

// A server reuses caches across clients: wipe() leaves no stored key or value behind.
TEST(kv_formats, wipe_zeroes_every_position_in_every_format) {
  for (const weight_format f : {weight_format::fp32, weight_format::bf16, weight_format::fp16}) {
    specdec::cpu::kv_cache c(2, 8, 16, f);
    std::vector<float> k(16, 0.75f), v(16, -1.5f);
    for (std::size_t layer = 0; layer < 2; ++layer)
      for (std::size_t pos = 0; pos < 8; ++pos) c.store(layer, pos, k.data(), v.data());
    c.set_length(8);
    const auto nonzero = [&] {
      std::size_t n = 0;
      for (std::size_t layer = 0; layer < 2; ++layer)
        for (std::size_t pos = 0; pos < 8; ++pos)
          for (std::size_t i = 0; i < 16; ++i)
            n += f == weight_format::fp32 ? (c.key(layer, pos)[i] != 0.0f) + (c.value(layer, pos)[i] != 0.0f)
                                          : (c.key16(layer, pos)[i] != 0) + (c.value16(layer, pos)[i] != 0);
      return n;
    };
    EXPECT_EQ(nonzero(), 2u * 8 * 16 * 2);
    c.wipe();
    EXPECT_EQ(c.length(), 0u);
    EXPECT_EQ(nonzero(), 0u) << specdec::cpu::to_string(f);
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
