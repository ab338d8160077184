// Must NOT compile: a verifier without `sync(S)` is not a specdec::verifier, so a
// speculative decoder cannot be built over it. The diagnostic must name the concept.
#include <specdec/decoder.hpp>
#include <specdec/testing/archetypes.hpp>

struct no_sync_verifier {
  static constexpr bool exact = true;
  std::size_t vocab_size() const { return 8; }
  std::size_t context_length() const { return 64; }
  std::size_t cache_length() const { return 0; }
  specdec::verdict verify(std::span<const specdec::token_id>, const specdec::draft_block&,
                          const specdec::sampling_params&, specdec::random_source&) {
    return {};
  }
  void reset() {}
#ifdef SPECDEC_COMPILE_FAIL_FIXED
  void sync(std::span<const specdec::token_id>) {}
#endif
};

int main() {
  specdec::testing::markov_model draft;
  specdec::basic_speculative_decoder dec(draft, specdec::fixed_gamma{}, no_sync_verifier{});
  (void)dec;
}
