#pragma once
/// \file fwd.hpp
/// Light forward declarations of specdec's vocabulary types. Include this where you
/// only name types; it pulls in nothing heavier than <cstdint> and <cstddef>. It names
/// the core's types only: the backends and test support declare their own.
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

enum class stop_reason;
struct generation_options;
struct generation_result;
struct generation_stats;
struct sampling_params;
class random_source;
struct draft_block;
struct verdict;

}  // namespace specdec
