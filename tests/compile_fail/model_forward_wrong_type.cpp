// Must NOT compile: `forward` returns a std::vector<float>, not a specdec::logits_block.
// The diagnostic must name the failing concept: has_block_forward.
#include <vector>

#include <specdec/model.hpp>

struct vector_forward_model {
  std::size_t vocab_size() const { return 4; }
  std::size_t context_length() const { return 16; }
  std::size_t cache_length() const { return 0; }
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  specdec::logits_block forward(std::span<const specdec::token_id>) { return {}; }
#else
  std::vector<float> forward(std::span<const specdec::token_id>) { return {}; }
#endif
  void truncate(std::size_t) {}
};

int main() {
  vector_forward_model m;
  (void)specdec::forward_one(m, 1);
}
