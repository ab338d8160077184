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
#include "specdec/backend/cpu/detail/thread_pool.hpp"
#include "specdec/backend/cpu/detail/weights.hpp"
#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/token.hpp"

namespace specdec::cpu {

/// Load-time options of a `transformer`.
///
/// ```cpp
/// specdec::cpu::transformer m("models/kjv-big.bin", {.threads = 1, .format = specdec::cpu::weight_format::q8_0});
/// ```
struct transformer_options {
  /// Threads the products and the attention run on (the caller's thread included);
  /// 0 = all cores (std::thread::hardware_concurrency()). Results do not depend on it.
  std::size_t threads = 0;
  /// How the weight matrices are held: converted from the checkpoint's fp32 at load time.
  weight_format format = weight_format::fp32;
};

/// A Llama transformer over llama2.c weights (fp32 as stored, or bf16 / fp16 / q8_0
/// converted at load time, see `transformer_options`) with a preallocated KV cache,
/// multi-threaded over output rows and attention heads on a persistent thread pool.
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
  explicit transformer(const std::filesystem::path& checkpoint_path, transformer_options options = {})
      : transformer(std::make_shared<const checkpoint>(load_checkpoint(checkpoint_path)), options) {}

  /// Runs over shared, already loaded weights (converted to `options.format` for this
  /// instance). Throws `invalid_argument` on a null pointer.
  explicit transformer(std::shared_ptr<const checkpoint> ckpt, transformer_options options = {})
      : ck_(std::move(ckpt)), options_(options) {
    if (!ck_) throw invalid_argument("transformer: checkpoint pointer is null; expected loaded weights");
    const model_config& c = ck_->config;
    const std::size_t dim = static_cast<std::size_t>(c.dim);
    const std::size_t hid = static_cast<std::size_t>(c.hidden_dim);
    const std::size_t kvd = static_cast<std::size_t>(c.kv_dim());
    const weight_format f = options.format;
    layers_.reserve(static_cast<std::size_t>(c.n_layers));
    for (int l = 0; l < c.n_layers; ++l) {
      layers_.push_back({detail::weight_matrix(ck_->wq(l), dim, dim, f), detail::weight_matrix(ck_->wk(l), kvd, dim, f),
                         detail::weight_matrix(ck_->wv(l), kvd, dim, f), detail::weight_matrix(ck_->wo(l), dim, dim, f),
                         detail::weight_matrix(ck_->w1(l), hid, dim, f), detail::weight_matrix(ck_->w2(l), dim, hid, f),
                         detail::weight_matrix(ck_->w3(l), hid, dim, f)});
    }
    classifier_ = detail::weight_matrix(ck_->classifier(), vocab_size(), dim, f);
    pool_ = detail::shared_pool(options.threads);
    options_.threads = pool_->size();
    cache_ = kv_cache(static_cast<std::size_t>(c.n_layers), static_cast<std::size_t>(c.seq_len), kvd);
    att_.resize(static_cast<std::size_t>(c.seq_len) * pool_->size());
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
  /// The options in effect (`threads` resolved to the actual thread count).
  [[nodiscard]] const transformer_options& options() const noexcept { return options_; }
  /// Bytes of weight matrices (all layers and the classifier, in the chosen format) that
  /// one forward streams, whatever its block size. Norm weights, the one embedding row
  /// per token and the KV cache are not counted (together < 1% for the bundled models).
  [[nodiscard]] std::size_t weight_bytes_per_forward() const noexcept {
    std::size_t b = classifier_.bytes();
    for (const auto& L : layers_) b += L.wq.bytes() + L.wk.bytes() + L.wv.bytes() + L.wo.bytes() + L.w1.bytes() + L.w2.bytes() + L.w3.bytes();
    return b;
  }

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
    const std::size_t seq = context_length();
    const float att_scale = std::sqrt(static_cast<float>(hs));

    for (std::size_t t = 0; t < k; ++t) {
      const float* e = ck_->token_embedding() + static_cast<std::size_t>(tokens[t]) * dim;
      std::copy(e, e + dim, x_.data() + t * dim);
    }

    for (int l = 0; l < c.n_layers; ++l) {
      const std::size_t ul = static_cast<std::size_t>(l);
      const layer_weights& L = layers_[ul];
      rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_att(l), k, dim);
      // Keys and values go straight into the cache rows of positions pos0 .. pos0+k-1.
      parallel(k * (dim + 2 * kvd) * dim, [&](std::size_t part, std::size_t parts) {
        rows_part(L.wq, part, parts, xb_.data(), k, dim, q_.data(), dim);
        rows_part(L.wk, part, parts, xb_.data(), k, dim, cache_.key(ul, pos0), kvd);
        rows_part(L.wv, part, parts, xb_.data(), k, dim, cache_.value(ul, pos0), kvd);
      });
      for (std::size_t t = 0; t < k; ++t) {
        const std::size_t r = (pos0 + t) * (hs / 2);
        detail::rope(q_.data() + t * dim, cache_.key(ul, pos0 + t), dim, kvd, hs, rope_cos_.data() + r,
                     rope_sin_.data() + r);
      }
      // Causal attention, one token and head at a time: token t sees positions 0..pos0+t.
      // Heads are split across threads; each (token, head) is computed by one thread in
      // the same order whatever the split.
      parallel(k * n_heads * (pos0 + k) * hs * 2, [&](std::size_t part, std::size_t parts) {
        std::size_t h0, h1;
        detail::split_range(n_heads, part, parts, 1, h0, h1);
        float* att = att_.data() + part * seq;
        for (std::size_t t = 0; t < k; ++t) {
          const std::size_t pos = pos0 + t;
          for (std::size_t h = h0; h < h1; ++h) {
            const float* q = q_.data() + t * dim + h * hs;
            const std::size_t kv_off = (h / kv_mul) * hs;
            // att[p] = q . key[p]: the keys are the "weight rows" (stride kv_dim).
            detail::matmul(cache_.key(ul, 0) + kv_off, pos + 1, hs, kvd, q, 1, hs, att, 1);
            for (std::size_t p = 0; p <= pos; ++p) att[p] /= att_scale;
            detail::softmax(att, pos + 1);
            float* out = xb_.data() + t * dim + h * hs;
            std::fill(out, out + hs, 0.0f);
            for (std::size_t p = 0; p <= pos; ++p) {
              const float a = att[p];
              const float* v = cache_.value(ul, p) + kv_off;
              for (std::size_t i = 0; i < hs; ++i) out[i] = detail::fmadd(a, v[i], out[i]);
            }
          }
        }
      });
      parallel(k * dim * dim, [&](std::size_t part, std::size_t parts) {
        rows_part(L.wo, part, parts, xb_.data(), k, dim, xb2_.data(), dim);
      });
      add_rows(x_.data(), xb2_.data(), k * dim);

      rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_ffn(l), k, dim);
      parallel(k * 2 * hid * dim, [&](std::size_t part, std::size_t parts) {
        std::size_t r0, r1;
        rows_part(L.w1, part, parts, xb_.data(), k, dim, hb_.data(), hid, &r0, &r1);
        rows_part(L.w3, part, parts, xb_.data(), k, dim, hb2_.data(), hid);
        for (std::size_t t = 0; t < k; ++t)  // elementwise: any split gives the same bits
          detail::swiglu(hb_.data() + t * hid + r0, hb2_.data() + t * hid + r0, r1 - r0);
      });
      parallel(k * dim * hid, [&](std::size_t part, std::size_t parts) {
        rows_part(L.w2, part, parts, hb_.data(), k, hid, xb2_.data(), dim);
      });
      add_rows(x_.data(), xb2_.data(), k * dim);
    }

    rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_final(), k, dim);
    parallel(k * vocab * dim, [&](std::size_t part, std::size_t parts) {
      rows_part(classifier_, part, parts, xb_.data(), k, dim, logits_.data(), vocab);
    });
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

  /// Below this many multiply-adds a product runs on the calling thread alone (waking the
  /// workers would cost more than it saves). Splitting never changes a result.
  static constexpr std::size_t min_parallel_work = std::size_t{1} << 16;

  template <class F>
  void parallel(std::size_t work, F&& f) {
    if (work < min_parallel_work || pool_->size() == 1) f(std::size_t{0}, std::size_t{1});
    else pool_->run(f);
  }

  /// Rows of `w` belonging to part `part` of `parts`: y[t][r] = w[r] . x[t] for those rows.
  static void rows_part(const detail::weight_matrix& w, std::size_t part, std::size_t parts, const float* x,
                        std::size_t k, std::size_t ldx, float* y, std::size_t ldy, std::size_t* r0_out = nullptr,
                        std::size_t* r1_out = nullptr) noexcept {
    std::size_t r0, r1;
    detail::split_range(w.rows(), part, parts, 16, r0, r1);
    if (r1 > r0) w.matmul(r0, r1 - r0, x, k, ldx, y + r0, ldy);
    if (r0_out) *r0_out = r0;
    if (r1_out) *r1_out = r1;
  }

  /// Residual connection x += y over n contiguous floats (elementwise, order-free).
  static void add_rows(float* x, const float* y, std::size_t n) {
    const Eigen::Index en = static_cast<Eigen::Index>(n);
    Eigen::Map<Eigen::ArrayXf>(x, en) += Eigen::Map<const Eigen::ArrayXf>(y, en);
  }

  struct layer_weights {
    detail::weight_matrix wq, wk, wv, wo, w1, w2, w3;
  };

  std::shared_ptr<const checkpoint> ck_;
  transformer_options options_;
  std::vector<layer_weights> layers_;
  detail::weight_matrix classifier_;
  std::shared_ptr<detail::thread_pool> pool_;
  kv_cache cache_;
  std::size_t rows_ = 0;  ///< token rows the scratch buffers hold
  std::vector<float> x_, xb_, xb2_, q_, hb_, hb2_, logits_, att_;
  std::vector<float> rope_cos_, rope_sin_;  ///< [seq_len][head_size / 2]
};

static_assert(specdec::language_model<transformer>);

}  // namespace specdec::cpu
