#pragma once
/// \file specdec.hpp
/// The whole generic library in one include: the concepts (models, batched models,
/// fallback and rollback policies, distance metrics, arbiters, schedulers), the bundled
/// policies, the single-sequence and batched decoders, telemetry, the batch scheduler and
/// the device/cloud hybrid layer. It needs xtensor (the `specdec::specdec`
/// CMake target), not Eigen: the CPU backend is `specdec/cpu.hpp`, the network clients of
/// the hybrid layer (sockets, HTTP, JSON) are `specdec/net.hpp`, and the test helpers
/// (`specdec/testing/...`) are included on their own.
///
/// ```cpp
/// #include <specdec/specdec.hpp>
///
/// template <specdec::language_model M>
/// std::vector<specdec::token_id> greedy(M& draft, M& target, std::span<const specdec::token_id> prompt) {
///   specdec::speculative_decoder dec(draft, target, specdec::fixed_gamma{.gamma = 4},
///                                    specdec::greedy_match{});
///   return dec.generate(prompt, {.max_new_tokens = 32}).tokens;
/// }
/// ```
///
/// Every public header that needs no network is listed here; the others are in
/// `specdec/net.hpp` (tests/umbrella checks that each is in exactly one of the two).
#include "specdec/fwd.hpp"
#include "specdec/error.hpp"
#include "specdec/token.hpp"
#include "specdec/model.hpp"
#include "specdec/tree.hpp"
#include "specdec/validation.hpp"
#include "specdec/sampling.hpp"
#include "specdec/distance.hpp"
#include "specdec/fallback.hpp"
#include "specdec/rollback.hpp"
#include "specdec/telemetry.hpp"
#include "specdec/generation.hpp"
#include "specdec/draft.hpp"
#include "specdec/verifier.hpp"
#include "specdec/decoder.hpp"
#include "specdec/tree_verifier.hpp"
#include "specdec/tree_drafter.hpp"
#include "specdec/tree_policy.hpp"
#include "specdec/tree_decoder.hpp"
#include "specdec/batch.hpp"
#include "specdec/batch_decoder.hpp"
#include "specdec/scheduler.hpp"
#include "specdec/hybrid/link.hpp"
#include "specdec/hybrid/predictor.hpp"
#include "specdec/hybrid/scheduling.hpp"
#include "specdec/hybrid/arbiter.hpp"
#include "specdec/hybrid/calibration.hpp"
#include "specdec/hybrid/training.hpp"
#include "specdec/hybrid/probe.hpp"
#include "specdec/hybrid/routing_metrics.hpp"
#include "specdec/hybrid/routing_log.hpp"
#include "specdec/hybrid/remote_model.hpp"
#include "specdec/hybrid/run_ahead.hpp"
#include "specdec/hybrid/session.hpp"
#include "specdec/hybrid/errors.hpp"
#include "specdec/hybrid/wire.hpp"
#include "specdec/hybrid/link_monitor.hpp"
#include "specdec/hybrid/uplink.hpp"
#include "specdec/privacy/policy.hpp"
#include "specdec/privacy/recognizers.hpp"
#include "specdec/privacy/detector.hpp"
#include "specdec/privacy/redaction.hpp"
#include "specdec/privacy/audit.hpp"
#include "specdec/privacy/sha256.hpp"
