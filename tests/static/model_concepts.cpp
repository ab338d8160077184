// Compile-only: the model concepts accept their archetypes and reject near misses that
// lack exactly one member or get one signature wrong. Built with the normal build, so a
// concept that loosens or tightens by accident breaks the build.
#include <span>
#include <vector>

#include "specdec/batch.hpp"
#include "specdec/draft.hpp"
#include "specdec/model.hpp"
#include "specdec/testing/archetypes.hpp"
#include "specdec/testing/batch_archetypes.hpp"

namespace {
using specdec::logits_block;
using specdec::token_id;

struct model_base {
  std::size_t vocab_size() const { return 4; }
  std::size_t context_length() const { return 16; }
  std::size_t cache_length() const { return 0; }
};
struct complete_model : model_base {
  logits_block forward(std::span<const token_id>) { return {}; }
  void truncate(std::size_t) {}
};
struct no_truncate : model_base {
  logits_block forward(std::span<const token_id>) { return {}; }
};
struct forward_returns_vector : model_base {
  std::vector<float> forward(std::span<const token_id>) { return {}; }
  void truncate(std::size_t) {}
};
struct no_cache_length {
  std::size_t vocab_size() const { return 4; }
  std::size_t context_length() const { return 16; }
  logits_block forward(std::span<const token_id>) { return {}; }
  void truncate(std::size_t) {}
};

static_assert(specdec::language_model<complete_model>);
static_assert(specdec::language_model<specdec::testing::markov_model>);
static_assert(specdec::language_model<specdec::testing::minimal_model>);
static_assert(!specdec::language_model<no_truncate>);
static_assert(!specdec::has_truncate<no_truncate>);
static_assert(!specdec::language_model<forward_returns_vector>);
static_assert(!specdec::has_block_forward<forward_returns_vector>);
static_assert(!specdec::language_model<no_cache_length>);
static_assert(!specdec::has_context<no_cache_length>);

// Drafters: a model, or something that proposes ids.
struct ids_only {
  std::span<const token_id> propose(std::span<const token_id>, std::size_t) { return {}; }
};
struct proposes_floats {
  std::span<const float> propose(std::span<const token_id>, std::size_t) { return {}; }
};
static_assert(specdec::token_drafter<ids_only>);
static_assert(!specdec::language_model<ids_only>);
static_assert(!specdec::token_drafter<proposes_floats>);
static_assert(!specdec::token_drafter<complete_model>);

// Batched models.
static_assert(specdec::batched_model<specdec::independent_batch<specdec::testing::markov_model>>);
static_assert(!specdec::batched_model<complete_model>);
}  // namespace
