// Tests for include/specdec/backend/cpu/checkpoint.hpp: header parsing of the bundled
// models, shared and unshared classifiers, and every kind of bad file, each rejected with
// a checkpoint_error whose message names the file and what was expected.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/transformer.hpp"

namespace {
namespace fs = std::filesystem;
using specdec::token_id;
using specdec::cpu::load_checkpoint;
using specdec::cpu::model_config;

std::string model_path(const char* name) { return std::string(SPECDEC_MODELS_DIR) + "/" + name; }

struct header {  // the 7 int32 fields, in file order (no padding)
  std::int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// Float count the llama2.c layout implies (independent of the loader's own arithmetic).
std::uint64_t floats_for(const header& h) {
  const std::uint64_t dim = std::uint64_t(h.dim), hid = std::uint64_t(h.hidden_dim), L = std::uint64_t(h.n_layers);
  const std::uint64_t kvd = dim * std::uint64_t(h.n_kv_heads) / std::uint64_t(h.n_heads);
  const std::uint64_t vocab = std::uint64_t(h.vocab_size < 0 ? -h.vocab_size : h.vocab_size);
  const std::uint64_t hs = dim / std::uint64_t(h.n_heads);
  std::uint64_t n = vocab * dim + L * dim * 2 + L * dim * dim * 2 + L * kvd * dim * 2 + L * hid * dim * 3 + dim +
                    std::uint64_t(h.seq_len) * hs;
  if (h.vocab_size < 0) n += vocab * dim;
  return n;
}

// A temporary file that is removed when the test ends.
class temp_file {
 public:
  explicit temp_file(const std::string& stem)
      : path_(fs::temp_directory_path() /
              (stem + "-" + std::to_string(std::random_device{}()) + ".bin")) {}
  ~temp_file() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  const fs::path& path() const { return path_; }
  std::string name() const { return path_.filename().string(); }

  void write(const void* header_bytes, std::size_t header_size, const std::vector<float>& payload) const {
    std::ofstream out(path_, std::ios::binary | std::ios::trunc);
    out.write(static_cast<const char*>(header_bytes), static_cast<std::streamsize>(header_size));
    out.write(reinterpret_cast<const char*>(payload.data()), static_cast<std::streamsize>(payload.size() * 4));
    ASSERT_TRUE(out.good());
  }
  void write(const header& h, std::size_t floats, unsigned seed = 1) const {
    std::vector<float> payload(floats);
    std::mt19937 rng(seed);
    std::normal_distribution<float> d(0.0f, 0.3f);
    for (float& f : payload) f = d(rng);
    write(&h, sizeof h, payload);
  }

 private:
  fs::path path_;
};

// Loading `file` throws checkpoint_error whose message contains the file's name and `expect`.
void expect_rejected(const temp_file& file, const std::string& expect) {
  try {
    (void)load_checkpoint(file.path());
    ADD_FAILURE() << "expected checkpoint_error containing '" << expect << "'";
  } catch (const specdec::checkpoint_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(file.name()), std::string::npos) << msg;
    EXPECT_NE(msg.find(expect), std::string::npos) << "missing '" << expect << "' in: " << msg;
  }
}

void expect_config(const model_config& c, const header& h, bool shared) {
  EXPECT_EQ(c.dim, h.dim);
  EXPECT_EQ(c.hidden_dim, h.hidden_dim);
  EXPECT_EQ(c.n_layers, h.n_layers);
  EXPECT_EQ(c.n_heads, h.n_heads);
  EXPECT_EQ(c.n_kv_heads, h.n_kv_heads);
  EXPECT_EQ(c.vocab_size, h.vocab_size < 0 ? -h.vocab_size : h.vocab_size);
  EXPECT_EQ(c.seq_len, h.seq_len);
  EXPECT_EQ(c.shared_classifier, shared);
  EXPECT_EQ(c.head_size(), h.dim / h.n_heads);
  EXPECT_EQ(c.kv_dim(), h.dim * h.n_kv_heads / h.n_heads);
}

TEST(checkpoint, bundled_models_have_the_documented_headers) {
  struct expected {
    const char* file;
    header h;
  };
  const expected models[] = {
      {"stories260K.bin", {64, 172, 5, 8, 4, 512, 512}},
      {"kjv-big.bin", {384, 1024, 6, 6, 2, 2048, 256}},
      {"kjv-little.bin", {128, 352, 4, 4, 4, 2048, 256}},
  };
  for (const auto& m : models) {
    SCOPED_TRACE(m.file);
    auto ck = load_checkpoint(model_path(m.file));
    expect_config(ck.config, m.h, true);
    EXPECT_EQ(ck.data.size(), floats_for(m.h));
    EXPECT_EQ(ck.path, model_path(m.file));
    EXPECT_EQ(ck.classifier(), ck.token_embedding());
    // The tensors start on a cache line (the file's 28-byte header is not copied), so
    // the weight rows the kernels stream do too: every bundled tensor is a multiple of
    // 16 floats. (malloc'd storage started 16 bytes into a line.)
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(ck.data.data()) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(ck.wq(1)) % 64, 0u);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(ck.w2(m.h.n_layers - 1)) % 64, 0u);
    EXPECT_EQ(fs::file_size(model_path(m.file)), 28 + 4 * floats_for(m.h));
    // The last tensor before freq_cis is rms_final: it must sit just before the tables.
    EXPECT_EQ(ck.rms_final() + m.h.dim + std::size_t(m.h.seq_len) * (m.h.dim / m.h.n_heads),
              ck.data.data() + ck.data.size());
    for (float v : std::vector<float>(ck.rms_final(), ck.rms_final() + m.h.dim)) ASSERT_TRUE(std::isfinite(v));
  }
}

TEST(checkpoint, unshared_classifier_is_read_from_the_tail) {
  // dim 16 (not a multiple of 16 in hidden 24: exercises the scalar tails), GQA 4/2.
  const header shared_h{16, 24, 2, 4, 2, 10, 8};
  header unshared_h = shared_h;
  unshared_h.vocab_size = -10;
  const std::size_t n_shared = floats_for(shared_h);
  const std::size_t n_unshared = floats_for(unshared_h);
  ASSERT_EQ(n_unshared, n_shared + 10 * 16);

  // Same weights; the unshared file appends an all-zero classifier.
  std::vector<float> payload(n_shared);
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 0.5f);
  for (float& f : payload) f = d(rng);
  temp_file shared_file("specdec-shared"), unshared_file("specdec-unshared");
  shared_file.write(&shared_h, sizeof shared_h, payload);
  payload.resize(n_unshared, 0.0f);
  unshared_file.write(&unshared_h, sizeof unshared_h, payload);

  auto ck = std::make_shared<const specdec::cpu::checkpoint>(load_checkpoint(unshared_file.path()));
  expect_config(ck->config, unshared_h, false);
  EXPECT_EQ(ck->classifier(), ck->data.data() + n_shared);
  EXPECT_NE(ck->classifier(), ck->token_embedding());

  specdec::cpu::transformer unshared(ck);
  specdec::cpu::transformer shared(shared_file.path());
  EXPECT_TRUE(shared.config().shared_classifier);
  std::vector<token_id> seq{1, 4, 9, 0, 3, 7};
  auto out = unshared.forward(seq);
  ASSERT_EQ(out.rows, seq.size());
  for (float v : out.flat()) EXPECT_EQ(v, 0.0f);  // zero classifier -> zero logits
  auto tied = shared.forward(seq);
  float max_abs = 0.0f;
  for (float v : tied.flat()) {
    ASSERT_TRUE(std::isfinite(v));
    max_abs = std::max(max_abs, std::abs(v));
  }
  EXPECT_GT(max_abs, 0.0f);  // the tied classifier is the (non-zero) embedding
  // The small odd-sized model keeps the block/single bit-exactness contract too.
  std::vector<float> block(tied.flat().begin(), tied.flat().end());
  shared.reset();
  for (std::size_t i = 0; i < seq.size(); ++i) {
    auto row = specdec::forward_one(shared, seq[i]).row(0);
    for (std::size_t j = 0; j < row.size(); ++j) ASSERT_EQ(row[j], block[i * 10 + j]) << i << "," << j;
  }
}

TEST(checkpoint, every_weight_format_converts_odd_shapes_and_all_zero_classifiers) {
  // hidden 24 and dim 16: partial q8_0 groups (24 = 16 + 8 of a 32-group) and scalar tails;
  // an all-zero unshared classifier must give scale 0 and exactly zero logits in q8_0.
  const header shared_h{16, 24, 2, 4, 2, 10, 8};
  header unshared_h = shared_h;
  unshared_h.vocab_size = -10;
  std::vector<float> payload(floats_for(shared_h));
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.0f, 0.5f);
  for (float& f : payload) f = d(rng);
  temp_file shared_file("specdec-fmt-shared"), unshared_file("specdec-fmt-unshared");
  shared_file.write(&shared_h, sizeof shared_h, payload);
  payload.resize(floats_for(unshared_h), 0.0f);
  unshared_file.write(&unshared_h, sizeof unshared_h, payload);
  auto shared_ck = std::make_shared<const specdec::cpu::checkpoint>(load_checkpoint(shared_file.path()));
  auto unshared_ck = std::make_shared<const specdec::cpu::checkpoint>(load_checkpoint(unshared_file.path()));
  std::vector<token_id> seq{1, 4, 9, 0, 3, 7, 2};
  specdec::cpu::transformer ref(shared_ck, {.threads = 1});
  auto ref_out = ref.forward(seq);
  std::vector<float> ref_logits(ref_out.flat().begin(), ref_out.flat().end());
  using specdec::cpu::weight_format;
  for (weight_format f : {weight_format::fp32, weight_format::bf16, weight_format::fp16, weight_format::q8_0}) {
    SCOPED_TRACE(std::string(specdec::cpu::to_string(f)));
    specdec::cpu::transformer zero(unshared_ck, {.threads = 2, .format = f});
    for (float v : zero.forward(seq).flat()) ASSERT_EQ(v, 0.0f);
    std::vector<float> one_thread;
    for (std::size_t threads : {1u, 3u}) {
      specdec::cpu::transformer m(shared_ck, {.threads = threads, .format = f});
      auto out = m.forward(seq);
      std::vector<float> block(out.flat().begin(), out.flat().end());
      if (threads == 1) one_thread = block;
      else
        for (std::size_t j = 0; j < block.size(); ++j) ASSERT_EQ(block[j], one_thread[j]) << "threads, " << j;
      m.reset();
      for (std::size_t i = 0; i < seq.size(); ++i) {
        auto row = specdec::forward_one(m, seq[i]).row(0);
        for (std::size_t j = 0; j < row.size(); ++j) ASSERT_EQ(row[j], block[i * 10 + j]) << i << "," << j;
      }
      float max_diff = 0.0f;
      for (std::size_t j = 0; j < block.size(); ++j) max_diff = std::max(max_diff, std::abs(block[j] - ref_logits[j]));
      if (f == weight_format::fp32) EXPECT_EQ(max_diff, 0.0f);
      else EXPECT_LT(max_diff, 0.25f);  // logits of this random model have s.d. ~4
    }
  }
}

TEST(checkpoint, missing_file) {
  temp_file f("specdec-missing");  // never written
  expect_rejected(f, "no such file; expected an existing llama2.c checkpoint file");
  fs::create_directory(f.path());
  expect_rejected(f, "not a regular file");
}

TEST(checkpoint, truncated_header) {
  temp_file f("specdec-short-header");
  const std::int32_t partial[2] = {16, 24};
  f.write(partial, sizeof partial, {1.0f, 2.0f});  // 16 bytes in all
  expect_rejected(f, "truncated header: expected at least 28 bytes, got 16");
  temp_file empty("specdec-empty");
  empty.write(partial, 0, {});
  expect_rejected(empty, "expected at least 28 bytes, got 0");
}

TEST(checkpoint, file_size_must_match_the_header) {
  const header h{16, 24, 2, 4, 2, 10, 8};
  const std::uint64_t want = 28 + 4 * floats_for(h);
  temp_file short_file("specdec-too-short"), long_file("specdec-too-long");
  short_file.write(h, floats_for(h) - 1);
  expect_rejected(short_file, "expected " + std::to_string(want) + " bytes, got " + std::to_string(want - 4));
  long_file.write(h, floats_for(h) + 3);
  expect_rejected(long_file, "expected " + std::to_string(want) + " bytes, got " + std::to_string(want + 12));
  // An unshared header needs the extra classifier: a shared-size payload is too short.
  header unshared = h;
  unshared.vocab_size = -10;
  temp_file missing_cls("specdec-missing-wcls");
  missing_cls.write(unshared, floats_for(h));
  expect_rejected(missing_cls, "expected " + std::to_string(28 + 4 * floats_for(unshared)) + " bytes, got " +
                                   std::to_string(want));
}

TEST(checkpoint, non_positive_dimensions) {
  const header good{16, 24, 2, 4, 2, 10, 8};
  const char* names[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  for (int field = 0; field < 7; ++field) {
    for (std::int32_t bad : {0, -3}) {
      if (field == 5 && bad != 0) continue;  // a negative vocab_size is valid (unshared)
      std::int32_t fields[7];
      std::memcpy(fields, &good, sizeof fields);
      fields[field] = bad;
      temp_file f(std::string("specdec-bad-") + names[field]);
      f.write(fields, sizeof fields, std::vector<float>(100, 0.0f));
      SCOPED_TRACE(names[field]);
      expect_rejected(f, std::string("expected ") + names[field] + " > 0");
      expect_rejected(f, names[field] + std::string(" = ") + std::to_string(bad));
    }
  }
}

TEST(checkpoint, inconsistent_head_layout) {
  temp_file a("specdec-dim-heads"), b("specdec-kv-heads"), c("specdec-odd-head");
  a.write(header{18, 24, 2, 4, 2, 10, 8}, 1000);
  expect_rejected(a, "expected dim % n_heads == 0");
  b.write(header{24, 24, 2, 4, 3, 10, 8}, 1000);
  expect_rejected(b, "expected n_heads % n_kv_heads == 0");
  temp_file more_kv("specdec-more-kv");
  more_kv.write(header{24, 24, 2, 4, 8, 10, 8}, 1000);
  expect_rejected(more_kv, "expected n_heads % n_kv_heads == 0");
  c.write(header{12, 24, 2, 4, 2, 10, 8}, 1000);  // head_size 3
  expect_rejected(c, "expected an even head_size");
}

TEST(checkpoint, absurd_sizes_are_rejected_before_allocating) {
  temp_file huge_field("specdec-huge-field"), overflow("specdec-overflow"), big("specdec-big-header");
  huge_field.write(header{1 << 30, 24, 2, 4, 2, 10, 8}, 10);
  expect_rejected(huge_field, "expected dim <= 16777216");
  // Every field within bounds, but the implied size overflows 2^38 bytes.
  overflow.write(header{1 << 24, 1 << 24, 1 << 24, 1 << 4, 1 << 4, 1 << 24, 1 << 24}, 10);
  expect_rejected(overflow, "absurd");
  // A plausible 7B-sized header on a tiny file: the size check fires, nothing is allocated.
  const header llama{4096, 11008, 32, 32, 32, 32000, 2048};
  big.write(llama, 10);
  expect_rejected(big, "expected " + std::to_string(28 + 4 * floats_for(llama)) + " bytes, got 68");
}

// kv_dim() multiplied two ints (signed overflow, UB) for headers the loader then rejects:
// the 28-byte file, dim 2^20 and n_heads = n_kv_heads = 4096.
TEST(checkpoint, header_products_do_not_overflow) {
  model_config c;
  c.dim = 1 << 20, c.n_heads = 4096, c.n_kv_heads = 4096;
  EXPECT_EQ(c.kv_dim(), 1 << 20);
  c.n_kv_heads = 1024;
  EXPECT_EQ(c.kv_dim(), 1 << 18);
  temp_file f("specdec-kv-dim-overflow");
  const unsigned char raw[28] = {0x00, 0x00, 0x10, 0x00, 0x01, 0, 0, 0, 0x01, 0, 0, 0, 0x00, 0x10, 0x00, 0x00,
                                 0x00, 0x10, 0x00, 0x00, 0x01, 0,    0, 0, 0x02, 0, 0, 0};
  f.write(raw, sizeof raw, {});
  expect_rejected(f, "absurd");  // dim x dim x n_layers alone is 2^40 floats
}

// NaN weights decoded greedily to <unk><unk>... with exit code 0; now the loader names
// the tensor, its layer and the element.
TEST(checkpoint, non_finite_weights_are_rejected_naming_the_tensor) {
  const header h{24, 32, 2, 4, 2, 10, 8};
  std::vector<float> payload(floats_for(h), 0.01f);
  const std::size_t dim = 24, vocab = 10, L = 2;
  const std::size_t wq1 = vocab * dim + L * dim + dim * dim;  // wq of layer 1
  payload[wq1 + 5 * dim + 7] = std::numeric_limits<float>::quiet_NaN();
  temp_file f("specdec-nan-weights");
  f.write(&h, sizeof h, payload);
  expect_rejected(f, "tensor wq of layer 1 (row 5, column 7) holds nan; expected finite weights");
  payload[wq1 + 5 * dim + 7] = 0.0f;
  payload[vocab * dim + 3] = -std::numeric_limits<float>::infinity();  // rms_att, layer 0
  f.write(&h, sizeof h, payload);
  expect_rejected(f, "tensor rms_att of layer 0 (row 0, column 3) holds -inf");
  payload[vocab * dim + 3] = 1.0f;
  // The RoPE tables are never read (RoPE is recomputed): non-finite values there are harmless.
  payload[payload.size() - 1] = std::numeric_limits<float>::quiet_NaN();
  f.write(&h, sizeof h, payload);
  EXPECT_NO_THROW((void)load_checkpoint(f.path()));
  // An unshared classifier is checked too.
  header u = h;
  u.vocab_size = -10;
  std::vector<float> unshared(floats_for(u), 0.01f);
  unshared.back() = std::numeric_limits<float>::infinity();
  f.write(&u, sizeof u, unshared);
  expect_rejected(f, "tensor wcls (row 9, column 23) holds inf");
}

TEST(checkpoint, parsing_bytes_in_memory_equals_loading_the_file) {
  const std::string path = model_path("stories260K.bin");
  std::ifstream in(path, std::ios::binary);
  const std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto a = load_checkpoint(path);
  const auto b = specdec::cpu::parse_checkpoint(bytes, "in-memory copy");
  EXPECT_EQ(b.path, "in-memory copy");
  expect_config(b.config, header{64, 172, 5, 8, 4, 512, 512}, true);
  ASSERT_EQ(a.data.size(), b.data.size());
  EXPECT_EQ(std::memcmp(a.data.data(), b.data.data(), 4 * a.data.size()), 0);
  try {
    (void)specdec::cpu::parse_checkpoint(std::span(bytes).first(bytes.size() - 1), "in-memory copy");
    ADD_FAILURE() << "no exception";
  } catch (const specdec::checkpoint_error& e) {
    EXPECT_NE(std::string(e.what()).find("'in-memory copy': file size does not match"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)specdec::cpu::parse_checkpoint(std::span(bytes).first(27), "x"), specdec::checkpoint_error);
}

}  // namespace
