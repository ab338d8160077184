#pragma once
/// \file tree.hpp
/// Token trees: the `tree_model` refinement of `language_model` (verify many candidate
/// continuations in one forward, then keep the accepted path), the `token_tree` value
/// type that holds a tree's tokens and topology, and `measure_verify_cost`, which times
/// what a block of n chain tokens or tree nodes costs a model against one token.
///
/// A tree forward appends n nodes to the model's cache. Node i carries a token and the
/// index of its parent (`parents[i] < i`, or `no_parent` for a child of the last token
/// cached before the tree), and its logits are conditioned on the cache before the tree
/// plus its own ancestors, root first: exactly what a chain forward of its root-to-node
/// path would give. Consecutive tree forwards extend one *pending tree*, so a drafter can
/// expand it level by level; `keep_path` then keeps one root-to-node path of it and ends
/// the tree.
#include <algorithm>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/token.hpp"

namespace specdec {

/// The parent index of a root node: a child of the last token cached before the tree.
inline constexpr std::int32_t no_parent = -1;

/// The most nodes one tree (all forwards of a pending tree together) may hold: parent
/// indices are `std::int32_t`.
inline constexpr std::size_t max_tree_nodes = static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max());

/// Throws `invalid_argument` unless `parents` can extend a tree of `existing` nodes:
/// as many parents as `count` tokens, each `parents[i]` either `no_parent` or the index
/// of an earlier node (`0 <= parents[i] < existing + i`: the new nodes are numbered
/// from `existing` on), and at most `max_tree_nodes` nodes in all. `what` names the
/// caller for the message.
inline void check_tree_parents(std::span<const std::int32_t> parents, std::size_t count, std::size_t existing,
                               const char* what) {
  if (parents.size() != count)
    throw invalid_argument(std::string(what) + ": " + std::to_string(count) + " tokens but " +
                           std::to_string(parents.size()) + " parents; expected one parent index per token");
  if (count > max_tree_nodes || existing > max_tree_nodes - count)
    throw invalid_argument(std::string(what) + ": a tree of " + std::to_string(existing) + " + " +
                           std::to_string(count) + " nodes; expected at most " + std::to_string(max_tree_nodes));
  for (std::size_t i = 0; i < count; ++i) {
    const std::int32_t p = parents[i];
    if (p == no_parent) continue;
    if (p < 0 || static_cast<std::size_t>(p) >= existing + i)
      throw invalid_argument(std::string(what) + ": parents[" + std::to_string(i) + "] = " + std::to_string(p) +
                             " is not an earlier node of node " + std::to_string(existing + i) +
                             "; expected -1 (a root) or 0 <= parent < " + std::to_string(existing + i));
  }
}

/// A tree of candidate tokens: node i holds `token(i)` and `parent(i)` (`no_parent`, or
/// an index < i), so parents always come before their children and every prefix of the
/// nodes is itself a tree. `tokens()` and `parents()` are what `forward_tree` takes.
/// Construction and `add` validate the topology (ids are checked against a vocabulary
/// by `check_tokens`, or by the model that forwards the tree).
///
/// ```cpp
/// specdec::token_tree t;
/// auto a = t.add(17);              // root
/// auto b = t.add(42, a);           // 17 -> 42
/// auto c = t.add(7, a);            // 17 -> 7 (a sibling of 42)
/// t.add(9, b);                     // 17 -> 42 -> 9
/// specdec::logits_block out = model.forward_tree(t.tokens(), t.parents());  // 4 rows
/// model.keep_path(t.path_to(c));   // the cache gains 17, 7
/// ```
class token_tree {
 public:
  token_tree() = default;
  /// Throws `invalid_argument` unless the sizes match and every parent precedes its node.
  token_tree(std::vector<token_id> tokens, std::vector<std::int32_t> parents) {
    append(tokens, parents, "token_tree");
  }

  /// Adds a node and returns its index. Throws `invalid_argument` unless `parent` is
  /// `no_parent` or an existing node.
  std::size_t add(token_id token, std::int32_t parent = no_parent) {
    append(std::span<const token_id>(&token, 1), std::span<const std::int32_t>(&parent, 1), "token_tree::add");
    return size() - 1;
  }

  /// Appends nodes `size()..size() + tokens.size() - 1` (parents numbered over the whole
  /// tree). Validates first (`check_tree_parents`, naming `what`): on a throw the tree is
  /// unchanged.
  void append(std::span<const token_id> tokens, std::span<const std::int32_t> parents,
              const char* what = "token_tree::append") {
    check_tree_parents(parents, tokens.size(), size(), what);
    tokens_.reserve(size() + tokens.size());
    parents_.reserve(size() + tokens.size());
    depths_.reserve(size() + tokens.size());
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      const std::int32_t p = parents[i];
      depths_.push_back(p == no_parent ? 0 : depths_[static_cast<std::size_t>(p)] + 1);
      tokens_.push_back(tokens[i]);
      parents_.push_back(p);
    }
  }

  [[nodiscard]] std::size_t size() const noexcept { return tokens_.size(); }
  [[nodiscard]] bool empty() const noexcept { return tokens_.empty(); }
  [[nodiscard]] std::span<const token_id> tokens() const noexcept { return tokens_; }
  [[nodiscard]] std::span<const std::int32_t> parents() const noexcept { return parents_; }
  /// The token, parent and depth of `node` (each throws `invalid_argument` for a node
  /// index >= size()). The depth is how many ancestors the node has (0 for a root): its
  /// position after the tokens cached before the tree.
  [[nodiscard]] token_id token(std::size_t node) const { return tokens_[checked(node, "token_tree::token")]; }
  [[nodiscard]] std::int32_t parent(std::size_t node) const { return parents_[checked(node, "token_tree::parent")]; }
  [[nodiscard]] std::size_t depth(std::size_t node) const { return depths_[checked(node, "token_tree::depth")]; }
  /// The largest depth plus one (the longest root-to-leaf path), 0 when empty.
  [[nodiscard]] std::size_t height() const noexcept {
    std::size_t h = 0;
    for (std::size_t d : depths_) h = d + 1 > h ? d + 1 : h;
    return h;
  }

  /// The nodes from the root down to `node`, root first (`depth(node) + 1` of them).
  [[nodiscard]] std::vector<std::size_t> path_to(std::size_t node) const {
    std::vector<std::size_t> path(depths_[checked(node, "token_tree::path_to")] + 1);
    for (std::size_t j = path.size(), at = node; j-- > 0; at = static_cast<std::size_t>(parents_[at])) path[j] = at;
    return path;
  }
  /// The tokens of `path_to(node)`.
  [[nodiscard]] std::vector<token_id> path_tokens(std::size_t node) const {
    std::vector<token_id> out;
    for (std::size_t n : path_to(node)) out.push_back(tokens_[n]);
    return out;
  }
  /// The children of `node` in index order (O(size())).
  [[nodiscard]] std::vector<std::size_t> children(std::size_t node) const {
    return children_of(static_cast<std::int32_t>(checked(node, "token_tree::children")));
  }
  /// The roots in index order.
  [[nodiscard]] std::vector<std::size_t> roots() const { return children_of(no_parent); }

  /// True when `path` is a root-to-node path of this tree (`path[0]` a root, each next
  /// node a child of the one before); the empty path is one.
  [[nodiscard]] bool is_path(std::span<const std::size_t> path) const noexcept {
    for (std::size_t j = 0; j < path.size(); ++j) {
      if (path[j] >= size()) return false;
      const std::int32_t want = j == 0 ? no_parent : static_cast<std::int32_t>(path[j - 1]);
      if (parents_[path[j]] != want) return false;
    }
    return true;
  }
  /// Throws `invalid_argument` (naming `what`, the offending entry and the rule) unless
  /// `is_path(path)`.
  void check_path(std::span<const std::size_t> path, const char* what) const {
    for (std::size_t j = 0; j < path.size(); ++j) {
      const std::string at = std::string(what) + ": path[" + std::to_string(j) + "] = " + std::to_string(path[j]);
      if (path[j] >= size())
        throw invalid_argument(at + " is not a node of the pending tree; expected an index < " +
                               std::to_string(size()));
      const std::int32_t p = parents_[path[j]];
      if (j == 0 && p != no_parent)
        throw invalid_argument(at + " has parent " + std::to_string(p) +
                               "; expected a root (parent -1): a kept path starts at a root");
      if (j > 0 && p != static_cast<std::int32_t>(path[j - 1]))
        throw invalid_argument(at + " has parent " + std::to_string(p) + "; expected path[" +
                               std::to_string(j - 1) + "] = " + std::to_string(path[j - 1]) +
                               ": each node of a kept path is a child of the one before");
    }
  }
  /// Throws `token_out_of_range` unless every token lies in [0, vocab).
  void check_tokens(std::size_t vocab, const char* what = "token_tree") const {
    check_token_ids(tokens_, vocab, what);
  }

  /// Keeps the first n nodes (a tree again: parents precede their children).
  void truncate(std::size_t n) noexcept {
    if (n >= size()) return;
    tokens_.resize(n);
    parents_.resize(n);
    depths_.resize(n);
  }
  /// Removes every node.
  void clear() noexcept {
    tokens_.clear();
    parents_.clear();
    depths_.clear();
  }

 private:
  [[nodiscard]] std::size_t checked(std::size_t node, const char* what) const {
    if (node >= size())
      throw invalid_argument(std::string(what) + ": node " + std::to_string(node) + " does not exist; expected < " +
                             std::to_string(size()) + " (the tree's size)");
    return node;
  }
  [[nodiscard]] std::vector<std::size_t> children_of(std::int32_t node) const {
    std::vector<std::size_t> out;
    for (std::size_t i = 0; i < size(); ++i)
      if (parents_[i] == node) out.push_back(i);
    return out;
  }

  std::vector<token_id> tokens_;
  std::vector<std::int32_t> parents_;
  std::vector<std::size_t> depths_;
};

/// `m.forward_tree(tokens, parents)` forwards the nodes of a token tree in one call and
/// returns one row of logits per node (`parents[i]`: `no_parent` or an earlier node).
///
/// ```cpp
/// std::vector<specdec::token_id> tokens{17, 42, 7};
/// std::vector<std::int32_t> parents{-1, 0, 0};   // 17 -> {42, 7}
/// specdec::logits_block out = model.forward_tree(tokens, parents);  // out.rows == 3
/// ```
template <class M>
concept has_tree_forward =
    requires(M& m, std::span<const token_id> tokens, std::span<const std::int32_t> parents) {
      { m.forward_tree(tokens, parents) } -> std::same_as<logits_block>;
    };

/// `m.keep_path(path)` keeps one root-to-node path of the pending tree in the cache and
/// ends the tree.
///
/// ```cpp
/// std::vector<std::size_t> accepted{0, 2};   // 17 -> 7
/// model.keep_path(accepted);
/// ```
template <class M>
concept has_keep_path = requires(M& m, std::span<const std::size_t> path) { m.keep_path(path); };

/// A `language_model` that also verifies token trees: an optional refinement that a
/// backend opts into (the CPU `transformer` and `testing::markov_model` do). The
/// semantics every model promises (the typed contract suite
/// `SPECDEC_TREE_MODEL_CONTRACT_TESTS` of specdec/testing/contracts.hpp checks them):
///
/// - `forward_tree(tokens, parents)` appends `n = tokens.size()` nodes to the *pending
///   tree*, which starts empty at cache length `b` (the cache length when the first tree
///   forward after a `keep_path`, `truncate` or `forward` ran). Nodes are numbered over
///   the whole pending tree: a call made while `m` nodes are pending numbers its nodes
///   `m..m+n-1`, and `parents[i]` is `no_parent` (a child of the last of the `b` cached
///   tokens) or a node index `< m + i`. Row i of the result is conditioned on the `b`
///   cached tokens plus the ancestors of node `m + i`, root first, and node `m + i`
///   itself: the last row of a chain `forward` of that root-to-node path on a model
///   holding the same `b` tokens (bit for bit for the CPU transformer). Valid until the
///   next non-const call, like `forward`'s rows. n = 0 is a no-op giving 0 rows.
/// - While a tree is pending, `cache_length()` is `b` plus the number of pending nodes
///   (every node occupies one cache position, so `b + nodes <= context_length()`).
/// - `keep_path(path)` with `path` a root-to-node path of the pending tree (`path[0]` a
///   root, each next entry a child of the one before; may be empty) makes the cache `b`
///   tokens plus the path's tokens, so `cache_length() == b + path.size()`, and ends the
///   tree: the model then behaves exactly as a fresh model fed those tokens. The CPU
///   transformer does O(path.size()) work.
/// - `truncate(n)` while a tree is pending ends the tree and keeps `min(n, b)` tokens: it
///   never keeps tree nodes (that is `keep_path`'s job).
/// - `forward(tokens)` while a tree is pending throws `invalid_argument` (call `keep_path`
///   or `truncate` first).
/// - Errors leave the model unchanged: `invalid_argument` for malformed parents (see
///   `check_tree_parents`) or a malformed path, `token_out_of_range`, `context_overflow`.
///
/// ```cpp
/// template <specdec::tree_model M>
/// std::size_t accept_greedy(M& m, const specdec::token_tree& t) {
///   auto out = m.forward_tree(t.tokens(), t.parents());
///   // ... pick the accepted root-to-node path from the rows ...
///   std::vector<std::size_t> path = t.path_to(0);
///   m.keep_path(path);
///   return path.size();
/// }
/// ```
template <class M>
concept tree_model = language_model<M> && has_tree_forward<M> && has_keep_path<M>;

/// A pending tree as a model keeps it: the cache length `base` where it starts and its
/// nodes. The archetypes and the CPU transformer share its checks, so their errors read
/// alike.
///
/// ```cpp
/// specdec::pending_tree pending;
/// pending.extend(cache_length, tokens, parents, vocab, context, "my_model::forward_tree");
/// ```
struct pending_tree {
  std::size_t base = 0;  ///< cache length before the tree's first node
  token_tree nodes;      ///< the nodes forwarded since then

  [[nodiscard]] bool active() const noexcept { return !nodes.empty(); }
  /// The cache length the model reports: base plus the pending nodes.
  [[nodiscard]] std::size_t cache_length(std::size_t cached) const noexcept {
    return active() ? base + nodes.size() : cached;
  }

  /// The checks of `extend`, changing nothing.
  void check(std::size_t cached, std::span<const token_id> tokens, std::span<const std::int32_t> parents,
             std::size_t vocab, std::size_t context, const char* what) const {
    check_token_ids(tokens, vocab, what);
    check_tree_parents(parents, tokens.size(), nodes.size(), what);
    check_context(cache_length(cached), tokens.size(), context, what);
  }

  /// Validates a tree forward of `tokens` / `parents` on a model whose cache holds
  /// `cached` tokens when no tree is pending (ignored while one is), then appends the
  /// nodes (starting the tree at `cached` if none is pending). Throws `token_out_of_range`,
  /// `invalid_argument` or `context_overflow` with nothing changed.
  void extend(std::size_t cached, std::span<const token_id> tokens, std::span<const std::int32_t> parents,
              std::size_t vocab, std::size_t context, const char* what) {
    check(cached, tokens, parents, vocab, context, what);
    if (tokens.empty()) return;
    if (!active()) base = cached;
    nodes.append(tokens, parents, what);
  }

  /// Throws `invalid_argument` (naming `what`) when a tree is pending: `forward` then
  /// has no well-defined meaning.
  void check_idle(const char* what) const {
    if (active())
      throw invalid_argument(std::string(what) + ": a token tree of " + std::to_string(nodes.size()) +
                             " nodes is pending; expected keep_path(path) or truncate(n) before a chain forward");
  }

  /// Ends the tree.
  void clear() noexcept { nodes.clear(); }
};

/// What `measure_verify_cost` measured: `chain[n - 1]` and `tree[n - 1]` are the seconds
/// one forward of n chain tokens (`forward`) or n tree nodes (`forward_tree`, a binary
/// tree: node i's parent is (i - 1) / 2) took, each the minimum over the repeats.
///
/// ```cpp
/// specdec::verify_cost_curve c = specdec::measure_verify_cost(target, 16);
/// double r = c.tree_ratio(8);   // t(8 nodes) / t(1 token)
/// ```
struct verify_cost_curve {
  std::vector<double> chain;
  std::vector<double> tree;
  /// chain[n - 1] / chain[0]: what a chain block of n costs against one token.
  [[nodiscard]] double chain_ratio(std::size_t n) const { return chain.at(n - 1) / chain.at(0); }
  /// tree[n - 1] / chain[0]: what a tree of n nodes costs against one token. Throws
  /// `invalid_argument` for a curve measured without trees (`verify_cost_options::trees`).
  [[nodiscard]] double tree_ratio(std::size_t n) const {
    if (tree.empty() && !chain.empty())
      throw invalid_argument("verify_cost_curve::tree_ratio: the curve holds no trees (measured with "
                             "verify_cost_options::trees = false)");
    return tree.at(n - 1) / chain.at(0);
  }
};

/// Knobs of `measure_verify_cost`.
struct verify_cost_options {
  /// The cache length the forwards run at (attention cost grows with it); a model holding
  /// fewer tokens is first fed filler tokens up to it.
  std::size_t position = 32;
  /// Rounds over all sizes; each size's time is its minimum over the rounds (the first
  /// round, a warm-up, is not counted). At least 1.
  std::size_t repeats = 5;
  /// Also time trees (`verify_cost_curve::tree`); false: chain blocks only, `tree` left
  /// empty, in half the time (a chain policy's curve, or one forward's cost).
  bool trees = true;
};

/// Measures the verify-cost curve of `m`: for n = 1..max_n, the seconds of a chain block
/// of n tokens and of a tree of n nodes, interleaved (each round runs every size, so a
/// slow phase of a shared machine hits all sizes alike) after one warm-up round. Meant
/// for start-up, to size trees to the host: the ratios t(n) / t(1) are what a tree-sizing
/// policy needs. Leaves the cache as it found it (no tree may be pending). Throws
/// `invalid_argument` for max_n = 0, repeats = 0 or a pending tree, and
/// `context_overflow` when max(position, cache_length()) + max_n exceeds the context.
///
/// ```cpp
/// specdec::cpu::transformer target("models/kjv-big.bin", {.threads = 1});
/// auto curve = specdec::measure_verify_cost(target, 32);
/// for (std::size_t n = 1; n <= 32; ++n) std::printf("%zu %.2f\n", n, curve.tree_ratio(n));
/// ```
template <tree_model M>
verify_cost_curve measure_verify_cost(M& m, std::size_t max_n, verify_cost_options options = {}) {
  constexpr const char* who = "measure_verify_cost";
  if (max_n == 0) throw invalid_argument(std::string(who) + ": max_n is 0; expected >= 1");
  if (options.repeats == 0) throw invalid_argument(std::string(who) + ": options.repeats is 0; expected >= 1");
  const std::size_t start = static_cast<std::size_t>(m.cache_length());
  const std::size_t at = start > options.position ? start : options.position;
  check_context(at, max_n, static_cast<std::size_t>(m.context_length()), who);
  const std::size_t vocab = static_cast<std::size_t>(m.vocab_size());
  if (start < at) {
    std::vector<token_id> filler(at - start);
    for (std::size_t i = 0; i < filler.size(); ++i) filler[i] = static_cast<token_id>((i * 37 + 5) % vocab);
    (void)m.forward(filler);
  }
  std::vector<token_id> tokens(max_n);
  std::vector<std::int32_t> parents(max_n);
  for (std::size_t i = 0; i < max_n; ++i) {
    tokens[i] = static_cast<token_id>((i * 101 + 7) % vocab);
    parents[i] = i == 0 ? no_parent : static_cast<std::int32_t>((i - 1) / 2);
  }
  using clock = std::chrono::steady_clock;
  const auto seconds = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  constexpr double unset = std::numeric_limits<double>::infinity();
  verify_cost_curve out{std::vector<double>(max_n, unset), std::vector<double>(options.trees ? max_n : 0, unset)};
  for (std::size_t round = 0; round <= options.repeats; ++round) {
    for (std::size_t n = 1; n <= max_n; ++n) {
      const auto t0 = clock::now();
      (void)m.forward(std::span<const token_id>(tokens).first(n));
      const auto t1 = clock::now();
      m.truncate(at);
      if (round > 0) out.chain[n - 1] = std::min(out.chain[n - 1], seconds(t0, t1));
      if (!options.trees) continue;
      const auto t2 = clock::now();
      (void)m.forward_tree(std::span<const token_id>(tokens).first(n),
                           std::span<const std::int32_t>(parents).first(n));
      const auto t3 = clock::now();
      m.truncate(at);
      if (round > 0) out.tree[n - 1] = std::min(out.tree[n - 1], seconds(t2, t3));
    }
  }
  m.truncate(start);
  return out;
}

}  // namespace specdec
