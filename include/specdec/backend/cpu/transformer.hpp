#pragma once
/// \file backend/cpu/transformer.hpp
/// The reference CPU Llama transformer (llama2.c architecture) as a
/// `specdec::language_model`, with a batch-invariant k-token block forward.
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/detail/kernels.hpp"
#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/token.hpp"

namespace specdec::cpu {

/// A Llama transformer over llama2.c fp32 weights with a preallocated KV cache.
///
/// `forward(tokens)` runs a block of k tokens with matrix-matrix style products (each
/// weight row is streamed once per call and applied to the whole block) and returns k
/// rows of logits. Row i is bit-for-bit identical to what feeding the same tokens one at
/// a time would give (see detail/kernels.hpp for why), and `truncate(n)` followed by a
/// forward is bit-for-bit identical to a fresh model fed the same n-token prefix.
/// Several transformers can share one checkpoint (e.g. draft = target in tests).
///
/// ```cpp
/// specdec::cpu::transformer m(std::filesystem::path("models/stories260K.bin"));
/// std::vector<specdec::token_id> prompt{specdec::bos_token, 403, 407};
/// specdec::logits_block out = m.forward(prompt);    // 3 rows of 512 logits
/// m.truncate(1);                                    // keep only BOS, O(1)
/// ```
class transformer {
 public:
  /// Loads the checkpoint at `checkpoint_path` (throws `checkpoint_error`).
  explicit transformer(const std::filesystem::path& checkpoint_path)
      : transformer(std::make_shared<const checkpoint>(load_checkpoint(checkpoint_path))) {}

  /// Runs over shared, already loaded weights. Throws `invalid_argument` on a null pointer.
  explicit transformer(std::shared_ptr<const checkpoint> ckpt) : ck_(std::move(ckpt)) {
    if (!ck_) throw invalid_argument("transformer: checkpoint pointer is null; expected loaded weights");
    const model_config& c = ck_->config;
    cache_ = kv_cache(static_cast<std::size_t>(c.n_layers), static_cast<std::size_t>(c.seq_len),
                      static_cast<std::size_t>(c.kv_dim()));
    att_.resize(static_cast<std::size_t>(c.seq_len));
    // RoPE angles depend only on (position, pair): tabulate them once instead of per
    // token, layer and head (same float computation, so the same values as run.c's).
    const std::size_t half = static_cast<std::size_t>(c.head_size() / 2);
    rope_cos_.resize(static_cast<std::size_t>(c.seq_len) * half);
    rope_sin_.resize(rope_cos_.size());
    for (std::size_t pos = 0; pos < static_cast<std::size_t>(c.seq_len); ++pos)
      for (std::size_t i = 0; i < half; ++i)
        detail::rope_angle(pos, i, static_cast<std::size_t>(c.head_size()), rope_cos_[pos * half + i],
                           rope_sin_[pos * half + i]);
    reserve_rows(std::min<std::size_t>(8, static_cast<std::size_t>(c.seq_len)));
  }

  [[nodiscard]] std::size_t vocab_size() const noexcept { return static_cast<std::size_t>(ck_->config.vocab_size); }
  [[nodiscard]] std::size_t context_length() const noexcept { return static_cast<std::size_t>(ck_->config.seq_len); }
  [[nodiscard]] std::size_t cache_length() const noexcept { return cache_.length(); }
  [[nodiscard]] const model_config& config() const noexcept { return ck_->config; }
  [[nodiscard]] const std::shared_ptr<const checkpoint>& weights() const noexcept { return ck_; }

  /// Appends `tokens` to the cache and returns one row of logits per token, valid until
  /// the next non-const call. An empty block gives 0 rows. Throws `token_out_of_range` or
  /// `context_overflow` before touching any state.
  specdec::logits_block forward(std::span<const specdec::token_id> tokens) {
    check_token_ids(tokens, vocab_size(), "transformer::forward");
    check_context(cache_.length(), tokens.size(), context_length(), "transformer::forward");
    const std::size_t k = tokens.size();
    if (k == 0) return {logits_.data(), 0, vocab_size()};
    reserve_rows(k);  // may allocate (geometric growth); the cache is still untouched

    const model_config& c = ck_->config;
    const std::size_t dim = static_cast<std::size_t>(c.dim);
    const std::size_t hid = static_cast<std::size_t>(c.hidden_dim);
    const std::size_t kvd = static_cast<std::size_t>(c.kv_dim());
    const std::size_t hs = static_cast<std::size_t>(c.head_size());
    const std::size_t n_heads = static_cast<std::size_t>(c.n_heads);
    const std::size_t kv_mul = static_cast<std::size_t>(c.n_heads / c.n_kv_heads);
    const std::size_t vocab = vocab_size();
    const std::size_t pos0 = cache_.length();
    const float att_scale = std::sqrt(static_cast<float>(hs));

    for (std::size_t t = 0; t < k; ++t) {
      const float* e = ck_->token_embedding() + static_cast<std::size_t>(tokens[t]) * dim;
      std::copy(e, e + dim, x_.data() + t * dim);
    }

    for (int l = 0; l < c.n_layers; ++l) {
      const std::size_t ul = static_cast<std::size_t>(l);
      rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_att(l), k, dim);
      detail::matmul(ck_->wq(l), dim, dim, dim, xb_.data(), k, dim, q_.data(), dim);
      // Keys and values go straight into the cache rows of positions pos0 .. pos0+k-1.
      detail::matmul(ck_->wk(l), kvd, dim, dim, xb_.data(), k, dim, cache_.key(ul, pos0), kvd);
      detail::matmul(ck_->wv(l), kvd, dim, dim, xb_.data(), k, dim, cache_.value(ul, pos0), kvd);
      for (std::size_t t = 0; t < k; ++t) {
        const std::size_t r = (pos0 + t) * (hs / 2);
        detail::rope(q_.data() + t * dim, cache_.key(ul, pos0 + t), dim, kvd, hs, rope_cos_.data() + r,
                     rope_sin_.data() + r);
      }
      // Causal attention, one token and head at a time: token t sees positions 0..pos0+t.
      for (std::size_t t = 0; t < k; ++t) {
        const std::size_t pos = pos0 + t;
        for (std::size_t h = 0; h < n_heads; ++h) {
          const float* q = q_.data() + t * dim + h * hs;
          const std::size_t kv_off = (h / kv_mul) * hs;
          // att[p] = q . key[p]: the keys are the "weight rows" (stride kv_dim).
          detail::matmul(cache_.key(ul, 0) + kv_off, pos + 1, hs, kvd, q, 1, hs, att_.data(), 1);
          for (std::size_t p = 0; p <= pos; ++p) att_[p] /= att_scale;
          detail::softmax(att_.data(), pos + 1);
          float* out = xb_.data() + t * dim + h * hs;
          std::fill(out, out + hs, 0.0f);
          for (std::size_t p = 0; p <= pos; ++p) {
            const float a = att_[p];
            const float* v = cache_.value(ul, p) + kv_off;
            for (std::size_t i = 0; i < hs; ++i) out[i] = detail::fmadd(a, v[i], out[i]);
          }
        }
      }
      detail::matmul(ck_->wo(l), dim, dim, dim, xb_.data(), k, dim, xb2_.data(), dim);
      add_rows(x_.data(), xb2_.data(), k * dim);

      rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_ffn(l), k, dim);
      detail::matmul(ck_->w1(l), hid, dim, dim, xb_.data(), k, dim, hb_.data(), hid);
      detail::matmul(ck_->w3(l), hid, dim, dim, xb_.data(), k, dim, hb2_.data(), hid);
      for (std::size_t t = 0; t < k; ++t) detail::swiglu(hb_.data() + t * hid, hb2_.data() + t * hid, hid);
      detail::matmul(ck_->w2(l), dim, hid, hid, hb_.data(), k, hid, xb2_.data(), dim);
      add_rows(x_.data(), xb2_.data(), k * dim);
    }

    rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_final(), k, dim);
    detail::matmul(ck_->classifier(), vocab, dim, dim, xb_.data(), k, dim, logits_.data(), vocab);
    cache_.set_length(pos0 + k);
    return {logits_.data(), k, vocab};
  }

  /// Keeps the first n cached tokens, in O(1). `n >= cache_length()` is a no-op (like the
  /// archetypes in specdec/testing), it never grows the cache.
  void truncate(std::size_t n) noexcept {
    if (n < cache_.length()) cache_.set_length(n);
  }
  /// Forgets every cached token: `truncate(0)`.
  void reset() noexcept { truncate(0); }

 private:
  /// Sizes the per-block scratch buffers for at least `rows` tokens, growing
  /// geometrically so that a sequence of forwards allocates O(log context) times.
  void reserve_rows(std::size_t rows) {
    if (rows <= rows_) return;
    const std::size_t cap = std::min(std::max(rows, 2 * rows_), context_length());
    const model_config& c = ck_->config;
    const std::size_t dim = static_cast<std::size_t>(c.dim);
    const std::size_t hid = static_cast<std::size_t>(c.hidden_dim);
    std::vector<float> x(cap * dim), xb(cap * dim), xb2(cap * dim), q(cap * dim);
    std::vector<float> hb(cap * hid), hb2(cap * hid), logits(cap * vocab_size());
    x_.swap(x), xb_.swap(xb), xb2_.swap(xb2), q_.swap(q), hb_.swap(hb), hb2_.swap(hb2);
    logits_.swap(logits);
    rows_ = cap;
  }

  /// out[t] = w * (inv_rms(x[t]) * x[t]) for each of k rows (elementwise part via Eigen:
  /// two correctly rounded multiplies per element, independent of vectorisation).
  static void rmsnorm_rows(float* out, const float* x, const float* w, std::size_t k, std::size_t n) {
    using map = Eigen::Map<Eigen::ArrayXf>;
    using cmap = Eigen::Map<const Eigen::ArrayXf>;
    const Eigen::Index en = static_cast<Eigen::Index>(n);
    for (std::size_t t = 0; t < k; ++t) {
      const float s = detail::rms_inverse(x + t * n, n);
      map(out + t * n, en) = cmap(w, en) * (s * cmap(x + t * n, en));
    }
  }

  /// Residual connection x += y over n contiguous floats (elementwise, order-free).
  static void add_rows(float* x, const float* y, std::size_t n) {
    const Eigen::Index en = static_cast<Eigen::Index>(n);
    Eigen::Map<Eigen::ArrayXf>(x, en) += Eigen::Map<const Eigen::ArrayXf>(y, en);
  }

  std::shared_ptr<const checkpoint> ck_;
  kv_cache cache_;
  std::size_t rows_ = 0;  ///< token rows the scratch buffers hold
  std::vector<float> x_, xb_, xb2_, q_, hb_, hb2_, logits_, att_;
  std::vector<float> rope_cos_, rope_sin_;  ///< [seq_len][head_size / 2]
};

static_assert(specdec::language_model<transformer>);

}  // namespace specdec::cpu
