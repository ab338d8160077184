#pragma once
/// \file tree_verifier.hpp
/// Verifying a token tree in one target forward, as values: a `tree_draft` (the drafted
/// tree, and for sampling the exact draft distribution each sampled child was drawn
/// from), a sibling rule that picks among the candidate children of one node
/// (`recursive_rejection_sampling`), and `tree_verifier`, which forwards the committed
/// tokens the target has not seen plus the whole tree in ONE `forward_tree`, walks down
/// from the root choosing the accepted child level by level, and keeps exactly the
/// accepted path in the target's cache (`keep_path`).
///
/// - Greedy (temperature 0): the accepted path is the longest root-to-node path whose
///   every token is the target's first argmax after its parent; `next` is the argmax
///   after the path. The output is the target's own greedy output, token for token.
/// - Sampling: at each node the sibling rule runs multi-draft speculative sampling over
///   the node's children; the emitted tokens follow the target's distribution exactly.
///
/// ```cpp
/// specdec::tree_verifier v(target);                     // recursive_rejection_sampling
/// specdec::tree_verdict r = v.verify(seq, draft, params, rng);
/// // S grows by the tokens of r.path, then r.next
/// ```
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/rollback.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"
#include "specdec/tree.hpp"

namespace specdec {

/// One step's drafted token tree after the committed sequence S (`position == |S|`).
/// Node i is either *sampled* (`sampled[i] != 0`: drawn from its parent's draft row q
/// with the tokens of all its earlier siblings removed and the rest renormalised, i.e.
/// sampling without replacement in sibling order) or *deterministic* (chosen by any rule
/// that does not read the verifier's random draws: top-k of a draft, a text index).
/// `q` holds `tree.size() + 1` rows of `vocab` (row 0: the draft's processed
/// distribution after S, the roots' parent; row j + 1: after node j); only the rows of
/// parents of sampled nodes are read, and `q` may be empty when no node is sampled.
///
/// ```cpp
/// specdec::tree_draft d;
/// d.position = seq.size();
/// auto a = d.add(17);                 // a deterministic root
/// d.add(42, static_cast<std::int32_t>(a));
/// assert(d.size() == 2 && !d.has_distributions());
/// ```
struct tree_draft {
  token_tree tree;
  std::vector<std::uint8_t> sampled;  ///< per node: 1 = drawn from the parent's q row
  std::vector<float> q;               ///< (size() + 1) x vocab, or empty
  std::size_t vocab = 0;              ///< columns of q (0 when q is empty)
  std::size_t position = 0;           ///< |S| when the tree is verified
  std::size_t forwards = 0;           ///< draft forwards that built the tree (telemetry)
  double seconds = 0.0;               ///< their wall time (telemetry)
  /// Of `seconds`, the first draft forward's (telemetry): it reads the draft's weights back
  /// after the target's forward streamed its own through the caches, so on a host whose
  /// caches hold neither model whole it costs more than a later one.
  double first_seconds = 0.0;
  /// Committed tokens the first draft forward took before the tree's nodes (telemetry):
  /// 1 or 2 after a step that drafted (its next token, an accepted leaf never
  /// forwarded), more after steps that drafted nothing or at a generation's start.
  std::size_t context_rows = 0;

  [[nodiscard]] std::size_t size() const noexcept { return tree.size(); }
  [[nodiscard]] bool empty() const noexcept { return tree.empty(); }
  [[nodiscard]] bool has_distributions() const noexcept { return !q.empty(); }
  /// The q row of the parent slot of a node whose parent is `parent` (`no_parent` = row 0).
  [[nodiscard]] static std::size_t slot_of(std::int32_t parent) noexcept {
    return parent == no_parent ? 0 : static_cast<std::size_t>(parent) + 1;
  }
  [[nodiscard]] std::span<const float> q_row(std::size_t slot) const {
    return std::span<const float>(q).subspan(slot * vocab, vocab);
  }

  /// Adds a node (see `token_tree::add`); grows `q` by a zero row when it holds rows.
  std::size_t add(token_id token, std::int32_t parent = no_parent, bool is_sampled = false) {
    const std::size_t n = tree.add(token, parent);
    sampled.push_back(is_sampled ? 1 : 0);
    if (vocab > 0) q.resize((size() + 1) * vocab, 0.0f);
    return n;
  }
  /// Empties the tree (and q) for a new step at `pos`; q gets rows of `columns` (0 = none).
  void clear(std::size_t pos, std::size_t columns = 0) {
    tree.clear();
    sampled.clear();
    vocab = columns;
    q.assign(columns, 0.0f);
    position = pos;
    forwards = 0;
    seconds = 0.0;
    first_seconds = 0.0;
    context_rows = 0;
  }

  /// Throws `invalid_argument` or `token_out_of_range` (prefixed with `who`) unless the
  /// shape fits a vocabulary of `v`: one sampled flag per node, ids in range, and q rows
  /// of `v` columns for every node plus the root whenever a node is sampled.
  void check(std::size_t v, const char* who) const {
    tree.check_tokens(v, who);
    if (sampled.size() != size())
      throw invalid_argument(std::string(who) + ": the tree draft has " + std::to_string(sampled.size()) +
                             " sampled flags for " + std::to_string(size()) + " nodes; expected one per node");
    if (std::ranges::none_of(sampled, [](std::uint8_t s) { return s != 0; })) return;
    if (vocab != v || q.size() != (size() + 1) * v)
      throw invalid_argument(std::string(who) + ": the tree draft has sampled nodes but " +
                             std::to_string(q.size()) + " q values of " + std::to_string(vocab) +
                             " columns; expected (nodes + 1) x vocab = " + std::to_string(size() + 1) + " x " +
                             std::to_string(v));
  }
};

/// What a sibling rule reads at one node: the target's processed distribution p after the
/// node, its candidate children in sibling order, which of them were sampled, and the
/// draft row q they were sampled from (empty when none is).
///
/// ```cpp
/// specdec::sibling_input in{p, candidates, sampled, q_row, &rng};
/// specdec::sibling_result r = specdec::recursive_rejection_sampling{}.select(in);
/// ```
struct sibling_input {
  std::span<const float> p;
  std::span<const token_id> candidates;
  std::span<const std::uint8_t> sampled;
  std::span<const float> q;
  random_source* rng = nullptr;
};

/// The rule's answer: candidate `accepted` (an index into `candidates`) is emitted and
/// the walk goes on below it; `accepted == candidates.size()` means none was, and `next`
/// (drawn by the rule) is emitted instead and ends the step.
struct sibling_result {
  std::size_t accepted = 0;
  token_id next = 0;
};

/// Multi-draft speculative sampling over sibling candidates: recursive rejection
/// sampling (Jeon et al. 2024, "Recursive Speculative Decoding: Accelerating LLM
/// Inference via Sampling Without Replacement", arXiv 2402.14160; SpecInfer's
/// multi-step speculative sampling, Miao et al. 2024, arXiv 2305.09781, is the same
/// recursion with replacement).
///
/// Candidate i is judged against the residual r_i (r_0 = p) with its proposal law q_i:
/// for a sampled candidate, the parent's q with all earlier siblings' tokens removed and
/// renormalised (how `tree_draft` says it was drawn); for a deterministic one, a point
/// mass at its token. Accept with probability min(1, r_i(x) / q_i(x)); on rejection
/// r_{i+1} = normalise(max(0, r_i - q_i)); when all are rejected, draw from the last
/// residual. Invariant: given everything drafted and decided before candidate i, the
/// token this node emits (an accepted candidate or the final draw) has law r_i, because
/// x_i ~ q_i independently of the verifier's draws and one rejection step of r_i against
/// q_i, followed by anything with law r_{i+1}, emits r_i; by induction it emits p. A
/// deterministic candidate is thus accepted with probability r_i(x) and removed from the
/// residual, so id-only proposals keep the target's law too.
///
/// Randomness: one `rng.uniform()` per acceptance test whose outcome is random and one
/// for the final draw when the residual has more than one token; greedy (one-hot p)
/// consumes none.
///
/// ```cpp
/// specdec::recursive_rejection_sampling rule;
/// specdec::sibling_result r = rule.select(in);
/// ```
struct recursive_rejection_sampling {
  static constexpr bool exact = true;

  [[nodiscard]] sibling_result select(const sibling_input& in) const {
    const std::size_t vocab = in.p.size();
    residual_.assign(in.p.begin(), in.p.end());
    float mass = 0.0f;
    for (float x : residual_) mass += x;
    for (std::size_t i = 0; i < in.candidates.size(); ++i) {
      const auto x = static_cast<std::size_t>(in.candidates[i]);
      proposal(in, i, vocab);
      const float qx = proposal_[x];
      if (!(qx > 0.0f))
        throw invalid_argument("recursive_rejection_sampling: sampled candidate " + std::to_string(x) +
                               " (sibling " + std::to_string(i) +
                               ") has draft probability 0 once its earlier siblings are removed; expected > 0 "
                               "(a sampled child must be drawn from its parent's q without replacement)");
      const float rx = residual_[x] / mass;
      if (rx >= qx) return {i, in.candidates[i]};
      if (rx > 0.0f && in.rng->uniform() * static_cast<double>(qx) < static_cast<double>(rx))
        return {i, in.candidates[i]};
      float next_mass = 0.0f;
      for (std::size_t y = 0; y < vocab; ++y) {
        residual_[y] = std::max(0.0f, residual_[y] / mass - proposal_[y]);
        next_mass += residual_[y];
      }
      mass = next_mass;
      if (!(mass > 0.0f)) {  // rounding emptied a residual that has mass in exact arithmetic
        residual_.assign(in.p.begin(), in.p.end());
        mass = 1.0f;
      }
    }
    return {in.candidates.size(), detail::rollback_impl::draw(residual_, *in.rng)};
  }

 private:
  /// q_i into proposal_: a point mass, or q without the earlier siblings, renormalised.
  void proposal(const sibling_input& in, std::size_t i, std::size_t vocab) const {
    proposal_.assign(vocab, 0.0f);
    if (in.sampled[i] == 0) {
      proposal_[static_cast<std::size_t>(in.candidates[i])] = 1.0f;
      return;
    }
    std::copy(in.q.begin(), in.q.end(), proposal_.begin());
    for (std::size_t j = 0; j < i; ++j) proposal_[static_cast<std::size_t>(in.candidates[j])] = 0.0f;
    float z = 0.0f;
    for (float v : proposal_) z += v;
    if (z > 0.0f)
      for (float& v : proposal_) v /= z;
  }

  mutable std::vector<float> residual_, proposal_;
};

/// `r.select(in)` picks among one node's candidate children (see `sibling_input`);
/// `R::exact` says whether the emitted tokens keep the target's law.
///
/// ```cpp
/// static_assert(specdec::sibling_rule<specdec::recursive_rejection_sampling>);
/// ```
template <class R>
concept sibling_rule = requires(const R& r, const sibling_input& in) {
  { r.select(in) } -> std::same_as<sibling_result>;
  { R::exact } -> std::convertible_to<bool>;
};

/// The outcome of verifying one tree: the accepted root-to-node path (node indices of
/// the draft's tree, root first), then `next` (the token after the path), and what the
/// target pass cost.
///
/// ```cpp
/// for (std::size_t n : v.path) seq.push_back(draft.tree.token(n));
/// seq.push_back(v.next);
/// ```
struct tree_verdict {
  std::vector<std::size_t> path;
  token_id next = 0;
  std::size_t target_rows = 0;
  double target_seconds = 0.0;
  [[nodiscard]] std::size_t accepted() const noexcept { return path.size(); }
};

/// A `tree_model` target in this process: `verify(S, d, params, rng)` forwards
/// `S[held, |S|)` (the committed tokens the target has not seen, at least the last one)
/// as a chain of tree nodes followed by the draft's tree, in ONE `forward_tree`; walks
/// from the root (greedy: the child equal to the target's argmax; sampling: the sibling
/// rule) and keeps the accepted path with `keep_path`, so the target then holds S plus
/// the accepted tokens (the next token is fed at the start of the next call). Holds a
/// reference to the target, which must outlive it.
///
/// ```cpp
/// specdec::testing::markov_model target({.vocab = 6, .seed = 3});
/// specdec::tree_verifier v(target);
/// v.reset();
/// specdec::tree_draft d;
/// d.clear(/*pos=*/1);
/// d.add(2);
/// specdec::random_source rng(1);
/// std::vector<specdec::token_id> seq{1};
/// specdec::tree_verdict r = v.verify(seq, d, {}, rng);   // greedy
/// ```
template <tree_model Target, sibling_rule Rule = recursive_rejection_sampling>
class tree_verifier {
 public:
  static constexpr bool exact = static_cast<bool>(Rule::exact);

  explicit tree_verifier(Target& target, Rule rule = {}) : target_(target), rule_(std::move(rule)) {}

  [[nodiscard]] std::size_t vocab_size() const { return static_cast<std::size_t>(target_.vocab_size()); }
  [[nodiscard]] std::size_t context_length() const { return static_cast<std::size_t>(target_.context_length()); }
  [[nodiscard]] std::size_t cache_length() const { return static_cast<std::size_t>(target_.cache_length()); }
  [[nodiscard]] Target& target() noexcept { return target_; }
  [[nodiscard]] const Rule& rule() const noexcept { return rule_; }

  /// A new generation: the target's cache emptied.
  void reset() {
    target_.truncate(0);
    fed_ = 0;
  }

  tree_verdict verify(std::span<const token_id> s, const tree_draft& d, const sampling_params& params,
                      random_source& rng) {
    constexpr const char* who = "tree_verifier::verify";
    const std::size_t vocab = vocab_size();
    if (d.position != s.size() || s.size() <= fed_)
      throw invalid_argument(std::string(who) + ": the tree draft is at position " + std::to_string(d.position) +
                             " after " + std::to_string(s.size()) + " committed tokens of which the target holds " +
                             std::to_string(fed_) + "; expected position == committed > held");
    d.check(vocab, who);
    check_token_ids(s.subspan(fed_), vocab, who);
    // Nodes 0..u-1: the unseen committed tokens as a chain; then the draft's nodes.
    const std::size_t u = s.size() - fed_;
    tokens_.assign(s.begin() + static_cast<std::ptrdiff_t>(fed_), s.end());
    parents_.resize(u);
    for (std::size_t i = 0; i < u; ++i) parents_[i] = static_cast<std::int32_t>(i) - 1;
    for (std::size_t j = 0; j < d.size(); ++j) {
      tokens_.push_back(d.tree.token(j));
      const std::int32_t p = d.tree.parent(j);
      parents_.push_back(p == no_parent ? static_cast<std::int32_t>(u - 1) : p + static_cast<std::int32_t>(u));
    }
    tree_verdict v;
    logits_block rows;
    {
      scoped_timer t(v.target_seconds);
      rows = target_.forward_tree(tokens_, parents_);
    }
    if (rows.vocab != vocab || rows.rows != tokens_.size())
      throw error(std::string(who) + ": the target's forward_tree returned " + std::to_string(rows.rows) +
                  " rows of " + std::to_string(rows.vocab) + " logits; expected " + std::to_string(tokens_.size()) +
                  " rows of " + std::to_string(vocab));
    v.target_rows = rows.rows;
    walk(d, rows, u, params, rng, v);
    // Keep the chain and the accepted path: the target then holds S plus the path.
    keep_.resize(u);
    for (std::size_t i = 0; i < u; ++i) keep_[i] = i;
    for (std::size_t n : v.path) keep_.push_back(n + u);
    target_.keep_path(keep_);
    fed_ = s.size() + v.path.size();
    return v;
  }

  /// Brings the target's cache to S minus its last token.
  void sync(std::span<const token_id> s) {
    const std::size_t keep = s.empty() ? 0 : s.size() - 1;
    if (fed_ > keep) {
      target_.truncate(keep);
    } else if (fed_ < keep) {
      (void)target_.forward(s.subspan(fed_, keep - fed_));
    }
    fed_ = keep;
  }

 private:
  /// Walks from the root: at each node, the accepted child (argmax match when greedy,
  /// the sibling rule otherwise) or the next token that ends the path.
  void walk(const tree_draft& d, const logits_block& rows, std::size_t u, const sampling_params& params,
            random_source& rng, tree_verdict& v) {
    const std::size_t vocab = rows.vocab;
    std::int32_t at = no_parent;
    for (;;) {
      const std::span<const float> logits = rows.row(at == no_parent ? u - 1 : u + static_cast<std::size_t>(at));
      children_.clear();
      for (std::size_t j = at == no_parent ? 0 : static_cast<std::size_t>(at) + 1; j < d.size(); ++j)
        if (d.tree.parent(j) == at) children_.push_back(j);
      if (params.greedy()) {
        const token_id best = argmax(logits);
        const auto hit = std::ranges::find_if(children_, [&](std::size_t c) { return d.tree.token(c) == best; });
        if (hit == children_.end()) {
          v.next = best;
          return;
        }
        v.path.push_back(*hit);
        at = static_cast<std::int32_t>(*hit);
        continue;
      }
      p_.resize(vocab);
      make_distribution(logits, params, p_);
      if (children_.empty()) {
        v.next = detail::rollback_impl::draw(p_, rng);
        return;
      }
      cand_.clear();
      flags_.clear();
      for (std::size_t c : children_) {
        cand_.push_back(d.tree.token(c));
        flags_.push_back(d.sampled[c]);
      }
      const bool any_sampled = std::ranges::any_of(flags_, [](std::uint8_t f) { return f != 0; });
      const sibling_input in{p_, cand_, flags_,
                             any_sampled ? d.q_row(tree_draft::slot_of(at)) : std::span<const float>{}, &rng};
      const sibling_result r = rule_.select(in);
      if (r.accepted > cand_.size() || (r.accepted == cand_.size() && (r.next < 0 || static_cast<std::size_t>(r.next) >= vocab)))
        throw error("tree_verifier: the sibling rule returned accepted = " + std::to_string(r.accepted) +
                    ", next = " + std::to_string(r.next) + "; expected accepted <= " + std::to_string(cand_.size()) +
                    " and 0 <= next < " + std::to_string(vocab));
      if (r.accepted == cand_.size()) {
        v.next = r.next;
        return;
      }
      v.path.push_back(children_[r.accepted]);
      at = static_cast<std::int32_t>(children_[r.accepted]);
    }
  }

  Target& target_;
  Rule rule_;
  std::size_t fed_ = 0;  ///< tokens of S in the target's cache
  std::vector<token_id> tokens_, cand_;
  std::vector<std::int32_t> parents_;
  std::vector<std::size_t> keep_, children_;
  std::vector<std::uint8_t> flags_;
  std::vector<float> p_;
};

template <class Target>
tree_verifier(Target&) -> tree_verifier<Target>;
template <class Target, class Rule>
tree_verifier(Target&, Rule) -> tree_verifier<Target, Rule>;

}  // namespace specdec
