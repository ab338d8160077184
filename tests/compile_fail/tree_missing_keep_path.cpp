// Must NOT compile: a model with `forward_tree` but without `keep_path(path)` is not a
// specdec::tree_model. The diagnostic must name the missing concept: has_keep_path.
#include <specdec/tree.hpp>

struct no_keep_path_model {
  std::size_t vocab_size() const { return 4; }
  std::size_t context_length() const { return 16; }
  std::size_t cache_length() const { return 0; }
  specdec::logits_block forward(std::span<const specdec::token_id>) { return {}; }
  void truncate(std::size_t) {}
  specdec::logits_block forward_tree(std::span<const specdec::token_id>, std::span<const std::int32_t>) { return {}; }
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  void keep_path(std::span<const std::size_t>) {}
#endif
};

int main() {
  no_keep_path_model m;
  (void)specdec::measure_verify_cost(m, 4);
}
