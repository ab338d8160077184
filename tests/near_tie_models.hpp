#pragma once
// Test models whose greedy choice sits on a near-tie at every state: the target's top two
// logits are equal or one ulp apart (tests/test_exactness.cpp, tests/test_remote_verifier.cpp).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "specdec/model.hpp"
#include "specdec/token.hpp"

namespace near_ties {
using specdec::token_id;

/// An order-1 model over a table of logits: row s is the logits after token s (the
/// prompt's last token, or the last generated one).
struct table_model {
  std::size_t vocab = 0;
  std::vector<float> table{};
  std::vector<token_id> history{};
  std::vector<float> out{};

  [[nodiscard]] std::size_t vocab_size() const { return vocab; }
  [[nodiscard]] std::size_t context_length() const { return 4096; }
  [[nodiscard]] std::size_t cache_length() const { return history.size(); }
  specdec::logits_block forward(std::span<const token_id> tokens) {
    specdec::check_token_ids(tokens, vocab, "table_model::forward");
    specdec::check_context(history.size(), tokens.size(), context_length(), "table_model::forward");
    out.resize(tokens.size() * vocab);
    for (std::size_t i = 0; i < tokens.size(); ++i) {
      history.push_back(tokens[i]);
      const auto row = table.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(tokens[i]) * vocab);
      std::copy(row, row + static_cast<std::ptrdiff_t>(vocab), out.begin() + static_cast<std::ptrdiff_t>(i * vocab));
    }
    return {out.data(), tokens.size(), vocab};
  }
  void truncate(std::size_t n) { history.resize(std::min(n, history.size())); }
};
static_assert(specdec::language_model<table_model>);

/// How a state's two top logits relate.
enum class tie { equal, higher_id_one_ulp_above, lower_id_one_ulp_above };

/// A target whose every row has a near-tie at the top, of kind `tie(s % 3)` for row s, at
/// logit scales 1, 37 and 1e4 (one ulp: 1.2e-7, 3.8e-6, 9.8e-4), and a draft with the same table but
/// each tie resolved the other way (its argmax is the target's runner-up, so greedy
/// verification rejects it exactly at the ties) or, with `same_draft`, the target's table.
std::pair<table_model, table_model> near_tie_pair(std::size_t vocab, std::uint64_t seed, bool same_draft) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> n01;
  table_model target{vocab, std::vector<float>(vocab * vocab)}, draft = target;
  const float scales[] = {1.0f, 37.0f, 1e4f};
  for (std::size_t s = 0; s < vocab; ++s) {
    const float top = scales[s % 3];
    float* t = &target.table[s * vocab];
    float* d = &draft.table[s * vocab];
    for (std::size_t j = 0; j < vocab; ++j) t[j] = top - 2.0f - std::abs(n01(g));  // all clearly below the top
    std::size_t a = g() % vocab, b = g() % (vocab - 1);
    if (b >= a) ++b;
    if (a > b) std::swap(a, b);  // a < b: the two tied ids
    const float up = std::nextafter(top, 2 * top);
    std::copy(t, t + vocab, d);
    switch (static_cast<tie>(s % 3)) {
      case tie::equal:  // the first maximum, a, wins
        t[a] = t[b] = top;
        d[a] = top, d[b] = up;
        break;
      case tie::higher_id_one_ulp_above:
        t[a] = top, t[b] = up;
        d[a] = up, d[b] = top;
        break;
      case tie::lower_id_one_ulp_above:
        t[a] = up, t[b] = top;
        d[a] = top, d[b] = up;
        break;
    }
    if (same_draft) std::copy(t, t + vocab, d);
  }
  return {std::move(draft), std::move(target)};
}

}  // namespace near_ties
