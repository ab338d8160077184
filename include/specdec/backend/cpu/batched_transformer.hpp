#pragma once
/// \file backend/cpu/batched_transformer.hpp
/// The CPU transformer as a `specdec::batched_model`: many sequences, each with its own
/// KV cache, advanced by ONE forward whose weight products run once for all of them.
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/batch.hpp"
#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/token.hpp"

namespace specdec::cpu {

/// A batch of independent sequences over one set of Llama weights. `forward_batch(blocks)`
/// stacks the new tokens of every block into one `sum(k_i) x dim` activation matrix, so
/// every weight matrix (projections, FFN, classifier) is streamed once per step for all
/// sequences; RoPE is applied at each row's own position and each row attends to its own
/// sequence's cache. The layer code is the `transformer`'s (`detail::llama_engine`), whose
/// kernels give every row a fixed reduction order, so row j of block i equals, bit for
/// bit, the `transformer`'s row for that token fed the same sequence history, whatever
/// else is in the batch (the contract of specdec/batch.hpp).
///
/// Each sequence owns a `[n_layers][seq_len][kv_dim]` cache allocated by `add_sequence`
/// (or taken from the pool of removed sequences' caches) and returned to the pool by
/// `remove_sequence`. Options (`threads`, `format`) as for `transformer`.
///
/// ```cpp
/// specdec::cpu::batched_transformer bm("models/kjv-big.bin", {.threads = 2});
/// specdec::sequence_id a = bm.add_sequence(), b = bm.add_sequence();
/// std::vector<specdec::token_id> pa{1, 450, 200}, pb{1};
/// std::vector<specdec::sequence_block> blocks{{a, pa}, {b, pb}};
/// specdec::batch_logits out = bm.forward_batch(blocks);   // 3 + 1 rows, one weight pass
/// bm.truncate(a, 1);
/// bm.remove_sequence(b);                                  // b's cache goes to the pool
/// ```
class batched_transformer {
 public:
  /// Loads the checkpoint at `checkpoint_path` (throws `checkpoint_error`).
  explicit batched_transformer(const std::filesystem::path& checkpoint_path, transformer_options options = {})
      : batched_transformer(std::make_shared<const checkpoint>(load_checkpoint(checkpoint_path)), options) {}

  /// Runs over shared, already loaded weights (converted to `options.format` for this
  /// instance). Throws `invalid_argument` on a null pointer.
  explicit batched_transformer(std::shared_ptr<const checkpoint> ckpt, transformer_options options = {})
      : engine_(std::move(ckpt), options, "batched_transformer") {}

  [[nodiscard]] std::size_t vocab_size() const noexcept { return engine_.vocab_size(); }
  [[nodiscard]] std::size_t context_length() const noexcept { return engine_.context_length(); }
  [[nodiscard]] std::size_t sequence_count() const noexcept { return caches_.size(); }
  [[nodiscard]] const model_config& config() const noexcept { return engine_.config(); }
  [[nodiscard]] const std::shared_ptr<const checkpoint>& weights() const noexcept { return engine_.weights(); }
  /// The options in effect (`threads` resolved to the actual thread count).
  [[nodiscard]] const transformer_options& options() const noexcept { return engine_.options(); }
  /// Bytes of weight matrices one batch step streams, whatever the number of sequences.
  [[nodiscard]] std::size_t weight_bytes_per_forward() const noexcept { return engine_.weight_bytes_per_forward(); }
  /// The weight matrices converted to `options().format`: one copy per checkpoint and
  /// format in the process, shared by every transformer and batched_transformer using
  /// them (and freed with the last).
  [[nodiscard]] const std::shared_ptr<const detail::model_weights>& converted_weights() const noexcept {
    return engine_.converted_weights();
  }

  /// Starts an empty sequence (a pooled cache if one is free) and returns its id.
  /// Throws `resource_error` (nothing changes) when a new cache would take the caches
  /// of all sequences, pooled ones included, over `transformer_options::memory_limit`.
  sequence_id add_sequence() {
    return caches_.add([&] {
      auto cache = std::make_unique<kv_cache>(engine_.make_cache(allocated_ + 1));
      ++allocated_;
      return cache;
    });
  }
  /// Ends sequence `id`; its cache is zeroed (nothing of its tokens reaches the next
  /// sequence that takes it) and goes to the pool for later sequences.
  void remove_sequence(sequence_id id) {
    caches_.remove(id, "batched_transformer::remove_sequence", [](kv_cache& c) { c.wipe(); });
  }
  [[nodiscard]] std::size_t cache_length(sequence_id id) const {
    return caches_.at(id, "batched_transformer::cache_length").length();
  }
  /// Keeps the first n cached tokens of sequence `id`, in O(1); `n >= cache_length(id)`
  /// is a no-op.
  void truncate(sequence_id id, std::size_t n) {
    kv_cache& c = caches_.at(id, "batched_transformer::truncate");
    if (n < c.length()) c.set_length(n);
  }

  /// Appends each block's tokens to its sequence and returns all rows (see
  /// `batch_logits`), from one forward over the stacked rows. Throws `invalid_argument`
  /// (unknown or repeated id), `token_out_of_range` or `context_overflow` before any
  /// sequence changes.
  batch_logits forward_batch(std::span<const sequence_block> blocks) {
    constexpr const char* who = "batched_transformer::forward_batch";
    specdec::detail::check_distinct_ids(blocks, who);
    std::size_t rows = 0;
    cache_of_.clear();
    for (const auto& b : blocks) {
      kv_cache* c = &caches_.at(b.id, who);
      check_token_ids(b.tokens, vocab_size(), who);
      check_context(c->length(), b.tokens.size(), context_length(), who);
      cache_of_.push_back(c);
      rows += b.tokens.size();
    }
    // Allocations (may throw) before any cache changes.
    engine_.reserve_rows(rows);
    tokens_.resize(rows);
    targets_.resize(rows);
    offsets_.resize(blocks.size() + 1);
    offsets_[0] = 0;
    std::size_t r = 0;
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      const std::size_t pos0 = cache_of_[i]->length();
      for (std::size_t t = 0; t < blocks[i].tokens.size(); ++t, ++r) {
        tokens_[r] = blocks[i].tokens[t];
        targets_[r] = {cache_of_[i], pos0 + t};
      }
      offsets_[i + 1] = r;
    }
    if (rows == 0) return {engine_.logits(), 0, vocab_size(), offsets_};
    const float* logits = engine_.forward_rows(tokens_, targets_);
    for (std::size_t i = 0; i < blocks.size(); ++i)
      cache_of_[i]->set_length(cache_of_[i]->length() + blocks[i].tokens.size());
    return {logits, rows, vocab_size(), offsets_};
  }

 private:
  detail::llama_engine engine_;
  specdec::detail::sequence_slots<kv_cache> caches_;  ///< live sequences' caches, and the pool
  std::uint64_t allocated_ = 0;  ///< caches made so far (live and pooled: the pool keeps them)
  std::vector<kv_cache*> cache_of_;
  std::vector<token_id> tokens_;
  std::vector<detail::row_target> targets_;
  std::vector<std::size_t> offsets_;
};

static_assert(specdec::batched_model<batched_transformer>);

}  // namespace specdec::cpu
