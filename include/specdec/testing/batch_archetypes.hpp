#pragma once
/// \file testing/batch_archetypes.hpp
/// Test helpers for the batched model concept (specdec/batch.hpp):
///
/// - `markov_batch(options)`: `independent_batch<markov_model>`, the analytic batched model.
/// - `check_batch_against_reference(bm, make_reference, options)`: drives a batched model
///   through a seeded random scenario (sequences joining and leaving between steps,
///   per-sequence truncation, ragged blocks of random lengths including empty ones, blocks
///   in random order) next to one fresh per-sequence reference model per sequence, and
///   compares every row and every cache length. A backend's batched forward passes the
///   batched contract when this reports no mismatch (with tolerance 0 for bit-for-bit).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "specdec/batch.hpp"
#include "specdec/model.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/token.hpp"

namespace specdec::testing {

/// `independent_batch` over `markov_model`s built from `o`.
///
/// ```cpp
/// auto bm = specdec::testing::markov_batch({.vocab = 8, .order = 2, .seed = 3});
/// ```
inline independent_batch<markov_model> markov_batch(markov_options o = {}) {
  return independent_batch<markov_model>([o] { return markov_model(o); });
}

/// Knobs of `check_batch_against_reference`.
///
/// ```cpp
/// specdec::testing::batch_check_options o{.steps = 20, .max_sequences = 6, .seed = 7};
/// o.validate();
/// ```
struct batch_check_options {
  std::size_t steps = 16;          ///< batch steps to run
  std::size_t max_sequences = 5;   ///< live sequences at most
  std::size_t max_block = 6;       ///< tokens per block at most (0 .. max_block)
  std::size_t max_length = 48;     ///< a sequence never grows past this (<= context)
  double join_probability = 0.5;   ///< per step: a new sequence joins
  double leave_probability = 0.2;  ///< per step: a random live sequence leaves
  double truncate_probability = 0.3;  ///< per step and sequence: it is truncated
  float tolerance = 0.0f;          ///< 0 = rows must be bit for bit identical
  std::uint64_t seed = 1;

  void validate() const {
    auto bad = [](const char* knob, const std::string& what) {
      throw invalid_argument(std::string("batch_check_options.") + knob + " must be " + what);
    };
    if (steps == 0) bad("steps", ">= 1, got 0");
    if (max_sequences == 0) bad("max_sequences", ">= 1, got 0");
    if (max_block == 0) bad("max_block", ">= 1, got 0");
    if (max_length < 2) bad("max_length", ">= 2, got " + std::to_string(max_length));
    for (double p : {join_probability, leave_probability, truncate_probability})
      if (!(p >= 0.0 && p <= 1.0)) bad("*_probability", "in [0, 1], got " + std::to_string(p));
    if (!(tolerance >= 0.0f)) bad("tolerance", ">= 0, got " + std::to_string(tolerance));
  }
};

/// What `check_batch_against_reference` saw.
struct batch_check_report {
  std::size_t steps = 0;
  std::size_t rows_compared = 0;
  std::size_t row_mismatches = 0;      ///< rows differing (bitwise, or beyond the tolerance)
  std::size_t length_mismatches = 0;   ///< cache_length(id) != the reference's cache_length()
  float max_abs_difference = 0.0f;
  std::size_t joins = 0, leaves = 0, truncations = 0, empty_blocks = 0;
  std::size_t max_blocks_in_a_step = 0;
  std::string first_mismatch;          ///< empty when everything matched

  [[nodiscard]] bool ok() const noexcept { return row_mismatches == 0 && length_mismatches == 0; }
};

/// Runs the seeded random scenario described in the file comment on `bm` (which should
/// hold no sequences, or only ones this function may ignore), with `make_reference()`
/// returning a fresh per-sequence model (by value or `std::unique_ptr`). Every sequence
/// it adds is removed before it returns.
///
/// ```cpp
/// auto bm = specdec::testing::markov_batch(o);
/// auto rep = specdec::testing::check_batch_against_reference(
///     bm, [o] { return specdec::testing::markov_model(o); }, {.seed = 3});
/// EXPECT_TRUE(rep.ok()) << rep.first_mismatch;
/// ```
template <batched_model B, class MakeReference>
batch_check_report check_batch_against_reference(B& bm, MakeReference make_reference,
                                                 const batch_check_options& o = {}) {
  o.validate();
  using R = typename detail::factory_model<std::remove_cvref_t<decltype(make_reference())>>::type;
  auto fresh = [&]() -> std::unique_ptr<R> {
    if constexpr (std::is_same_v<std::remove_cvref_t<decltype(make_reference())>, std::unique_ptr<R>>)
      return make_reference();
    else
      return std::make_unique<R>(make_reference());
  };
  struct live {
    sequence_id id;
    std::unique_ptr<R> ref;
  };
  const std::size_t vocab = static_cast<std::size_t>(bm.vocab_size());
  const std::size_t max_len = std::min<std::size_t>(o.max_length, bm.context_length());
  std::mt19937_64 rng(o.seed);
  auto uniform = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  auto chance = [&](double p) { return static_cast<double>(rng() >> 11) * 0x1.0p-53 < p; };
  std::vector<live> seqs;
  batch_check_report rep;

  auto mismatch = [&](const std::string& what) {
    if (rep.first_mismatch.empty()) rep.first_mismatch = what;
  };
  auto join = [&] {
    seqs.push_back({bm.add_sequence(), fresh()});
    ++rep.joins;
  };
  join();
  for (std::size_t step = 0; step < o.steps; ++step) {
    if (seqs.size() < o.max_sequences && chance(o.join_probability)) join();
    if (seqs.size() > 1 && chance(o.leave_probability)) {
      const std::size_t i = uniform(seqs.size());
      bm.remove_sequence(seqs[i].id);
      seqs.erase(seqs.begin() + static_cast<std::ptrdiff_t>(i));
      ++rep.leaves;
    }
    for (auto& s : seqs) {
      const std::size_t len = static_cast<std::size_t>(s.ref->cache_length());
      if (len > 0 && chance(o.truncate_probability)) {
        const std::size_t n = uniform(len + 1);
        bm.truncate(s.id, n);
        s.ref->truncate(n);
        ++rep.truncations;
      }
    }
    // Ragged blocks, in a random order, for a random non-empty subset of the sequences.
    std::vector<std::size_t> order(seqs.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::shuffle(order.begin(), order.end(), rng);
    order.resize(1 + uniform(order.size()));
    std::vector<std::vector<token_id>> toks(order.size());
    std::vector<sequence_block> blocks;
    for (std::size_t b = 0; b < order.size(); ++b) {
      const auto& s = seqs[order[b]];
      const std::size_t room = max_len - static_cast<std::size_t>(s.ref->cache_length());
      const std::size_t k = std::min(room, uniform(o.max_block + 1));
      for (std::size_t j = 0; j < k; ++j) toks[b].push_back(static_cast<token_id>(uniform(vocab)));
      if (k == 0) ++rep.empty_blocks;
      blocks.push_back({s.id, toks[b]});
    }
    rep.max_blocks_in_a_step = std::max(rep.max_blocks_in_a_step, blocks.size());
    const batch_logits out = bm.forward_batch(blocks);
    if (out.blocks() != blocks.size()) {
      mismatch("step " + std::to_string(step) + ": " + std::to_string(out.blocks()) + " blocks returned for " +
               std::to_string(blocks.size()));
      ++rep.row_mismatches;
      break;
    }
    // Copy the batch rows before the references run (the view stays valid, but be strict).
    std::vector<float> got(out.data, out.data + out.rows * out.vocab);
    for (std::size_t b = 0; b < blocks.size(); ++b) {
      auto& s = seqs[order[b]];
      const std::size_t first = out.offsets[b];
      const std::size_t k = out.offsets[b + 1] - first;
      if (k != toks[b].size()) {
        ++rep.row_mismatches;
        mismatch("step " + std::to_string(step) + ", block " + std::to_string(b) + ": " + std::to_string(k) +
                 " rows for " + std::to_string(toks[b].size()) + " tokens");
        continue;
      }
      if (k == 0) continue;
      const logits_block want = s.ref->forward(toks[b]);
      for (std::size_t j = 0; j < k; ++j) {
        ++rep.rows_compared;
        const float* g = got.data() + (first + j) * vocab;
        const float* w = want.data + j * vocab;
        bool same = true;
        if (o.tolerance == 0.0f) {
          same = std::memcmp(g, w, vocab * sizeof(float)) == 0;
        }
        float worst = 0.0f;
        for (std::size_t v = 0; v < vocab; ++v) worst = std::max(worst, std::abs(g[v] - w[v]));
        rep.max_abs_difference = std::max(rep.max_abs_difference, worst);
        if (o.tolerance > 0.0f) same = worst <= o.tolerance;
        if (!same) {
          ++rep.row_mismatches;
          mismatch("step " + std::to_string(step) + ", block " + std::to_string(b) + " (sequence " +
                   std::to_string(s.id) + "), row " + std::to_string(j) + ": max |difference| " +
                   std::to_string(worst));
        }
      }
    }
    for (auto& s : seqs) {
      if (static_cast<std::size_t>(bm.cache_length(s.id)) != static_cast<std::size_t>(s.ref->cache_length())) {
        ++rep.length_mismatches;
        mismatch("step " + std::to_string(step) + ": sequence " + std::to_string(s.id) + " cache_length " +
                 std::to_string(bm.cache_length(s.id)) + ", reference " + std::to_string(s.ref->cache_length()));
      }
    }
    ++rep.steps;
  }
  for (auto& s : seqs) bm.remove_sequence(s.id);
  return rep;
}

static_assert(batched_model<independent_batch<markov_model>>);

}  // namespace specdec::testing
