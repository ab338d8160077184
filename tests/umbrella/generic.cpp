// Compile-only: <specdec/specdec.hpp> alone gives the whole generic library, and it does
// not need the CPU backend (this target links specdec::specdec only, without Eigen).
#include <specdec/specdec.hpp>

#ifdef EIGEN_WORLD_VERSION
#error "specdec/specdec.hpp pulled in Eigen: the CPU backend belongs in specdec/cpu.hpp"
#endif

// One name from every family the umbrella promises.
static_assert(specdec::fallback_policy<specdec::fixed_gamma>);
static_assert(specdec::fallback_policy<specdec::expected_speedup_gamma>);
static_assert(specdec::rollback_policy<specdec::greedy_match>);
static_assert(specdec::rollback_policy<specdec::rejection_sampling>);
static_assert(specdec::distance_metric<specdec::total_variation>);
static_assert(specdec::batch_scheduler<specdec::fifo_scheduler>);
static_assert(specdec::hybrid::arbiter<specdec::hybrid::confidence_arbiter>);
static_assert(sizeof(specdec::generation_stats) > 0);
static_assert(sizeof(specdec::hybrid::simulated_link) > 0);
static_assert(sizeof(specdec::hybrid::session_options) > 0);

// The example of the umbrella's file comment.
template <specdec::language_model M>
std::vector<specdec::token_id> greedy(M& draft, M& target, std::span<const specdec::token_id> prompt) {
  specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = 4}, specdec::greedy_match{});
  return dec.generate(prompt, {.max_new_tokens = 32}).tokens;
}
