#pragma once
/// \file tree_drafter.hpp
/// Drafters that propose token *trees* (`tree_draft`, tree_verifier.hpp) rather than
/// chains, behind one concept, `tree_drafter`:
///
/// - `model_tree_drafter<Draft>`: a draft `tree_model` expanded best-first (EAGLE-2's
///   dynamic expansion, Li et al. 2024, arXiv 2406.16858): the open nodes whose path has
///   the highest cumulative draft probability get children first, at most `branching`
///   per node, under a node budget; each round of new nodes is forwarded in ONE
///   `forward_tree`, so drafting costs about one draft forward per level.
/// - `text_index_drafter`: ids only, no weights. It indexes the committed text (prompt
///   and generated tokens) and proposes the continuations of the longest suffix of S that
///   occurred before, several distinct continuations as branches of one trie.
/// - `combined_tree_drafter<Draft>`: the text index's branches first, then the model's
///   branches in the same tree (a shared prefix is one node; the model never proposes a
///   token a node already has as a child).
///
/// After the verifier's verdict the decoder calls `accept(path)`: a model drafter keeps
/// the accepted path in its draft's cache (`keep_path`), as far as the draft forwarded it.
///
/// ```cpp
/// specdec::model_tree_drafter drafter(little);
/// const specdec::tree_draft& d = drafter.draft(seq, {.max_nodes = 16, .max_depth = 6, .branching = 3},
///                                              params, rng);
/// specdec::tree_verdict v = verifier.verify(seq, d, params, rng);
/// drafter.accept(v.path);
/// ```
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <span>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "specdec/error.hpp"
#include "specdec/model.hpp"
#include "specdec/sampling.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/token.hpp"
#include "specdec/tree.hpp"
#include "specdec/tree_verifier.hpp"

namespace specdec {

namespace detail {
/// The sum of exp(v[i] - m) for m >= max(v) (each term in (0, 1]): the normaliser of a
/// greedy draft row, whose probabilities only rank candidate children (no law is read
/// from them). 16 lanes at a time with a polynomial exp (range-reduced to |f| <= ln 2 / 2,
/// degree 6: relative error ~2e-7 per term) instead of a libm call per token; terms below
/// exp(-87) count as exp(-87).
///
/// ```cpp
/// std::vector<float> logits{1.0f, 3.0f, 2.0f};
/// double z = specdec::detail::sum_exp_below(logits, 3.0f);  // e^-2 + 1 + e^-1
/// ```
[[nodiscard]] inline double sum_exp_below(std::span<const float> v, float m) {
  typedef float lanes __attribute__((vector_size(64), aligned(4), may_alias));
  typedef std::int32_t ints __attribute__((vector_size(64)));
  const std::size_t n16 = v.size() - v.size() % 16;
  lanes acc{};
  for (std::size_t i = 0; i < n16; i += 16) {
    lanes x = *reinterpret_cast<const lanes*>(v.data() + i) - m;
    x = x < -87.0f ? lanes{} - 87.0f : x;
    const lanes t = x * 1.44269504f;  // x = (k + f / ln 2) ln 2, k = round(t)
    const lanes y = t + 0.5f;
    ints k = __builtin_convertvector(y, ints);  // truncates: one too high where y < 0 is not whole
    k += __builtin_convertvector(k, lanes) > y;  // true = -1
    const lanes f = (t - __builtin_convertvector(k, lanes)) * 0.693147181f;
    const lanes e = 1.0f + f * (1.0f + f * (0.5f + f * (1.0f / 6 + f * (1.0f / 24 + f * (1.0f / 120 + f * (1.0f / 720))))));
    const ints bits = (k + 127) << 23;  // 2^k, k >= -126
    lanes scale;
    std::memcpy(&scale, &bits, sizeof scale);
    acc += e * scale;
  }
  double z = 0.0;
  for (int l = 0; l < 16; ++l) z += static_cast<double>(acc[l]);
  for (std::size_t i = n16; i < v.size(); ++i) z += std::exp(static_cast<double>(std::max(v[i] - m, -87.0f)));
  return z;
}
}  // namespace detail

/// What a decoder asks of a tree drafter for one step: at most `max_nodes` nodes, no
/// root-to-leaf path longer than `max_depth`, at most `branching` children per node (1 =
/// a chain). `max_nodes == 0` (or `max_depth == 0`) asks for no draft at all.
///
/// ```cpp
/// specdec::tree_request r{.max_nodes = 12, .max_depth = 5, .branching = 2};
/// ```
struct tree_request {
  std::size_t max_nodes = 0;
  std::size_t max_depth = 0;
  std::size_t branching = 1;
  bool stop_at_eos = true;  ///< propose nothing below an EOS node

  [[nodiscard]] bool drafts() const noexcept { return max_nodes > 0 && max_depth > 0; }
  /// Throws `invalid_argument` (naming `who`) for a request that drafts with branching 0.
  void check(const char* who) const {
    if (drafts() && branching == 0)
      throw invalid_argument(std::string(who) + ": tree_request.branching is 0 with max_nodes = " +
                             std::to_string(max_nodes) + "; expected >= 1 child per node (1 = a chain)");
  }
};

/// A drafter of token trees: `d.draft(S, request, params, rng)` returns the step's
/// `tree_draft` (valid until the next call), `d.accept(path)` is told which root-to-node
/// path the verifier kept, `d.reset()` starts a generation, `d.sync(S)` brings any cache
/// to S minus its last token when a generation ends. Within a generation S only grows by
/// the accepted tokens and the verifier's next token.
///
/// ```cpp
/// static_assert(specdec::tree_drafter<specdec::text_index_drafter>);
/// ```
template <class D>
concept tree_drafter =
    has_vocabulary<D> && requires(D& d, std::span<const token_id> s, const tree_request& r, const sampling_params& p,
                                  random_source& rng, std::span<const std::size_t> path) {
      { d.draft(s, r, p, rng) } -> std::same_as<const tree_draft&>;
      d.accept(path);
      d.reset();
      d.sync(s);
    };

/// A tree drafter that can say, before drafting, how promising the next draft looks:
/// `d.context(S)` (for `text_index_drafter` the length of its longest earlier match, 0:
/// none), which a `context_sizing_policy` plans by.
///
/// ```cpp
/// static_assert(specdec::context_drafter<specdec::text_index_drafter>);
/// ```
template <class D>
concept context_drafter = tree_drafter<D> && requires(D& d, std::span<const token_id> s) {
  { d.context(s) } -> std::convertible_to<std::size_t>;
};

/// Knobs of a `model_tree_drafter`.
struct model_tree_options {
  /// When sampling: draw each node's children from the draft's processed q without
  /// replacement (judged against that law: the higher acceptance); false takes the top-k
  /// of q as deterministic proposals. Greedy decoding always takes the top-k.
  bool sample_children = true;
};

/// A draft `tree_model` expanded best-first into a tree (see the file comment). Scores:
/// with top-k children, a node's cumulative draft probability (the plain softmax when
/// greedy, q when sampling); with sampled children, the i-th child of a node of
/// confidence c = max q is worth c (1 - c)^i times its parent (deep where the draft is
/// sure, bushy where it is not). A sampled child's token is drawn only when its slot is
/// chosen: its value never decides whether it is included, which would bias the law
/// `tree_draft` declares. Holds a reference to the draft model, which must outlive it.
///
/// ```cpp
/// specdec::testing::markov_model little({.vocab = 6, .seed = 3, .noise_seed = 9, .noise = 0.5f});
/// specdec::model_tree_drafter drafter(little);
/// std::vector<specdec::token_id> seq{1};
/// specdec::random_source rng(1);
/// const auto& d = drafter.draft(seq, {.max_nodes = 6, .max_depth = 3, .branching = 2}, {}, rng);
/// ```
template <tree_model Draft>
class model_tree_drafter {
 public:
  explicit model_tree_drafter(Draft& draft, model_tree_options o = {}) : draft_(draft), opt_(o) {}

  [[nodiscard]] std::size_t vocab_size() const { return static_cast<std::size_t>(draft_.vocab_size()); }
  [[nodiscard]] std::size_t context_length() const { return static_cast<std::size_t>(draft_.context_length()); }
  [[nodiscard]] Draft& model() noexcept { return draft_; }

  void reset() {
    draft_.truncate(0);
    fed_ = 0;
    pending_ = false;
  }

  const tree_draft& draft(std::span<const token_id> s, const tree_request& r, const sampling_params& params,
                          random_source& rng) {
    return draft_with(s, r, params, rng, nullptr);
  }

  /// `draft` with `seeds` first: deterministic nodes (e.g. a text index's trie, within
  /// `r.max_depth`) forwarded with the step's first forward; the model's children of any
  /// node then exclude the tokens the node already has.
  const tree_draft& draft_with(std::span<const token_id> s, const tree_request& r, const sampling_params& params,
                               random_source& rng, const token_tree* seeds) {
    constexpr const char* who = "model_tree_drafter::draft";
    r.check(who);
    if (s.empty()) throw invalid_argument(std::string(who) + ": the committed sequence is empty; expected >= 1 token");
    if (pending_) draft_.truncate(fed_);
    pending_ = false;
    const std::size_t vocab = vocab_size();
    sampled_ = !params.greedy() && opt_.sample_children;
    out_.clear(s.size(), sampled_ ? vocab : 0);
    const std::size_t n_seeds = seeds ? std::min(seeds->size(), r.max_nodes) : 0;
    // A greedy chain (one child per node, no seeds) has one open slot at a time, so no
    // score ever decides between slots: each row's argmax is all it needs, as in the
    // chain engine's greedy draft.
    argmax_only_ = params.greedy() && r.branching == 1 && n_seeds == 0;
    greedy_ = params.greedy();
    if (!r.drafts()) return out_;
    if (fed_ >= s.size()) {
      draft_.truncate(s.size() - 1);
      fed_ = s.size() - 1;
    }
    u_ = s.size() - fed_;
    out_.context_rows = u_;
    // The first forward: the unseen committed tokens as a chain, then the seeds.
    tokens_.assign(s.begin() + static_cast<std::ptrdiff_t>(fed_), s.end());
    parents_.resize(u_);
    for (std::size_t i = 0; i < u_; ++i) parents_[i] = static_cast<std::int32_t>(i) - 1;
    for (std::size_t j = 0; j < n_seeds; ++j) {
      if (seeds->depth(j) >= r.max_depth)
        throw invalid_argument(std::string(who) + ": seed node " + std::to_string(j) + " has depth " +
                               std::to_string(seeds->depth(j)) + "; expected < max_depth = " +
                               std::to_string(r.max_depth));
      tokens_.push_back(seeds->token(j));
      const std::int32_t p = seeds->parent(j);
      parents_.push_back(p == no_parent ? static_cast<std::int32_t>(u_ - 1) : p + static_cast<std::int32_t>(u_));
    }
    check_token_ids(tokens_, vocab, who);
    const logits_block first = forward(tokens_, parents_);
    pending_ = true;
    pending_nodes_ = tokens_.size();
    slots_.assign(1, slot{});
    dist_.assign(argmax_only_ || sampled_ ? 0 : vocab, 0.0f);
    dindex_.clear();
    set_row(0, first.row(u_ - 1), params, r);
    for (std::size_t j = 0; j < n_seeds; ++j) {
      const std::int32_t p = seeds->parent(j);
      add_node(seeds->token(j), p, false);
      dindex_.back() = static_cast<std::int32_t>(u_ + j);
      set_row(j + 1, first.row(u_ + j), params, r);
    }
    for (std::size_t k = 0; k < slots_.size(); ++k) refresh(k, r);

    const std::size_t width = std::max<std::size_t>(1, (r.max_nodes + r.max_depth - 1) / r.max_depth);
    while (out_.size() < r.max_nodes) {
      round_.clear();
      for (std::size_t w = 0; w < width && out_.size() < r.max_nodes; ++w) {
        std::size_t best = slots_.size();
        for (std::size_t k = 0; k < slots_.size(); ++k)
          if (slots_[k].score > 0.0 && (best == slots_.size() || slots_[k].score > slots_[best].score)) best = k;
        if (best == slots_.size()) break;
        round_.push_back(grow(best, rng, r));
      }
      if (round_.empty() || out_.size() >= r.max_nodes) break;
      // Forward the new nodes that may have children: one draft forward per round.
      tokens_.clear();
      parents_.clear();
      expand_.clear();
      for (std::size_t n : round_) {
        if (!may_have_children(n, r)) continue;
        const std::int32_t p = out_.tree.parent(n);
        expand_.push_back(n);
        tokens_.push_back(out_.tree.token(n));
        parents_.push_back(p == no_parent ? static_cast<std::int32_t>(u_ - 1) : dindex_[static_cast<std::size_t>(p)]);
      }
      if (expand_.empty()) continue;
      const logits_block rows = forward(tokens_, parents_);
      for (std::size_t i = 0; i < expand_.size(); ++i) {
        dindex_[expand_[i]] = static_cast<std::int32_t>(pending_nodes_ + i);
        set_row(expand_[i] + 1, rows.row(i), params, r);
        refresh(expand_[i] + 1, r);
      }
      pending_nodes_ += expand_.size();
    }
    return out_;
  }

  /// Keeps the accepted `path` of the last draft in the draft's cache, as far as the
  /// draft forwarded it (leaves were never forwarded).
  void accept(std::span<const std::size_t> path) {
    if (!pending_) return;
    keep_.resize(u_);
    for (std::size_t i = 0; i < u_; ++i) keep_[i] = i;
    for (std::size_t n : path) {
      if (n >= dindex_.size() || dindex_[n] < 0) break;
      keep_.push_back(static_cast<std::size_t>(dindex_[n]));
    }
    draft_.keep_path(keep_);
    fed_ = out_.position + (keep_.size() - u_);
    pending_ = false;
  }

  /// Brings the draft's cache to S minus its last token.
  void sync(std::span<const token_id> s) {
    if (pending_) draft_.truncate(fed_);
    pending_ = false;
    const std::size_t keep = s.empty() ? 0 : s.size() - 1;
    if (fed_ > keep) draft_.truncate(keep);
    else if (fed_ < keep) (void)draft_.forward(s.subspan(fed_, keep - fed_));
    fed_ = keep;
  }

 private:
  struct slot {
    double cum = 1.0;       ///< draft probability of the path to this slot's node (1 at the root)
    std::size_t depth = 0;  ///< depth of this slot's children
    bool open = false;      ///< its row is known: it may take children
    double score = 0.0;     ///< value of its next child (0 = none left)
    token_id next = 0;      ///< top-k mode: that child's token
    float conf = 0.0f;      ///< sampled mode: max q of its row; greedy: its max logit
    double z = 1.0;         ///< greedy: the sum of exp(logit - conf) over its row
    std::size_t support = 0;  ///< sampled mode: tokens with q > 0 in its row
    std::vector<token_id> kids;
  };

  logits_block forward(std::span<const token_id> tokens, std::span<const std::int32_t> parents) {
    double seconds = 0.0;
    logits_block rows;
    {
      scoped_timer t(seconds);
      rows = draft_.forward_tree(tokens, parents);
    }
    if (out_.forwards++ == 0) out_.first_seconds = seconds;
    out_.seconds += seconds;
    if (rows.rows != tokens.size() || rows.vocab != vocab_size())
      throw error("model_tree_drafter: the draft's forward_tree returned " + std::to_string(rows.rows) + " rows of " +
                  std::to_string(rows.vocab) + " logits; expected " + std::to_string(tokens.size()) + " rows of " +
                  std::to_string(vocab_size()));
    return rows;
  }

  [[nodiscard]] bool may_have_children(std::size_t node, const tree_request& r) const {
    return out_.tree.depth(node) + 1 < r.max_depth && !(r.stop_at_eos && out_.tree.token(node) == eos_token);
  }

  /// Adds node `t` under `parent` whose path is worth `cum` (its slot's score when
  /// sampled, else the parent's value times the token's draft probability).
  void add_node(token_id t, std::int32_t parent, bool is_sampled, double cum = -1.0) {
    const std::size_t ps = tree_draft::slot_of(parent);
    out_.add(t, parent, is_sampled);
    slot child;
    child.cum = cum >= 0.0 ? cum : argmax_only_ ? 1.0 : slots_[ps].cum * probability(ps, t);
    child.depth = slots_[ps].depth + 1;
    slots_[ps].kids.push_back(t);
    slots_.push_back(std::move(child));
    if (!argmax_only_ && !sampled_) dist_.resize(slots_.size() * vocab_size(), 0.0f);
    dindex_.push_back(-1);
  }

  /// Slot k's row: when sampling, the draft's q row itself (the row `tree_draft` declares;
  /// a span into it is invalidated by the next `add_node`); when greedy, the logits (the
  /// slot holds their max and normaliser); else the processed distribution.
  [[nodiscard]] std::span<float> row(std::size_t k) {
    return std::span<float>(sampled_ ? out_.q : dist_).subspan(k * vocab_size(), vocab_size());
  }

  /// The draft probability of token t after slot k (the plain softmax when greedy).
  [[nodiscard]] double probability(std::size_t k, token_id t) {
    const float x = row(k)[static_cast<std::size_t>(t)];
    return greedy_ ? std::exp(static_cast<double>(x - slots_[k].conf)) / slots_[k].z : static_cast<double>(x);
  }

  /// Stores slot k's row (see `row`; only the argmax for a greedy chain) and opens it for
  /// children when its node may have some.
  void set_row(std::size_t k, std::span<const float> logits, const sampling_params& params, const tree_request& r) {
    slots_[k].open = k == 0 || may_have_children(k - 1, r);
    if (argmax_only_) {
      slots_[k].next = argmax(logits);
      return;
    }
    const std::span<float> d = row(k);
    if (greedy_) {  // scores need p(t) of a few tokens only: keep the logits and their normaliser
      std::ranges::copy(logits, d.begin());
      slots_[k].conf = logits[static_cast<std::size_t>(argmax(logits))];
      slots_[k].z = detail::sum_exp_below(logits, slots_[k].conf);
      return;
    }
    make_distribution(logits, params, d);
    if (!sampled_) return;
    slots_[k].conf = 0.0f;
    slots_[k].support = 0;
    for (const float x : d) {
      slots_[k].conf = std::max(slots_[k].conf, x);
      slots_[k].support += x > 0.0f ? 1 : 0;
    }
  }

  /// Recomputes slot k's next child and its score.
  void refresh(std::size_t k, const tree_request& r) {
    slot& s = slots_[k];
    s.score = 0.0;
    if (!s.open || s.kids.size() >= r.branching || s.depth >= r.max_depth) return;
    if (argmax_only_) {  // the child is the argmax `set_row` stored; its value is never compared
      s.score = 1.0;
      return;
    }
    const std::span<float> d = row(k);
    if (sampled_) {
      // The value of the i-th sampled child: c (1 - c)^i with c = max q, the node's
      // confidence: a confident node's first child is likely accepted and its siblings
      // rarely needed; an uncertain one branches. It reads no drawn value, only q. A
      // child is left to draw while some token outside the node's children has q > 0.
      std::size_t taken = 0;
      for (const token_id x : s.kids) taken += d[static_cast<std::size_t>(x)] > 0.0f ? 1 : 0;
      const double c = s.conf;
      if (taken < s.support) s.score = s.cum * c * std::pow(1.0 - c, static_cast<double>(s.kids.size()));
      return;
    }
    // The best token not yet a child: the row's argmax with the children masked below
    // every value it can hold (a probability's 0, a logit's -inf).
    const float masked = greedy_ ? -std::numeric_limits<float>::infinity() : -1.0f;
    saved_.clear();
    for (const token_id x : s.kids) {
      saved_.push_back(d[static_cast<std::size_t>(x)]);
      d[static_cast<std::size_t>(x)] = masked;
    }
    const token_id best = argmax(d);
    const bool left = d[static_cast<std::size_t>(best)] != masked;
    for (std::size_t i = 0; i < s.kids.size(); ++i) d[static_cast<std::size_t>(s.kids[i])] = saved_[i];
    if (!left) return;
    const double p = probability(k, best);
    if (p > 0.0) s.next = best, s.score = s.cum * p;
  }

  /// Adds slot k's next child (drawn now when sampling) and returns its node index.
  std::size_t grow(std::size_t k, random_source& rng, const tree_request& r) {
    token_id t = slots_[k].next;
    double cum = -1.0;
    if (sampled_) {
      rest_.assign(row(k).begin(), row(k).end());
      for (token_id x : slots_[k].kids) rest_[static_cast<std::size_t>(x)] = 0.0f;
      t = sample_from(rest_, rng.uniform());
      cum = slots_[k].score;
    }
    add_node(t, k == 0 ? no_parent : static_cast<std::int32_t>(k - 1), sampled_, cum);
    refresh(k, r);
    return out_.size() - 1;
  }

  Draft& draft_;
  model_tree_options opt_;
  tree_draft out_;
  bool sampled_ = false, pending_ = false;
  bool argmax_only_ = false;       ///< greedy chain: rows give their argmax only (no dist_ rows)
  bool greedy_ = false;            ///< greedy: dist_ rows hold logits
  std::size_t fed_ = 0;            ///< committed tokens in the draft's cache outside a pending tree
  std::size_t u_ = 0;              ///< unseen committed tokens fed as the pending tree's chain
  std::size_t pending_nodes_ = 0;  ///< nodes of the draft's pending tree
  std::vector<slot> slots_;        ///< slot 0: the root; slot j + 1: node j
  std::vector<float> dist_, rest_, saved_;
  std::vector<std::int32_t> dindex_;  ///< node -> its index in the draft's pending tree (-1: not forwarded)
  std::vector<token_id> tokens_;
  std::vector<std::int32_t> parents_;
  std::vector<std::size_t> round_, expand_, keep_;
};

template <class Draft>
model_tree_drafter(Draft&) -> model_tree_drafter<Draft>;
template <class Draft>
model_tree_drafter(Draft&, model_tree_options) -> model_tree_drafter<Draft>;

/// Knobs of a `text_index_drafter`.
struct text_index_options {
  std::size_t max_ngram = 4;    ///< longest suffix of S looked up first
  std::size_t min_ngram = 1;    ///< shortest suffix tried; >= 1
  std::size_t max_matches = 8;  ///< earlier occurrences read per suffix length, most recent first
  /// How far back a match is followed (beyond `max_ngram`) to measure its length: the
  /// `context` a sizing policy reads, and the order of the longest suffix's occurrences.
  /// >= max_ngram.
  std::size_t max_match = 64;
};

/// An id-only tree drafter over the text itself (prompt lookup grown into a tree, as
/// llama.cpp's n-gram cache, vLLM's n-gram proposer and SuffixDecoding do). Index: a hash
/// of every n-gram (n = 1..max_ngram) of S to the positions where it ends, extended by
/// O(max_ngram) work per committed token. A suffix automaton would find the longest
/// match in amortised O(1) too, but listing *all* earlier occurrences of a suffix (the
/// branches) means walking its end-position set through the suffix-link tree; the hash
/// hands them over directly, most recent first, which is all a drafter of short
/// continuations needs.
///
/// `propose` looks up the suffixes of S from `max_ngram` down to `min_ngram` tokens; the
/// continuations of their earlier occurrences are inserted into a trie under the
/// request's limits, so distinct continuations become branches and shared prefixes one
/// path: the longest suffix's first, among them the one whose match reaches furthest back
/// (measured up to `max_match` tokens; ties: the most recent), then the rest most recent
/// first. A continuation that runs into the end of S repeats the text after the match (an
/// occurrence p tokens back predicts a loop of period p), so a repeat of a short line is
/// proposed beyond one period. It proposes no distribution: the verifier treats its nodes
/// as deterministic proposals (exact in greedy and sampling).
///
/// `context(S)` is the length of the furthest-reaching match (0: none): a policy with
/// `plan(context)` (`hardware_aware_tree`'s `context_bounds`) sizes the step by what
/// continuations of matches that long were accepted before; `tree_decoder` asks for it
/// before planning.
///
/// ```cpp
/// specdec::text_index_drafter lookup(/*vocab=*/32000);
/// std::size_t matched = lookup.context(seq);   // tokens of the longest earlier match
/// const specdec::token_tree& t = lookup.propose(seq, {.max_nodes = 16, .max_depth = 8, .branching = 3});
/// ```
class text_index_drafter {
 public:
  explicit text_index_drafter(std::size_t vocab, text_index_options o = {}) : vocab_(vocab), opt_(o) {
    if (vocab == 0) throw invalid_argument("text_index_drafter: vocab is 0; expected the vocabulary size (>= 1)");
    if (o.min_ngram == 0 || o.max_ngram < o.min_ngram)
      throw invalid_argument("text_index_options: expected 1 <= min_ngram <= max_ngram, got min_ngram = " +
                             std::to_string(o.min_ngram) + ", max_ngram = " + std::to_string(o.max_ngram));
    if (o.max_matches == 0) throw invalid_argument("text_index_options.max_matches is 0; expected >= 1");
    if (o.max_match < o.max_ngram)
      throw invalid_argument("text_index_options.max_match = " + std::to_string(o.max_match) +
                             "; expected >= max_ngram = " + std::to_string(o.max_ngram));
  }

  [[nodiscard]] std::size_t vocab_size() const noexcept { return vocab_; }
  /// Tokens indexed so far.
  [[nodiscard]] std::size_t indexed() const noexcept { return text_.size(); }

  void reset() {
    text_.clear();
    index_.clear();
    matched_ = no_match;
  }

  /// Brings the index up to S: appends the tokens after those indexed, or re-indexes
  /// from scratch when S does not extend the indexed text.
  void index(std::span<const token_id> s) {
    check_token_ids(s, vocab_, "text_index_drafter::index");
    if (s.size() < text_.size() || !std::ranges::equal(s.first(text_.size()), text_)) reset();
    for (std::size_t e = text_.size(); e < s.size(); ++e) {
      text_.push_back(s[e]);
      std::uint64_t h = seed;
      for (std::size_t n = 1; n <= std::min(opt_.max_ngram, e + 1); ++n) {
        h = mix(h, text_[e + 1 - n]);
        index_[h].push_back(static_cast<std::uint32_t>(e + 1));
      }
    }
  }

  /// The length of S's furthest-reaching earlier match, up to `max_match` tokens (0: no
  /// suffix of S of at least `min_ngram` tokens occurred before).
  [[nodiscard]] std::size_t context(std::span<const token_id> s) {
    index(s);
    find_matches();
    return matches_.empty() ? 0 : matches_.front().length;
  }

  /// The trie of continuations of S's matching suffixes under `r` (see the class comment).
  const token_tree& propose(std::span<const token_id> s, const tree_request& r) {
    r.check("text_index_drafter::propose");
    index(s);
    tree_.clear();
    kids_.clear();
    if (!r.drafts()) return tree_;
    find_matches();
    for (const match& m : matches_) {
      if (tree_.size() >= r.max_nodes) break;
      insert(m.end, r);
    }
    return tree_;
  }

  /// `propose` as a `tree_draft` of deterministic nodes (the `tree_drafter` interface).
  const tree_draft& draft(std::span<const token_id> s, const tree_request& r, const sampling_params&,
                          random_source&) {
    const token_tree& t = propose(s, r);
    out_.clear(s.size());
    for (std::size_t j = 0; j < t.size(); ++j) out_.add(t.token(j), t.parent(j), false);
    return out_;
  }
  void accept(std::span<const std::size_t>) noexcept {}
  void sync(std::span<const token_id>) noexcept {}

 private:
  static constexpr std::uint64_t seed = 0x9e3779b97f4a7c15ull;
  static constexpr std::size_t no_match = static_cast<std::size_t>(-1);
  static std::uint64_t mix(std::uint64_t h, token_id t) noexcept {
    h ^= static_cast<std::uint64_t>(static_cast<std::uint32_t>(t)) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
  }

  /// An earlier occurrence of a suffix of the text: where it ends (its continuation
  /// starts) and how many tokens before that agree with the text's end.
  struct match {
    std::size_t end = 0, length = 0;
  };

  /// Fills matches_ for the indexed text (once per text length): the occurrences of its
  /// suffixes from `max_ngram` down to `min_ngram` tokens, up to `max_matches` per length
  /// most recent first, the longest suffix's ordered by how far back they agree.
  void find_matches() {
    const std::size_t len = text_.size();
    if (matched_ == len) return;
    matched_ = len;
    matches_.clear();
    std::uint64_t h = seed;
    hashes_.clear();
    for (std::size_t n = 1; n <= std::min(opt_.max_ngram, len); ++n) hashes_.push_back(h = mix(h, text_[len - n]));
    const std::span<const token_id> text(text_);
    for (std::size_t n = hashes_.size(); n >= opt_.min_ngram && n >= 1; --n) {
      const auto hit = index_.find(hashes_[n - 1]);
      if (hit == index_.end()) continue;
      const std::size_t first = matches_.size();
      std::size_t used = 0;
      for (auto it = hit->second.rbegin(); it != hit->second.rend() && used < opt_.max_matches; ++it) {
        const std::size_t e = *it;
        if (e >= len || !std::ranges::equal(text.subspan(e - n, n), text.last(n)))
          continue;  // the suffix itself, or a hash collision
        ++used;
        std::size_t m = n;
        if (first == 0)  // the longest suffix's occurrences: how far back they agree
          while (m < opt_.max_match && m < e && text_[e - 1 - m] == text_[len - 1 - m]) ++m;
        matches_.push_back({e, m});
      }
      std::stable_sort(matches_.begin() + static_cast<std::ptrdiff_t>(first), matches_.end(),
                       [](const match& a, const match& b) { return a.length > b.length; });
    }
  }

  /// Adds the continuation after an occurrence ending at `e` below the root as a path,
  /// sharing existing prefixes, within the limits; past the text's end it repeats the
  /// text from `e` (period len - e).
  void insert(std::size_t e, const tree_request& r) {
    const std::size_t period = text_.size() - e;
    std::int32_t at = no_parent;
    for (std::size_t k = 0; k < r.max_depth; ++k) {
      const token_id t = text_[e + k % period];
      if (r.stop_at_eos && at != no_parent && tree_.token(static_cast<std::size_t>(at)) == eos_token) return;
      const std::size_t ks = tree_draft::slot_of(at);
      if (kids_.size() <= ks) kids_.resize(ks + 1);
      const auto found = std::ranges::find_if(kids_[ks], [&](std::size_t c) { return tree_.token(c) == t; });
      if (found != kids_[ks].end()) {
        at = static_cast<std::int32_t>(*found);
        continue;
      }
      if (tree_.size() >= r.max_nodes || kids_[ks].size() >= r.branching) return;
      const std::size_t n = tree_.add(t, at);
      kids_[ks].push_back(n);
      at = static_cast<std::int32_t>(n);
    }
  }

  std::size_t vocab_;
  text_index_options opt_;
  std::vector<token_id> text_;
  std::unordered_map<std::uint64_t, std::vector<std::uint32_t>> index_;
  std::vector<std::uint64_t> hashes_;
  std::vector<match> matches_;
  std::size_t matched_ = no_match;  ///< text length matches_ was found for
  token_tree tree_;
  std::vector<std::vector<std::size_t>> kids_;  ///< per slot (root, then node j + 1): children
  tree_draft out_;
};

/// The text index's branches and a draft model's in one tree: the index proposes first,
/// within `text_share` of the node budget; the model then expands best-first over the
/// whole tree (the index's nodes included) up to the full budget, never repeating a
/// child token a node already has.
///
/// ```cpp
/// specdec::combined_tree_drafter drafter(little, /*text_share=*/0.5);
/// const auto& d = drafter.draft(seq, {.max_nodes = 16, .max_depth = 8, .branching = 3}, params, rng);
/// ```
template <tree_model Draft>
class combined_tree_drafter {
 public:
  explicit combined_tree_drafter(Draft& draft, double text_share = 0.5, text_index_options text = {},
                                 model_tree_options model = {})
      : model_(draft, model), text_(static_cast<std::size_t>(draft.vocab_size()), text), share_(text_share) {
    if (!(text_share >= 0.0 && text_share <= 1.0))
      throw invalid_argument("combined_tree_drafter: text_share = " + std::to_string(text_share) +
                             "; expected a fraction of the node budget in [0, 1]");
  }

  [[nodiscard]] std::size_t vocab_size() const { return model_.vocab_size(); }
  [[nodiscard]] std::size_t context_length() const { return model_.context_length(); }
  [[nodiscard]] text_index_drafter& text_index() noexcept { return text_; }

  void reset() {
    model_.reset();
    text_.reset();
  }
  const tree_draft& draft(std::span<const token_id> s, const tree_request& r, const sampling_params& params,
                          random_source& rng) {
    tree_request share = r;
    share.max_nodes = static_cast<std::size_t>(std::floor(share_ * static_cast<double>(r.max_nodes)));
    const token_tree& seeds = text_.propose(s, share);
    return model_.draft_with(s, r, params, rng, &seeds);
  }
  void accept(std::span<const std::size_t> path) { model_.accept(path); }
  void sync(std::span<const token_id> s) { model_.sync(s); }

 private:
  model_tree_drafter<Draft> model_;
  text_index_drafter text_;
  double share_;
};

template <class Draft>
combined_tree_drafter(Draft&) -> combined_tree_drafter<Draft>;
template <class Draft>
combined_tree_drafter(Draft&, double) -> combined_tree_drafter<Draft>;

}  // namespace specdec
