#pragma once
/// \file backend/cpu/transformer.hpp
/// The reference CPU Llama transformer (llama2.c architecture) as a
/// `specdec::language_model`, with a batch-invariant k-token block forward.
#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/detail/aligned.hpp"
#include "specdec/backend/cpu/detail/kernels.hpp"
#include "specdec/backend/cpu/detail/linkage.hpp"
#include "specdec/backend/cpu/detail/shared_instance.hpp"
#include "specdec/backend/cpu/detail/thread_pool.hpp"
#include "specdec/backend/cpu/detail/weights.hpp"
#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/token.hpp"
#include "specdec/tree.hpp"

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
  /// How the KV cache holds keys and values: fp32 (exact), or fp16 / bf16 (half the
  /// memory and half the attention's cache reads; each key and value rounded once when
  /// stored, like llama.cpp's default f16 cache). q8_0 is rejected. Results stay
  /// batch- and thread-invariant bit for bit in every format.
  weight_format kv_format = weight_format::fp32;
  /// Bytes this model's KV caches and per-context scratch (attention scores, RoPE tables)
  /// may take, checked before they are allocated; 0 = the memory the system reports
  /// available when the model is built (MemAvailable). A header whose seq_len and n_layers
  /// ask for more is rejected with a `resource_error` naming the checkpoint, the sizes and
  /// the limit, instead of failing in the allocator. A `batched_transformer` counts the
  /// caches of all its sequences, pooled ones included.
  std::size_t memory_limit = 0;
  /// The tile shapes of the weight products (see `tile_config`): `automatic` takes the
  /// SPECDEC_TILES environment variable, else the fastest on this host, timed once per
  /// process, weight format and model shape at the first load. `options()` reports the
  /// one in effect.
  /// Results do not depend on it.
  tile_config tiles = tile_config::automatic;
};

namespace detail {

/// Where one activation row of a block forward belongs: the KV cache of its sequence and
/// its position there. The row is rotated (RoPE) for position `pos` and attends to
/// positions 0..pos, and its key and value are written at position `pos`. A chain row
/// finds position p at cache slot p. A token tree's node (`slots` set) finds positions
/// 0..prefix-1 at their own slots and position prefix + j at `slots[j]` (its ancestors
/// root first, then its own slot, where its key and value go): the positions a chain
/// forward of its root-to-node path would give them.
struct row_target {
  kv_cache* cache = nullptr;
  std::size_t pos = 0;
  const std::size_t* slots = nullptr;  ///< tree rows: the slots of positions prefix..pos
  std::size_t prefix = 0;

  /// The cache slot holding position p (p <= pos).
  [[nodiscard]] std::size_t slot(std::size_t p) const noexcept { return slots && p >= prefix ? slots[p - prefix] : p; }
};

/// A checkpoint's weight matrices converted to one weight format (panel-major, see
/// detail::matmul_panels): immutable once built, and shared (`shared_model_weights`) by
/// every transformer and batched_transformer over the same checkpoint and format.
struct model_weights {
  struct layer {
    weight_matrix wq, wk, wv, wo, w1, w2, w3;
  };
  std::shared_ptr<const checkpoint> source;  ///< keeps the checkpoint (and its address) alive
  weight_format format = weight_format::fp32;
  std::vector<layer> layers;
  weight_matrix classifier;

  model_weights(std::shared_ptr<const checkpoint> ck, weight_format f);
  /// Bytes one forward streams through the weight products.
  [[nodiscard]] std::size_t bytes() const noexcept {
    std::size_t b = classifier.bytes();
    for (const auto& L : layers) b += L.wq.bytes() + L.wk.bytes() + L.wv.bytes() + L.wo.bytes() + L.w1.bytes() + L.w2.bytes() + L.w3.bytes();
    return b;
  }
};

/// The process-wide converted weights of `ck` in format `f`, built on first use and shared
/// while any model holds them (like `shared_pool`): a draft, a target, a batched model
/// and the transformers of an independent batch over one checkpoint keep one copy (41 MB
/// for kjv-big in fp32) instead of one each.
/// (Keyed by the checkpoint's address: a live entry holds its checkpoint, so the address
/// cannot have been reused by another.)
inline std::shared_ptr<const model_weights> shared_model_weights(const std::shared_ptr<const checkpoint>& ck,
                                                                 weight_format f) {
  return shared_instance<const model_weights>(
      std::pair{ck.get(), f}, [&] { return std::make_shared<const model_weights>(ck, f); });
}

/// The tile configuration a model runs with: `requested` unless it is `automatic`; then
/// the SPECDEC_TILES environment variable where it names one (an unknown name throws
/// `invalid_argument` naming the variable); else the configuration timed fastest for
/// this weight format and model shape (`fastest_tile_config` over the layers' matrices
/// in forward order, as many layers as make `tile_timing_bytes`, so that the weights
/// stream from beyond the caches as in a forward), once per process: the first model of
/// a format and w1 shape times it, the others reuse it. Never a different result, only
/// a different speed.
/// Weight bytes the tile timing at load streams per candidate and block (whole layers,
/// at least one): more than the last-level caches of the hosts this was tuned on, and
/// little enough that timing stays a fraction of a second.
inline constexpr std::size_t tile_timing_bytes = std::size_t{48} << 20;

SPECDEC_CPU_FUNC tile_config resolve_tile_config(tile_config requested, const model_weights& w);

/// The layer computation shared by `transformer` (one sequence: rows at consecutive
/// positions of one cache) and `batched_transformer` (rows of many sequences, each at its
/// own position in its own cache): weights in the chosen format, the thread pool, the
/// RoPE tables and the per-row scratch. Every weight product runs once per call over all
/// rows, and every row's reductions have a fixed order independent of the other rows, so
/// a row's logits depend only on its token, its position and its cache's contents.
class llama_engine {
 public:
  llama_engine(std::shared_ptr<const checkpoint> ckpt, transformer_options options, const char* who);

  [[nodiscard]] std::size_t vocab_size() const noexcept { return static_cast<std::size_t>(ck_->config.vocab_size); }
  [[nodiscard]] std::size_t context_length() const noexcept { return static_cast<std::size_t>(ck_->config.seq_len); }
  [[nodiscard]] const model_config& config() const noexcept { return ck_->config; }
  [[nodiscard]] const std::shared_ptr<const checkpoint>& weights() const noexcept { return ck_; }
  [[nodiscard]] const transformer_options& options() const noexcept { return options_; }
  [[nodiscard]] std::size_t weight_bytes_per_forward() const noexcept { return weights_->bytes(); }
  [[nodiscard]] const std::shared_ptr<const model_weights>& converted_weights() const noexcept { return weights_; }
  /// An empty cache for one sequence: [n_layers][seq_len][kv_dim], the model's
  /// `caches`-th: throws `resource_error` before allocating if that many caches and the
  /// scratch exceed the memory limit.
  [[nodiscard]] kv_cache make_cache(std::uint64_t caches = 1) const {
    check_memory(caches);
    const model_config& c = ck_->config;
    return kv_cache(static_cast<std::size_t>(c.n_layers), static_cast<std::size_t>(c.seq_len),
                    static_cast<std::size_t>(c.kv_dim()), options_.kv_format);
  }
  /// Throws `resource_error` naming the checkpoint, the sizes and the limit unless
  /// `caches` KV caches plus the per-context scratch fit the memory limit.
  void check_memory(std::uint64_t caches) const;
  /// The logits buffer (valid rows: those of the last `forward_rows`).
  [[nodiscard]] const float* logits() const noexcept { return logits_.data(); }

  /// Sizes the per-row scratch buffers for at least `rows` rows, growing geometrically so
  /// that a sequence of forwards allocates O(log rows) times. Call before touching state.
  void reserve_rows(std::size_t rows);

  /// Runs `tokens.size()` rows through the network and returns their logits (row-major,
  /// `vocab_size()` each, valid until the next call). Row t writes its key and value at
  /// position `rows[t].pos` of `rows[t].cache` and attends to positions 0..pos of that
  /// cache (through `row_target::slot`), so every earlier position must hold valid
  /// entries (from earlier calls, or from earlier rows of this call). The caller
  /// validated the tokens and positions and called `reserve_rows(tokens.size())`; cache
  /// lengths are the caller's business.
  const float* forward_rows(std::span<const token_id> tokens, std::span<const row_target> rows);

 private:
  /// out[t] = w * (inv_rms(x[t]) * x[t]) for each of k rows (elementwise part via Eigen:
  /// two correctly rounded multiplies per element, independent of vectorisation).
  static void rmsnorm_rows(float* out, const float* x, const float* w, std::size_t k, std::size_t n) {
    using map = Eigen::Map<Eigen::ArrayXf>;
    using cmap = Eigen::Map<const Eigen::ArrayXf>;
    const Eigen::Index en = static_cast<Eigen::Index>(n);
    for (std::size_t t = 0; t < k; ++t) {
      const float s = rms_inverse(x + t * n, n);
      map(out + t * n, en) = cmap(w, en) * (s * cmap(x + t * n, en));
    }
  }

  /// Below this many multiply-adds a product runs on the calling thread alone (waking the
  /// workers would cost more than it saves). Splitting never changes a result.
  static constexpr std::size_t min_parallel_work = std::size_t{1} << 16;

  /// Weight products are shared out among threads in units of 16 rows (one weight panel,
  /// see detail::matmul_panels).
  static constexpr std::size_t row_unit = 16;
  static_assert(row_unit % lanes == 0, "thread splits must cut weight products at panel boundaries");
  /// Blocks of at least this many rows (batched steps, prefill) share their products out
  /// dynamically (see work_split) in chunks of `unit_chunk` units (96 rows: three tiles of
  /// 2 panels); smaller ones statically, one contiguous slice per thread. A block of 7+
  /// rows is compute-bound (2-panel x 8-token tiles, see matmul_panels), so under a static
  /// split a thread slowed by a neighbour on its core (SMT sibling, other tenants) holds
  /// every product up while the others wait at its end. Smaller blocks are bound by
  /// memory bandwidth, which the threads share anyway, and each thread's single long
  /// contiguous stream is what the hardware prefetchers follow best, so they keep the
  /// static split (batched steps: bench/batch_bench.cpp; single tokens:
  /// bench/bench_forward.cpp).
  static constexpr std::size_t balanced_rows = 7;
  static constexpr std::size_t unit_chunk = 6;
  static std::size_t units_of(const weight_matrix& w) noexcept { return (w.rows() + row_unit - 1) / row_unit; }

  /// The work_split chunk for a k-row block: `chunk` from `balanced_rows` rows on, else
  /// 0 (static slices).
  static std::size_t balance(std::size_t k, std::size_t chunk) noexcept { return k >= balanced_rows ? chunk : 0; }

  /// Runs f(part) for every part of a job after resetting splits_[i] over units[i] units
  /// with chunk `chunk` (see work_split): on the calling thread alone (one part) for
  /// small work, else on the pool.
  template <std::size_t N, class F>
  void parallel_split(std::size_t work, std::size_t chunk, const std::size_t (&units)[N], F&& f) {
    static_assert(N >= 1 && N <= std::tuple_size_v<decltype(splits_)>, "parallel_split: one work_split per product");
    const std::size_t parts = work < min_parallel_work ? 1 : pool_->size();
    if (parts == 1) chunk = 0;
    for (std::size_t i = 0; i < N; ++i) splits_[i].reset(units[i], parts, chunk);
    if (parts == 1) f(std::size_t{0});
    else pool_->run([&](std::size_t part, std::size_t) { f(part); });
  }

  /// Calls body(r0, r1, chunked) on each chunk of part `part`'s share of rows [0, rows)
  /// under `split` (units of `row_unit` rows); `chunked` says that a next chunk may follow
  /// the part's last row, so the product may prefetch past it.
  template <class Body>
  static void for_rows(work_split& split, std::size_t part, std::size_t rows, Body&& body) {
    const bool chunked = split.chunked();
    split.run(part, [&](std::size_t b, std::size_t e) { body(b * row_unit, std::min(e * row_unit, rows), chunked); });
  }

  /// Part `part`'s rows of `w` under `split`: y[t][r] = w[r] . x[t] for those rows (x
  /// as quantized by `quantized` for w8a8 weights).
  void rows_part(work_split& split, std::size_t part, const weight_matrix& w, const float* x, std::size_t k,
                 std::size_t ldx, float* y, std::size_t ldy, const i8_inputs* xq) const {
    for_rows(split, part, w.rows(), [&](std::size_t r0, std::size_t r1, bool chunked) {
      w.matmul(r0, r1 - r0, x, k, ldx, y + r0, ldy, chunked, xq, options_.tiles);
    });
  }

  /// For w8a8 weights: the k rows of n inputs at x quantized once (on the calling thread,
  /// into scratch sized by reserve_rows) for all the products that read them; otherwise
  /// null (the products read x).
  const i8_inputs* quantized(const float* x, std::size_t k, std::size_t n) noexcept {
    if (options_.format != weight_format::w8a8) return nullptr;
    xq_.quantize(x, k, n, n);
    return &xq_;
  }

  /// Residual connection x += y over n contiguous floats (elementwise, order-free).
  static void add_rows(float* x, const float* y, std::size_t n) {
    const Eigen::Index en = static_cast<Eigen::Index>(n);
    Eigen::Map<Eigen::ArrayXf>(x, en) += Eigen::Map<const Eigen::ArrayXf>(y, en);
  }

  std::shared_ptr<const checkpoint> ck_;
  transformer_options options_;
  std::shared_ptr<const model_weights> weights_;
  std::shared_ptr<thread_pool> pool_;
  std::uint64_t memory_limit_ = 0;   ///< bytes the caches and the scratch may take
  std::uint64_t cache_bytes_ = 0;    ///< one sequence's KV cache
  std::uint64_t scratch_bytes_ = 0;  ///< attention scores and RoPE tables
  std::array<work_split, 3> splits_;  ///< one per product of a job: q, k and v use all three, other jobs the first
  std::size_t rows_ = 0;  ///< token rows the scratch buffers hold
  // Cache-line aligned (detail/aligned.hpp): rows of dim, kv_dim and hidden floats then
  // start on a cache line whenever those are multiples of 16, as in every bundled model.
  aligned_vector<float> x_, xb_, xb2_, q_, k_, v_, hb_, hb2_, logits_, att_;
  i8_inputs xq_;  ///< w8a8: the current product's inputs, quantized
  std::vector<float> rope_cos_, rope_sin_;  ///< [seq_len][head_size / 2]
};

#if SPECDEC_CPU_DEFINITIONS
SPECDEC_CPU_FUNC model_weights::model_weights(std::shared_ptr<const checkpoint> ck, weight_format f)
    : source(std::move(ck)), format(f) {
  const model_config& c = source->config;
  const std::size_t dim = static_cast<std::size_t>(c.dim);
  const std::size_t hid = static_cast<std::size_t>(c.hidden_dim);
  const std::size_t kvd = static_cast<std::size_t>(c.kv_dim());
  layers.reserve(static_cast<std::size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l)
    layers.push_back({weight_matrix(source->wq(l), dim, dim, f), weight_matrix(source->wk(l), kvd, dim, f),
                      weight_matrix(source->wv(l), kvd, dim, f), weight_matrix(source->wo(l), dim, dim, f),
                      weight_matrix(source->w1(l), hid, dim, f), weight_matrix(source->w2(l), dim, hid, f),
                      weight_matrix(source->w3(l), hid, dim, f)});
  classifier = weight_matrix(source->classifier(), static_cast<std::size_t>(c.vocab_size), dim, f);
}

SPECDEC_CPU_FUNC tile_config resolve_tile_config(tile_config requested, const model_weights& w) {
  if (requested != tile_config::automatic) return requested;
  if (const char* env = std::getenv("SPECDEC_TILES"); env != nullptr && *env != '\0') {
    const tile_config c = parse_tile_config(env, "SPECDEC_TILES");
    if (c != tile_config::automatic) return c;
  }
  if (w.layers.empty()) return tile_config::t4x6;
  struct timed_choice {
    weight_format format;
    std::size_t rows, cols;
    tile_config tiles;
  };
  static std::mutex mutex;
  static std::vector<timed_choice> timed;
  const weight_matrix& w1 = w.layers[0].w1;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const timed_choice& t : timed)
    if (t.format == w.format && t.rows == w1.rows() && t.cols == w1.cols()) return t.tiles;
  std::vector<const weight_matrix*> streamed;
  std::size_t bytes = 0;
  for (const auto& l : w.layers) {
    if (bytes >= tile_timing_bytes) break;
    for (const weight_matrix* m : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w1, &l.w2, &l.w3}) {
      streamed.push_back(m);
      bytes += m->bytes();
    }
  }
  timed.push_back({w.format, w1.rows(), w1.cols(), fastest_tile_config(streamed)});
  return timed.back().tiles;
}

SPECDEC_CPU_FUNC llama_engine::llama_engine(std::shared_ptr<const checkpoint> ckpt, transformer_options options,
                                            const char* who)
    : ck_(std::move(ckpt)), options_(options) {
  if (!ck_) throw invalid_argument(std::string(who) + ": checkpoint pointer is null; expected loaded weights");
  check_kv_format(options.kv_format, std::string(who) + ": transformer_options::kv_format");
  const model_config& c = ck_->config;
  pool_ = shared_pool(options.threads);
  options_.threads = pool_->size();
  // Sizes that scale with seq_len and n_layers, checked against the limit before any
  // of them is allocated (the weights are bounded by the file's size already).
  const std::uint64_t seq = static_cast<std::uint64_t>(c.seq_len);
  const std::size_t half = static_cast<std::size_t>(c.head_size() / 2);
  std::uint64_t att = 0, rope = 0;
  memory_limit_ = options.memory_limit != 0 ? options.memory_limit : available_memory();
  cache_bytes_ = kv_cache::bytes(static_cast<std::size_t>(c.n_layers), static_cast<std::size_t>(c.seq_len),
                                 static_cast<std::size_t>(c.kv_dim()), options.kv_format);
  const std::uint64_t unbounded = std::numeric_limits<std::uint64_t>::max() / 16;  // 4 * (att + rope) fits
  if (!checked_product(seq, static_cast<std::uint64_t>(c.n_heads / c.n_kv_heads), pool_->size(), unbounded, att) ||
      !checked_product(seq, half, 2, unbounded, rope))
    att = rope = unbounded;
  scratch_bytes_ = 4 * (att + rope);
  check_memory(0);
  weights_ = shared_model_weights(ck_, options.format);
  options_.tiles = resolve_tile_config(options.tiles, *weights_);
  // Attention scratch: per thread, one row of seq_len scores for each query head of a
  // KV group.
  att_.resize(static_cast<std::size_t>(att));
  // RoPE angles depend only on (position, pair): tabulate them once instead of per
  // token, layer and head (same float computation, so the same values as run.c's).
  rope_cos_.resize(static_cast<std::size_t>(c.seq_len) * half);
  rope_sin_.resize(rope_cos_.size());
  for (std::size_t pos = 0; pos < static_cast<std::size_t>(c.seq_len); ++pos)
    for (std::size_t i = 0; i < half; ++i)
      rope_angle(pos, i, static_cast<std::size_t>(c.head_size()), rope_cos_[pos * half + i],
                 rope_sin_[pos * half + i]);
  reserve_rows(std::min<std::size_t>(8, static_cast<std::size_t>(c.seq_len)));
}

SPECDEC_CPU_FUNC void llama_engine::check_memory(std::uint64_t caches) const {
  std::uint64_t need = 0;
  const bool fits = checked_product(caches, cache_bytes_, 1, memory_limit_, need) &&
                    scratch_bytes_ <= memory_limit_ - need;
  if (fits) return;
  const model_config& c = ck_->config;
  throw resource_error(
      "checkpoint '" + ck_->path + "': " + std::to_string(caches) + " KV cache(s) of n_layers " +
      std::to_string(c.n_layers) + " x seq_len " + std::to_string(c.seq_len) + " x kv_dim " +
      std::to_string(c.kv_dim()) + " in " + std::string(to_string(options_.kv_format)) + " (" +
      std::to_string(cache_bytes_) + " bytes each) and " + std::to_string(scratch_bytes_) +
      " bytes of attention and RoPE scratch exceed the memory limit of " + std::to_string(memory_limit_) +
      " bytes; expected at most that (transformer_options::memory_limit, default: the available memory; a "
      "16-bit kv_format halves the caches)");
}

SPECDEC_CPU_FUNC void llama_engine::reserve_rows(std::size_t rows) {
  if (rows <= rows_) return;
  const std::size_t cap = std::min(std::max(rows, 2 * rows_), std::max(rows, context_length()));
  const model_config& c = ck_->config;
  const std::size_t dim = static_cast<std::size_t>(c.dim);
  const std::size_t hid = static_cast<std::size_t>(c.hidden_dim);
  const std::size_t kvd = static_cast<std::size_t>(c.kv_dim());
  aligned_vector<float> x(cap * dim), xb(cap * dim), xb2(cap * dim), q(cap * dim), kk(cap * kvd), vv(cap * kvd);
  aligned_vector<float> hb(cap * hid), hb2(cap * hid), logits(cap * vocab_size());
  x_.swap(x), xb_.swap(xb), xb2_.swap(xb2), q_.swap(q), k_.swap(kk), v_.swap(vv), hb_.swap(hb), hb2_.swap(hb2);
  logits_.swap(logits);
  if (options_.format == weight_format::w8a8) xq_.reserve(cap, std::max(dim, hid));
  rows_ = cap;
}

SPECDEC_CPU_FUNC const float* llama_engine::forward_rows(std::span<const token_id> tokens,
                                                        std::span<const row_target> rows) {
  const std::size_t k = tokens.size();
  const model_config& c = ck_->config;
  const std::size_t dim = static_cast<std::size_t>(c.dim);
  const std::size_t hid = static_cast<std::size_t>(c.hidden_dim);
  const std::size_t kvd = static_cast<std::size_t>(c.kv_dim());
  const std::size_t hs = static_cast<std::size_t>(c.head_size());
  const std::size_t n_heads = static_cast<std::size_t>(c.n_heads);
  const std::size_t kv_mul = static_cast<std::size_t>(c.n_heads / c.n_kv_heads);
  const std::size_t n_kv_heads = static_cast<std::size_t>(c.n_kv_heads);
  const std::size_t vocab = vocab_size();
  const std::size_t seq = context_length();
  const float att_scale = std::sqrt(static_cast<float>(hs));
  std::size_t att_len = 0;  // sum of the rows' attention spans (for the work estimate)
  for (std::size_t t = 0; t < k; ++t) att_len += rows[t].pos + 1;

  for (std::size_t t = 0; t < k; ++t) {
    const float* e = ck_->token_embedding() + static_cast<std::size_t>(tokens[t]) * dim;
    std::copy(e, e + dim, x_.data() + t * dim);
  }

  for (int l = 0; l < c.n_layers; ++l) {
    const std::size_t ul = static_cast<std::size_t>(l);
    const model_weights::layer& L = weights_->layers[ul];
    rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_att(l), k, dim);
    const i8_inputs* xq = quantized(xb_.data(), k, dim);
    parallel_split(k * (dim + 2 * kvd) * dim, balance(k, unit_chunk),
                   {units_of(L.wq), units_of(L.wk), units_of(L.wv)}, [&](std::size_t part) {
      rows_part(splits_[0], part, L.wq, xb_.data(), k, dim, q_.data(), dim, xq);
      rows_part(splits_[1], part, L.wk, xb_.data(), k, dim, k_.data(), kvd, xq);
      rows_part(splits_[2], part, L.wv, xb_.data(), k, dim, v_.data(), kvd, xq);
    });
    // RoPE at each row's own position; then the row's key and value go to its cache.
    for (std::size_t t = 0; t < k; ++t) {
      const std::size_t r = rows[t].pos * (hs / 2);
      float* key = k_.data() + t * kvd;
      rope(q_.data() + t * dim, key, dim, kvd, hs, rope_cos_.data() + r, rope_sin_.data() + r);
      rows[t].cache->store(ul, rows[t].slot(rows[t].pos), key, v_.data() + t * kvd);
    }
    // Causal attention: row t sees positions 0..pos of its own cache. The kv_mul query
    // heads sharing a KV head are computed together, so each key and value row is read
    // once for all of them: their scores are one small matmul (keys as the weight rows,
    // the group's queries as its tokens) and their weighted value sums one pass. Work
    // is split across threads by (row, KV head) pairs, balanced one pair at a time for
    // big blocks (a batch's rows sit at different positions, so pairs differ in cost);
    // each pair is computed by one thread in the same order whatever the split, and
    // grouping changes no result. Pair i = t * n_kv_heads + g is query-head group g of
    // row t; `att` holds kv_mul rows of seq scores (one scratch per part).
    const auto attend_pair = [&](std::size_t i, float* att) {
      const std::size_t t = i / n_kv_heads, g = i % n_kv_heads;
      const kv_cache& cache = *rows[t].cache;
      const std::size_t pos = rows[t].pos;
      const std::size_t kv_off = g * hs;
      const std::size_t head_off = t * dim + g * kv_mul * hs;  // the group's first head
      // Keys and values as row streams of the cache's format (decoded to fp32 in
      // registers, exactly), so the same tile kernels and summation orders apply.
      const auto attend = [&](const auto& keys, const auto& values) {
        // Big blocks (a batch: each row reads its own cache, which the weight stream
        // has evicted) first ask for all value rows, so that their misses overlap the
        // score computation: a head's row is 256 bytes at a 512-byte stride, which the
        // hardware prefetchers follow slowly (see specdec-batch-bench,
        // bench/batch_bench.cpp). The first row of each sequence in the block asks for
        // its key rows too, before them, so that the scores do not wait for one row
        // tile's misses after another. Single tokens and verify blocks read one cache
        // that is already hot, so they skip both.
        if (k >= balanced_rows) {
          if (t == 0 || rows[t].cache != rows[t - 1].cache) {
            const auto ks = split_rows(keys, pos + 1);
            for (std::size_t p = 0; p < ks.direct; ++p)
              for (std::size_t j = 0; j < hs; j += lanes) ks.head.prefetch_line(p, j);
            for (std::size_t p = ks.direct; p <= pos; ++p)
              for (std::size_t j = 0; j < hs; j += lanes) keys.prefetch_line(p, j);
          }
          const auto split = split_rows(values, pos + 1);
          for (std::size_t p = 0; p < split.direct; ++p)
            for (std::size_t j = 0; j < hs; j += lanes) split.head.prefetch_line(p, j);
          for (std::size_t p = split.direct; p <= pos; ++p)
            for (std::size_t j = 0; j < hs; j += lanes) values.prefetch_line(p, j);
        }
        matmul_rows(keys, pos + 1, hs, q_.data() + head_off, kv_mul, hs, att, seq);
        scaled_softmax_rows(att, seq, kv_mul, pos + 1, att_scale);
        weighted_rows_sum_heads(kv_mul, att, seq, pos + 1, values, xb_.data() + head_off, hs, hs);
      };
      // A tree row reads its ancestors through its slot map (same values, same order).
      const auto attend_rows = [&](const auto& keys, const auto& values) {
        using K = std::decay_t<decltype(keys)>;
        using V = std::decay_t<decltype(values)>;
        if (rows[t].slots)
          attend(gathered_rows<K>{keys, rows[t].prefix, rows[t].slots},
                 gathered_rows<V>{values, rows[t].prefix, rows[t].slots});
        else
          attend(keys, values);
      };
      switch (cache.format()) {
        case weight_format::fp32:
          attend_rows(f32_rows{cache.key(ul, 0) + kv_off, kvd}, f32_rows{cache.value(ul, 0) + kv_off, kvd});
          break;
        case weight_format::bf16:
          attend_rows(bf16_rows{cache.key16(ul, 0) + kv_off, kvd}, bf16_rows{cache.value16(ul, 0) + kv_off, kvd});
          break;
        default:
          attend_rows(fp16_rows{cache.key16(ul, 0) + kv_off, kvd}, fp16_rows{cache.value16(ul, 0) + kv_off, kvd});
          break;
      }
    };
    parallel_split(n_heads * att_len * hs * 2, balance(k, 1), {k * n_kv_heads}, [&](std::size_t part) {
      float* att = att_.data() + part * kv_mul * seq;
      splits_[0].run(part, [&](std::size_t i0, std::size_t i1) {
        for (std::size_t i = i0; i < i1; ++i) attend_pair(i, att);
      });
    });
    xq = quantized(xb_.data(), k, dim);
    parallel_split(k * dim * dim, balance(k, unit_chunk), {units_of(L.wo)}, [&](std::size_t part) {
      rows_part(splits_[0], part, L.wo, xb_.data(), k, dim, xb2_.data(), dim, xq);
    });
    add_rows(x_.data(), xb2_.data(), k * dim);

    rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_ffn(l), k, dim);
    xq = quantized(xb_.data(), k, dim);
    // w1 and w3 in the same row chunks, each chunk's SwiGLU right after them
    // (elementwise: any split gives the same bits).
    parallel_split(k * 2 * hid * dim, balance(k, unit_chunk), {units_of(L.w1)}, [&](std::size_t part) {
      for_rows(splits_[0], part, hid, [&](std::size_t r0, std::size_t r1, bool chunked) {
        L.w1.matmul(r0, r1 - r0, xb_.data(), k, dim, hb_.data() + r0, hid, chunked, xq, options_.tiles);
        L.w3.matmul(r0, r1 - r0, xb_.data(), k, dim, hb2_.data() + r0, hid, chunked, xq, options_.tiles);
        for (std::size_t t = 0; t < k; ++t) swiglu(hb_.data() + t * hid + r0, hb2_.data() + t * hid + r0, r1 - r0);
      });
    });
    xq = quantized(hb_.data(), k, hid);
    parallel_split(k * dim * hid, balance(k, unit_chunk), {units_of(L.w2)}, [&](std::size_t part) {
      rows_part(splits_[0], part, L.w2, hb_.data(), k, hid, xb2_.data(), dim, xq);
    });
    add_rows(x_.data(), xb2_.data(), k * dim);
  }

  rmsnorm_rows(xb_.data(), x_.data(), ck_->rms_final(), k, dim);
  const i8_inputs* xq = quantized(xb_.data(), k, dim);
  parallel_split(k * vocab * dim, balance(k, unit_chunk), {units_of(weights_->classifier)}, [&](std::size_t part) {
    rows_part(splits_[0], part, weights_->classifier, xb_.data(), k, dim, logits_.data(), vocab, xq);
  });
  return logits_.data();
}
#endif  // SPECDEC_CPU_DEFINITIONS

}  // namespace detail

/// A Llama transformer over llama2.c weights (fp32 as stored, or bf16 / fp16 / q8_0
/// converted at load time, see `transformer_options`) with a preallocated KV cache,
/// multi-threaded over output rows and (row, KV head) pairs of the attention on a
/// persistent thread pool.
///
/// `forward(tokens)` runs a block of k tokens with matrix-matrix style products (each
/// weight row is streamed once per call and applied to the whole block) and returns k
/// rows of logits. Row i is bit-for-bit identical to what feeding the same tokens one at
/// a time would give (see detail/kernels.hpp for why), and `truncate(n)` followed by a
/// forward is bit-for-bit identical to a fresh model fed the same n-token prefix. It is
/// a `specdec::tree_model` too: `forward_tree` verifies a token tree in one forward, each
/// node's row bit-for-bit that of a chain forward of its path, and `keep_path` keeps the
/// accepted path. Several transformers can share one checkpoint (e.g. draft = target in
/// tests). The layer code is `detail::llama_engine`, shared with `batched_transformer` (many
/// sequences in one forward), of which this is the one-sequence case.
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
      : engine_(std::move(ckpt), options, "transformer"), cache_(engine_.make_cache()) {}

  [[nodiscard]] std::size_t vocab_size() const noexcept { return engine_.vocab_size(); }
  [[nodiscard]] std::size_t context_length() const noexcept { return engine_.context_length(); }
  [[nodiscard]] std::size_t cache_length() const noexcept { return cache_.length(); }
  [[nodiscard]] const model_config& config() const noexcept { return engine_.config(); }
  [[nodiscard]] const std::shared_ptr<const checkpoint>& weights() const noexcept { return engine_.weights(); }
  /// The options in effect (`threads` resolved to the actual thread count).
  [[nodiscard]] const transformer_options& options() const noexcept { return engine_.options(); }
  /// Bytes of weight matrices (all layers and the classifier, in the chosen format) that
  /// one forward streams, whatever its block size. Norm weights, the one embedding row
  /// per token and the KV cache are not counted (together < 1% for the bundled models).
  [[nodiscard]] std::size_t weight_bytes_per_forward() const noexcept { return engine_.weight_bytes_per_forward(); }
  /// The weight matrices converted to `options().format`: one copy per checkpoint and
  /// format in the process, shared by every transformer and batched_transformer using
  /// them (and freed with the last).
  [[nodiscard]] const std::shared_ptr<const detail::model_weights>& converted_weights() const noexcept {
    return engine_.converted_weights();
  }

  /// Appends `tokens` to the cache and returns one row of logits per token, valid until
  /// the next non-const call. An empty block gives 0 rows. Throws `token_out_of_range` or
  /// `context_overflow` before touching any state.
  specdec::logits_block forward(std::span<const specdec::token_id> tokens) {
    tree_.check_idle("transformer::forward");
    check_token_ids(tokens, vocab_size(), "transformer::forward");
    check_context(cache_.length(), tokens.size(), context_length(), "transformer::forward");
    const std::size_t k = tokens.size();
    if (k == 0) return {engine_.logits(), 0, vocab_size()};
    engine_.reserve_rows(k);  // may allocate (geometric growth); the cache is still untouched
    const std::size_t pos0 = cache_.length();
    targets_.resize(k);
    for (std::size_t t = 0; t < k; ++t) targets_[t] = {&cache_, pos0 + t};
    const float* logits = engine_.forward_rows(tokens, targets_);
    cache_.set_length(pos0 + k);
    return {logits, k, vocab_size()};
  }

  /// Keeps the first n cached tokens, in O(1). `n >= cache_length()` is a no-op (like the
  /// archetypes in specdec/testing), it never grows the cache. A pending token tree ends
  /// and none of its nodes is kept (at most the tokens cached before it).
  void truncate(std::size_t n) noexcept {
    if (tree_.active()) {
      n = std::min(n, tree_.base);
      tree_.clear();
    }
    if (n < cache_.length()) cache_.set_length(n);
  }

  /// Forwards the nodes of a token tree (`specdec::tree_model`, specdec/tree.hpp): node i
  /// has token `tokens[i]` and parent `parents[i]` (`no_parent`, or an earlier node of
  /// the pending tree, whose nodes this call extends), and row i holds its logits,
  /// bit for bit those of a chain `forward` of its root-to-node path on this model
  /// before the tree (any weight and KV format, any thread count): the weight products
  /// are the chain's block products (one row per node), a node at depth d is rotated
  /// for position b + d (b = cache length before the tree), and it attends to the b
  /// cached positions and then to its ancestors in root-to-node order, the chain's
  /// summation order. Node j of the pending tree occupies cache slot b + j, so
  /// `cache_length()` is b plus the pending nodes. Throws `token_out_of_range`,
  /// `invalid_argument` (malformed parents) or `context_overflow` before touching any
  /// state.
  ///
  /// ```cpp
  /// std::vector<specdec::token_id> tokens{450, 200, 201, 17};
  /// std::vector<std::int32_t> parents{-1, 0, 0, 1};     // 450 -> {200 -> 17, 201}
  /// auto rows = m.forward_tree(tokens, parents);       // 4 rows
  /// std::vector<std::size_t> accepted{0, 1, 3};
  /// m.keep_path(accepted);                             // cache: ... 450 200 17
  /// ```
  specdec::logits_block forward_tree(std::span<const specdec::token_id> tokens,
                                     std::span<const std::int32_t> parents) {
    constexpr const char* who = "transformer::forward_tree";
    const std::size_t n = tokens.size();
    const std::size_t first = tree_.nodes.size();  // this call's first node
    tree_.check(cache_.length(), tokens, parents, vocab_size(), context_length(), who);
    if (n == 0) return {engine_.logits(), 0, vocab_size()};
    // Allocations (may throw) before the cache changes: the row scratch, the nodes and,
    // per node off the first chain, its ancestors' slots (depth + 1 of them).
    engine_.reserve_rows(n);
    tree_.extend(cache_.length(), tokens, parents, vocab_size(), context_length(), who);
    const std::size_t b = tree_.base;
    // A node whose index is its depth has the nodes 0..d-1 as its ancestors, at the slots
    // of their positions: it reads the cache as a chain row does, through the chain's
    // code (the same values in the same order), and needs no slot map.
    const auto on_first_chain = [&](std::size_t node) { return node == tree_.nodes.depth(node); };
    std::size_t total = 0;
    for (std::size_t i = 0; i < n; ++i)
      if (!on_first_chain(first + i)) total += tree_.nodes.depth(first + i) + 1;
    try {
      slots_.resize(total);
      targets_.resize(n);
    } catch (...) {
      tree_.nodes.truncate(first);
      throw;
    }
    for (std::size_t i = 0, at = 0; i < n; ++i) {
      const std::size_t node = first + i;
      const std::size_t d = tree_.nodes.depth(node);
      if (on_first_chain(node)) {
        targets_[i] = {&cache_, b + d};
        continue;
      }
      // slots_[at + j] = slot of the node's ancestor at depth j (the node itself at j = d).
      std::size_t a = node;
      for (std::size_t j = d + 1; j-- > 0; a = static_cast<std::size_t>(tree_.nodes.parent(a))) slots_[at + j] = b + a;
      targets_[i] = {&cache_, b + d, slots_.data() + at, b};
      at += d + 1;
    }
    const float* logits = engine_.forward_rows(tokens, targets_);
    cache_.set_length(b + tree_.nodes.size());
    return {logits, n, vocab_size()};
  }

  /// Keeps the root-to-node path `path` of the pending tree (`path[0]` a root, each next
  /// node a child of the one before; empty keeps none) and ends the tree: the cache
  /// becomes the tokens before the tree plus the path's, and the model then behaves
  /// bit for bit as a fresh model fed them. Moves the path's keys and values down to
  /// their positions: O(path.size()) work. Throws `invalid_argument` (nothing changed)
  /// unless `path` is such a path (with no tree pending, only the empty path is).
  void keep_path(std::span<const std::size_t> path) {
    tree_.nodes.check_path(path, "transformer::keep_path");
    if (!tree_.active()) return;
    const std::size_t b = tree_.base;
    // path[j] >= j (a parent precedes its child), so no slot is overwritten before it is
    // read.
    for (std::size_t j = 0; j < path.size(); ++j) cache_.copy_position(b + path[j], b + j);
    cache_.set_length(b + path.size());
    tree_.clear();
  }
  /// Forgets every cached token: `truncate(0)`.
  void reset() noexcept { truncate(0); }

 private:
  detail::llama_engine engine_;
  kv_cache cache_;
  std::vector<detail::row_target> targets_;
  specdec::pending_tree tree_;       ///< the token tree forwarded since the last keep_path / truncate
  std::vector<std::size_t> slots_;   ///< forward_tree: the ancestors' slots, root first, of each node off the first chain
};

static_assert(specdec::language_model<transformer>);
static_assert(specdec::tree_model<transformer>);

}  // namespace specdec::cpu
