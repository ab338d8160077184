#pragma once
/// \file batch.hpp
/// The batched model concept: one model object holding many independent sequences, each
/// with its own cache region and length, advanced together by ONE forward over ragged
/// blocks (sequence i contributes k_i >= 0 tokens). A backend implements it with a
/// kernel that reads each weight matrix once per step for all sequences; for models
/// without such a kernel, `independent_batch<M>` loops over one `language_model` per
/// sequence and is also the reference semantics every implementation must reproduce.
///
/// ## The contract a batched model must honour
/// Let `ref` be a fresh per-sequence model (the `language_model` the batched model is a
/// batch of) and let sequence `s` have been fed, across all the batch steps and
/// truncations since its `add_sequence`, the same tokens as `ref` (`ref.forward` of each
/// of `s`'s blocks in order, `ref.truncate(n)` for each `truncate(s, n)`). Then:
/// 1. Row j of block i of `forward_batch(blocks)` (where `blocks[i].id == s`) equals row j
///    of `ref.forward(blocks[i].tokens)`, whatever the other blocks of the step are (their
///    number, lengths, order, and whether they are empty), and whatever other sequences
///    were added, removed, fed or truncated before. For the CPU backend "equals" is bit
///    for bit (its reductions have a fixed summation order, see docs/architecture.md);
///    in general within float tolerance, and the typed tests (tests/test_batch.cpp) say
///    which.
/// 2. `cache_length(s)` is the number of tokens fed to `s` since it was added, minus what
///    `truncate` removed; `truncate(s, n)` with `n >= cache_length(s)` is a no-op.
/// 3. A call that throws (unknown or duplicate id, token out of range, context overflow)
///    changes no sequence's state.
/// 4. `add_sequence()` returns an id never returned before by this object (ids are not
///    recycled, so a stale id is detected); the new sequence is empty. `remove_sequence`
///    frees the sequence's cache for later sequences.
/// 5. The returned `batch_logits` view is owned by the model and valid until its next
///    non-const call.
///
/// How a backend gets the batching speedup: gather the new tokens of all blocks into one
/// `sum(k_i) x dim` activation matrix and run every weight product once for all rows
/// (each weight row is read once per step, as the CPU transformer's block forward already
/// does for one sequence's k tokens); only attention is per sequence, each row attending
/// to its own sequence's cache region up to its own position. Keeping each row's
/// reductions in a fixed order independent of the batch (as detail/kernels.hpp does for
/// block size) gives bit-for-bit equality with the per-sequence forward.
///
/// ```cpp
/// auto bm = specdec::independent_batch<specdec::testing::markov_model>(
///     [] { return specdec::testing::markov_model({.vocab = 8}); });
/// specdec::sequence_id a = bm.add_sequence(), b = bm.add_sequence();
/// std::vector<specdec::token_id> pa{1, 4, 5}, pb{1};
/// std::vector<specdec::sequence_block> blocks{{a, pa}, {b, pb}};
/// specdec::batch_logits out = bm.forward_batch(blocks);   // 3 + 1 rows
/// std::span<const float> last_of_a = out.block(0).row(2);
/// bm.truncate(a, 1);                                     // a keeps only its first token
/// bm.remove_sequence(b);                                 // b leaves the batch
/// ```
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// Identifies one sequence of a batched model; never recycled by the model that issued it.
using sequence_id = std::uint64_t;

/// One sequence's contribution to a batch step: the tokens appended to its cache (may be
/// empty: the sequence then contributes no rows).
///
/// ```cpp
/// std::vector<specdec::token_id> toks{17, 42};
/// specdec::sequence_block b{.id = seq, .tokens = toks};
/// ```
struct sequence_block {
  sequence_id id = 0;
  std::span<const token_id> tokens{};
};

/// The logits of one batch step: `rows = sum(k_i)` rows of `vocab` floats, row-major, the
/// blocks' rows in the order of the blocks. `offsets` has one entry per block plus one:
/// block i's rows are `[offsets[i], offsets[i+1])`. Owned by the model; valid until its
/// next non-const call.
///
/// ```cpp
/// specdec::batch_logits out = bm.forward_batch(blocks);
/// specdec::logits_block bi = out.block(i);      // the k_i rows of block i
/// std::span<const float> r = out.row(out.rows - 1);
/// ```
struct batch_logits {
  const float* data = nullptr;
  std::size_t rows = 0;
  std::size_t vocab = 0;
  std::span<const std::size_t> offsets{};  ///< blocks + 1 entries; offsets.back() == rows

  [[nodiscard]] std::size_t blocks() const noexcept { return offsets.empty() ? 0 : offsets.size() - 1; }
  [[nodiscard]] std::span<const float> row(std::size_t r) const noexcept { return {data + r * vocab, vocab}; }
  /// Block i's rows as a `logits_block` (0 rows for an empty block).
  [[nodiscard]] logits_block block(std::size_t i) const {
    if (i + 1 >= offsets.size())
      throw invalid_argument("batch_logits::block: block " + std::to_string(i) + " of " +
                             std::to_string(blocks()) + "; expected i < blocks()");
    return {data + offsets[i] * vocab, offsets[i + 1] - offsets[i], vocab};
  }
};

/// `m.add_sequence()` starts an empty sequence and returns its id; `m.remove_sequence(id)`
/// ends it and frees its cache; `m.sequence_count()` is the number of live sequences.
///
/// ```cpp
/// specdec::sequence_id s = bm.add_sequence();
/// bm.remove_sequence(s);
/// ```
template <class M>
concept has_sequences = requires(M& m, const M& cm, sequence_id id) {
  { m.add_sequence() } -> std::same_as<sequence_id>;
  m.remove_sequence(id);
  { cm.sequence_count() } -> std::convertible_to<std::size_t>;
};

/// `m.context_length()` is the most tokens one sequence can hold and `m.cache_length(id)`
/// how many sequence `id` holds now.
///
/// ```cpp
/// std::size_t room = bm.context_length() - bm.cache_length(s);
/// ```
template <class M>
concept has_sequence_context = requires(const M& m, sequence_id id) {
  { m.context_length() } -> std::convertible_to<std::size_t>;
  { m.cache_length(id) } -> std::convertible_to<std::size_t>;
};

/// `m.truncate(id, n)` keeps the first n cached tokens of sequence `id`; the others are
/// untouched.
///
/// ```cpp
/// bm.truncate(s, bm.cache_length(s) - 2);  // roll back two rejected drafts of s
/// ```
template <class M>
concept has_sequence_truncate = requires(M& m, sequence_id id, std::size_t n) { m.truncate(id, n); };

/// `m.forward_batch(blocks)` appends each block to its sequence's cache in ONE step and
/// returns the rows of all blocks (see `batch_logits`). Each id appears at most once.
///
/// ```cpp
/// std::vector<specdec::sequence_block> blocks{{a, ta}, {b, tb}};
/// specdec::batch_logits out = bm.forward_batch(blocks);
/// ```
template <class M>
concept has_batch_forward = requires(M& m, std::span<const sequence_block> blocks) {
  { m.forward_batch(blocks) } -> std::same_as<batch_logits>;
};

/// A model of many independent sequences with per-sequence caches, stepped together. The
/// concept a backend's batched forward implements (see the file comment for the exact
/// contract) and the one the batched decoders and the scheduler run on.
///
/// ```cpp
/// template <specdec::batched_model B>
/// void feed_all(B& bm, std::span<const specdec::sequence_block> blocks) { bm.forward_batch(blocks); }
/// ```
template <class M>
concept batched_model = has_vocabulary<M> && has_sequences<M> && has_sequence_context<M> &&
                        has_sequence_truncate<M> && has_batch_forward<M>;

namespace detail {
/// Throws `invalid_argument` naming `who` if an id appears twice among the blocks.
inline void check_distinct_ids(std::span<const sequence_block> blocks, const char* who) {
  for (std::size_t i = 0; i < blocks.size(); ++i)
    for (std::size_t j = 0; j < i; ++j)
      if (blocks[i].id == blocks[j].id)
        throw invalid_argument(std::string(who) + ": sequence " + std::to_string(blocks[i].id) +
                               " appears in blocks " + std::to_string(j) + " and " + std::to_string(i) +
                               "; expected each sequence at most once per step");
}

/// The live sequences of a batched model, each owning a T (a per-sequence model, a KV
/// cache), with ids counted from 1 and a pool of removed Ts for reuse: the bookkeeping
/// `independent_batch` and backends such as `cpu::batched_transformer` share. An unknown
/// id throws `invalid_argument` naming the caller `who`.
template <class T>
class sequence_slots {
 public:
  /// Starts a sequence holding a pooled T, or `make()` (a `std::unique_ptr<T>`) when the
  /// pool is empty; returns its id.
  template <class Make>
  sequence_id add(Make&& make) {
    std::unique_ptr<T> t;
    if (!pool_.empty()) {
      t = std::move(pool_.back());
      pool_.pop_back();
    } else {
      t = make();
    }
    const sequence_id id = next_id_;
    live_.emplace(id, std::move(t));
    ++next_id_;
    return id;
  }
  /// Ends sequence `id`: `reset(T&)` (e.g. empties its cache), then the T goes to the pool.
  template <class Reset>
  void remove(sequence_id id, const char* who, Reset&& reset) {
    auto it = find(id, who);
    pool_.reserve(pool_.size() + 1);  // so the move below cannot throw half-way
    reset(*it->second);
    pool_.push_back(std::move(it->second));
    live_.erase(it);
  }
  /// Puts an unused T into the pool (e.g. one made to learn a model's dimensions).
  void pool(std::unique_ptr<T> t) { pool_.push_back(std::move(t)); }
  [[nodiscard]] T& at(sequence_id id, const char* who) { return *find(id, who)->second; }
  [[nodiscard]] const T& at(sequence_id id, const char* who) const {
    auto it = live_.find(id);
    if (it == live_.end()) unknown(id, who);
    return *it->second;
  }
  [[nodiscard]] std::size_t size() const noexcept { return live_.size(); }

 private:
  using map = std::unordered_map<sequence_id, std::unique_ptr<T>>;
  [[noreturn]] static void unknown(sequence_id id, const char* who) {
    throw invalid_argument(std::string(who) + ": no live sequence has id " + std::to_string(id) +
                           "; expected an id returned by add_sequence and not yet removed");
  }
  typename map::iterator find(sequence_id id, const char* who) {
    auto it = live_.find(id);
    if (it == live_.end()) unknown(id, who);
    return it;
  }

  sequence_id next_id_ = 1;
  map live_;
  std::vector<std::unique_ptr<T>> pool_;
};
}  // namespace detail

/// The reference batched model: one `language_model` M per sequence, stepped one after
/// the other. It satisfies the batched contract exactly (bit for bit: each row is copied
/// from M's own forward) and is the fallback for backends without a batched kernel (it
/// reads the weights once per sequence per step, so it gives no batching speedup).
/// Removed sequences' models are kept in a pool (truncated to 0) and reused, so a
/// continuous-batching server does not reallocate caches.
///
/// ```cpp
/// auto ck = std::make_shared<const specdec::cpu::checkpoint>(specdec::cpu::load_checkpoint(path));
/// specdec::independent_batch<specdec::cpu::transformer> bm(
///     [ck] { return std::make_unique<specdec::cpu::transformer>(ck); });
/// ```
template <language_model M>
class independent_batch {
 public:
  /// `make()` returns a fresh M, by value or as `std::unique_ptr<M>`; it is called once
  /// here (to learn the vocabulary and context) and whenever the pool is empty.
  template <class Factory>
    requires std::invocable<Factory&>
  explicit independent_batch(Factory make) {
    using R = std::invoke_result_t<Factory&>;
    if constexpr (std::is_same_v<std::remove_cvref_t<R>, std::unique_ptr<M>>) {
      make_ = [f = std::move(make)]() mutable { return f(); };
    } else {
      static_assert(std::is_convertible_v<R, M>,
                    "specdec::independent_batch: the factory must return M or std::unique_ptr<M>");
      make_ = [f = std::move(make)]() mutable { return std::make_unique<M>(f()); };
    }
    auto first = make_model();
    vocab_ = static_cast<std::size_t>(first->vocab_size());
    context_ = static_cast<std::size_t>(first->context_length());
    slots_.pool(std::move(first));
  }

  [[nodiscard]] std::size_t vocab_size() const noexcept { return vocab_; }
  [[nodiscard]] std::size_t context_length() const noexcept { return context_; }
  [[nodiscard]] std::size_t sequence_count() const noexcept { return slots_.size(); }

  sequence_id add_sequence() {
    return slots_.add([&] { return make_model(); });
  }
  void remove_sequence(sequence_id id) {
    slots_.remove(id, "independent_batch::remove_sequence", [](M& m) { m.truncate(0); });
  }
  [[nodiscard]] std::size_t cache_length(sequence_id id) const {
    return static_cast<std::size_t>(slots_.at(id, "independent_batch::cache_length").cache_length());
  }
  void truncate(sequence_id id, std::size_t n) { slots_.at(id, "independent_batch::truncate").truncate(n); }

  /// The per-sequence model of `id` (e.g. to compare against a reference).
  [[nodiscard]] M& model(sequence_id id) { return slots_.at(id, "independent_batch::model"); }

  batch_logits forward_batch(std::span<const sequence_block> blocks) {
    constexpr const char* who = "independent_batch::forward_batch";
    detail::check_distinct_ids(blocks, who);
    // Validate everything before touching any sequence (contract point 3).
    std::size_t rows = 0;
    models_.clear();
    for (const auto& b : blocks) {
      M& m = slots_.at(b.id, who);
      check_token_ids(b.tokens, vocab_, who);
      check_context(static_cast<std::size_t>(m.cache_length()), b.tokens.size(), context_, who);
      models_.push_back(&m);
      rows += b.tokens.size();
    }
    offsets_.assign(1, 0);
    if (out_.size() < rows * vocab_) out_.resize(std::max(rows * vocab_, 2 * out_.size()));
    std::size_t r = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      if (!blocks[i].tokens.empty()) {
        const logits_block l = models_[i]->forward(blocks[i].tokens);
        if (l.rows != blocks[i].tokens.size() || l.vocab != vocab_)
          throw error(std::string(who) + ": the model returned " + std::to_string(l.rows) + " rows of " +
                      std::to_string(l.vocab) + "; expected " + std::to_string(blocks[i].tokens.size()) +
                      " rows of " + std::to_string(vocab_));
        std::copy(l.data, l.data + l.rows * vocab_, out_.begin() + static_cast<std::ptrdiff_t>(r * vocab_));
        r += l.rows;
      }
      offsets_.push_back(r);
    }
    return {out_.data(), rows, vocab_, offsets_};
  }

 private:
  std::unique_ptr<M> make_model() {
    auto m = make_();
    if (!m) throw invalid_argument("independent_batch: the factory returned a null model");
    return m;
  }

  std::function<std::unique_ptr<M>()> make_;
  std::size_t vocab_ = 0;
  std::size_t context_ = 0;
  detail::sequence_slots<M> slots_;
  std::vector<M*> models_;
  std::vector<std::size_t> offsets_;
  std::vector<float> out_;
};

namespace detail {
template <class R>
struct factory_model {
  using type = R;
};
template <class M>
struct factory_model<std::unique_ptr<M>> {
  using type = M;
};
}  // namespace detail

template <class Factory>
independent_batch(Factory)
    -> independent_batch<typename detail::factory_model<std::remove_cvref_t<std::invoke_result_t<Factory&>>>::type>;

/// One sequence of a batched model seen as a `language_model` (its forward is a batch
/// step with a single block), so single-sequence code (decoders, the model contract tests
/// of specdec/testing/contracts.hpp) runs on a batched backend. Holds a reference to the
/// batched model, which must outlive it; the sequence stays owned by the batched model.
///
/// ```cpp
/// specdec::sequence_id s = bm.add_sequence();
/// specdec::sequence_view one(bm, s);
/// specdec::autoregressive_decoder ar(one);
/// auto r = ar.generate(prompt);
/// ```
template <batched_model B>
class sequence_view {
 public:
  sequence_view(B& batch, sequence_id id) : batch_(&batch), id_(id) {}
  [[nodiscard]] sequence_id id() const noexcept { return id_; }
  [[nodiscard]] std::size_t vocab_size() const { return static_cast<std::size_t>(batch_->vocab_size()); }
  [[nodiscard]] std::size_t context_length() const { return static_cast<std::size_t>(batch_->context_length()); }
  [[nodiscard]] std::size_t cache_length() const { return static_cast<std::size_t>(batch_->cache_length(id_)); }
  logits_block forward(std::span<const token_id> tokens) {
    const sequence_block b{id_, tokens};
    return batch_->forward_batch(std::span<const sequence_block>(&b, 1)).block(0);
  }
  void truncate(std::size_t n) { batch_->truncate(id_, n); }

 private:
  B* batch_;
  sequence_id id_;
};

}  // namespace specdec
