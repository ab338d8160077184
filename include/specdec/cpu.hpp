#pragma once
/// \file cpu.hpp
/// The generic library (`specdec/specdec.hpp`) and the reference CPU Llama backend in one
/// include: checkpoints, the tokenizer, the KV cache, `cpu::transformer` (a
/// `language_model`), `cpu::batched_transformer` (a `batched_model`) and the roofline
/// probes (`roofline.hpp`). It needs Eigen
/// besides (the `specdec::cpu_backend` CMake target).
///
/// ```cpp
/// #include <specdec/cpu.hpp>
///
/// specdec::cpu::transformer big("models/kjv-big.bin"), little("models/kjv-little.bin");
/// specdec::speculative_decoder dec(little, big, specdec::fixed_gamma{.gamma = 4},
///                                  specdec::greedy_match{});
/// auto r = dec.generate(std::vector<specdec::token_id>{1}, {.max_new_tokens = 32});
/// ```
///
/// Every public backend header is listed here (tests/umbrella checks that none is missing).
#include "specdec/specdec.hpp"
#include "specdec/backend/cpu/checkpoint.hpp"
#include "specdec/backend/cpu/tokenizer.hpp"
#include "specdec/backend/cpu/kv_cache.hpp"
#include "specdec/backend/cpu/transformer.hpp"
#include "specdec/backend/cpu/batched_transformer.hpp"
#include "specdec/backend/cpu/roofline.hpp"
