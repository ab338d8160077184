// Must NOT compile: a model without `truncate(n)` is not a specdec::language_model.
// The diagnostic must name the missing concept: has_truncate.
#include <specdec/model.hpp>

struct no_truncate_model {
  std::size_t vocab_size() const { return 4; }
  std::size_t context_length() const { return 16; }
  std::size_t cache_length() const { return 0; }
  specdec::logits_block forward(std::span<const specdec::token_id>) { return {}; }
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  void truncate(std::size_t) {}
#endif
};

int main() {
  no_truncate_model m;
  (void)specdec::forward_one(m, 1);
}
