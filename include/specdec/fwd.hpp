#pragma once
/// \file fwd.hpp
/// Light forward declarations of specdec's vocabulary types. Include this where you
/// only name types; it pulls in nothing heavier than <cstdint> and <cstddef>.
#include <cstddef>
#include <cstdint>

namespace specdec {

/// A token id. Signed so that an out-of-range negative id can be detected and reported.
using token_id = std::int32_t;

struct logits_block;
class token_tree;
class error;
class invalid_argument;
class checkpoint_error;
class tokenizer_error;
class vocabulary_mismatch;
class context_overflow;
class token_out_of_range;

namespace testing {
class markov_model;
struct minimal_model;
}  // namespace testing

namespace cpu {
class transformer;
class tokenizer;
struct checkpoint;
}  // namespace cpu

}  // namespace specdec
