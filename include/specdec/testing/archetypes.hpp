#pragma once
/// \file testing/archetypes.hpp
/// Minimal models of specdec's concepts, public so that users can test their own
/// policies against them.
///
/// - `minimal_model`: the least a `language_model` must have, nothing more.
/// - `markov_model`: an analytic small-vocabulary model whose next-token distribution
///   is a seeded Markov chain of order 1 or 2, so every sequence probability is known
///   exactly (`probabilities_after`). Two markov models with the same `seed` and
///   different `noise` make a draft/target pair with controllable agreement. It is also
///   a `tree_model` (specdec/tree.hpp): a node's logits are those after its path.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/token.hpp"
#include "specdec/tree.hpp"

namespace specdec::testing {

/// The smallest type that models `language_model`: uniform logits, a token counter.
struct minimal_model {
  std::size_t vocab = 4;
  std::size_t context = 64;
  std::size_t cached = 0;
  std::vector<float> buffer{};

  [[nodiscard]] std::size_t vocab_size() const { return vocab; }
  [[nodiscard]] std::size_t context_length() const { return context; }
  [[nodiscard]] std::size_t cache_length() const { return cached; }
  logits_block forward(std::span<const token_id> tokens) {
    check_token_ids(tokens, vocab, "minimal_model::forward");
    check_context(cached, tokens.size(), context, "minimal_model::forward");
    cached += tokens.size();
    buffer.assign(tokens.size() * vocab, 0.0f);
    return {buffer.data(), tokens.size(), vocab};
  }
  void truncate(std::size_t n) { cached = std::min(cached, n); }
};

/// Knobs of a `markov_model`.
struct markov_options {
  std::size_t vocab = 8;       ///< number of token ids
  int order = 1;               ///< 1 or 2: how many previous tokens the distribution reads
  std::uint64_t seed = 1;      ///< seeds the base transition logits
  float scale = 2.0f;          ///< standard deviation of the base logits (sharpness)
  std::uint64_t noise_seed = 0;  ///< seeds a perturbation added to the base logits
  float noise = 0.0f;          ///< standard deviation of that perturbation (0 = none)
  std::size_t context = 4096;  ///< context length
};

/// An order-1 or order-2 Markov chain over a small vocabulary, exposed as a
/// `language_model` and a `tree_model`. The logits after a token depend only on the last `order` tokens of
/// the cache (missing history reads as token 0), so the exact probability of any
/// continuation is a product of `probabilities_after` values.
///
/// ```cpp
/// specdec::testing::markov_model target({.vocab = 6, .seed = 3});
/// specdec::testing::markov_model draft({.vocab = 6, .seed = 3, .noise_seed = 9, .noise = 0.7f});
/// std::vector<specdec::token_id> tokens{1, 4, 5};
/// std::vector<std::int32_t> parents{-1, 0, 0};
/// auto rows = target.forward_tree(tokens, parents);   // after 1; after 1 4; after 1 5
/// std::vector<std::size_t> path{0, 2};
/// target.keep_path(path);                              // the history gains 1 5
/// ```
class markov_model {
 public:
  explicit markov_model(markov_options o = {}) : opt_(o) {
    if (o.vocab < 2) throw invalid_argument("markov_options.vocab must be >= 2, got " + std::to_string(o.vocab));
    if (o.order != 1 && o.order != 2)
      throw invalid_argument("markov_options.order must be 1 or 2, got " + std::to_string(o.order));
    if (!(o.scale >= 0.0f) || !(o.noise >= 0.0f))
      throw invalid_argument("markov_options.scale and .noise must be finite and >= 0");
    std::size_t states = o.order == 1 ? o.vocab : o.vocab * o.vocab;
    table_.resize(states * o.vocab);
    std::mt19937_64 base(o.seed);
    std::mt19937_64 pert(o.noise_seed);
    std::normal_distribution<float> n01(0.0f, 1.0f);
    for (float& x : table_) {
      float b = n01(base);
      float p = n01(pert);
      x = o.scale * b + o.noise * p;
    }
  }

  [[nodiscard]] std::size_t vocab_size() const { return opt_.vocab; }
  [[nodiscard]] std::size_t context_length() const { return opt_.context; }
  [[nodiscard]] std::size_t cache_length() const { return tree_.cache_length(history_.size()); }
  [[nodiscard]] const markov_options& options() const { return opt_; }
  /// The cached tokens outside a pending tree.
  [[nodiscard]] std::span<const token_id> history() const { return history_; }

  logits_block forward(std::span<const token_id> tokens) {
    tree_.check_idle("markov_model::forward");
    check_token_ids(tokens, opt_.vocab, "markov_model::forward");
    check_context(history_.size(), tokens.size(), opt_.context, "markov_model::forward");
    out_.resize(tokens.size() * opt_.vocab);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      history_.push_back(tokens[i]);
      auto row = logits_after(history_);
      std::copy(row.begin(), row.end(), out_.begin() + static_cast<std::ptrdiff_t>(i * opt_.vocab));
    }
    return {out_.data(), tokens.size(), opt_.vocab};
  }

  /// Ends a pending tree (its nodes are never kept) and keeps the first n tokens.
  void truncate(std::size_t n) {
    tree_.clear();
    if (n < history_.size()) history_.resize(n);
  }

  /// Appends tree nodes (see `tree_model`): row i holds the logits after the history and
  /// the path from the root down to node i, read off the last `order` tokens of it.
  logits_block forward_tree(std::span<const token_id> tokens, std::span<const std::int32_t> parents) {
    const std::size_t first = tree_.nodes.size();
    tree_.extend(history_.size(), tokens, parents, opt_.vocab, opt_.context, "markov_model::forward_tree");
    out_.resize(tokens.size() * opt_.vocab);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      // The node's token, after its parent's token (or the last cached one): the last
      // two tokens of the node's path, all that an order-2 chain reads.
      const std::int32_t p = parents[i];
      std::vector<token_id> tail;
      if (p != no_parent) tail.push_back(tree_.nodes.token(static_cast<std::size_t>(p)));
      else if (!history_.empty()) tail.push_back(history_.back());
      tail.push_back(tree_.nodes.token(first + i));
      const auto row = logits_after(tail);
      std::copy(row.begin(), row.end(), out_.begin() + static_cast<std::ptrdiff_t>(i * opt_.vocab));
    }
    return {out_.data(), tokens.size(), opt_.vocab};
  }

  /// Keeps the root-to-node path `path` of the pending tree and ends it; throws
  /// `invalid_argument` (nothing changed) unless `path` is one.
  void keep_path(std::span<const std::size_t> path) {
    tree_.nodes.check_path(path, "markov_model::keep_path");
    for (std::size_t n : path) history_.push_back(tree_.nodes.token(n));
    tree_.clear();
  }

  /// The logits after the sequence `history` (the last `order` tokens matter).
  [[nodiscard]] std::span<const float> logits_after(std::span<const token_id> history) const {
    std::size_t v = opt_.vocab;
    std::size_t a = history.empty() ? 0 : static_cast<std::size_t>(history.back());
    std::size_t state = a;
    if (opt_.order == 2) {
      std::size_t b = history.size() >= 2 ? static_cast<std::size_t>(history[history.size() - 2]) : 0;
      state = b * v + a;
    }
    return {table_.data() + state * v, v};
  }

  /// Exact next-token probabilities (softmax of the logits, in double) after `history`.
  [[nodiscard]] std::vector<double> probabilities_after(std::span<const token_id> history) const {
    auto l = logits_after(history);
    double mx = *std::max_element(l.begin(), l.end());
    std::vector<double> p(l.size());
    double z = 0;
    for (std::size_t i = 0; i < l.size(); ++i) z += p[i] = std::exp(double(l[i]) - mx);
    for (double& x : p) x /= z;
    return p;
  }

 private:
  markov_options opt_;
  std::vector<float> table_;
  std::vector<token_id> history_;
  pending_tree tree_;
  std::vector<float> out_;
};

static_assert(language_model<minimal_model>);
static_assert(language_model<markov_model>);
static_assert(tree_model<markov_model>);

}  // namespace specdec::testing
