#pragma once

// SyntheticModel: a stand-in for a transformer's attention inputs, for the
// demo, the engine's tests and the embedding example. It has no weights:
// every layer's q / k / v rows of a token are fixed pseudo-random values
// (uniform in [-1, 1)), a pure function of (seed, layer, context), where the
// context is a 64-bit hash chain over the token ids up to and including the
// token. So, as in a real model:
//   - a token's K/V is the same whichever step, batch or schedule computes it
//     (chunked or not, before or after a preemption), which lets two runs be
//     compared bit for bit;
//   - two requests that share their first n tokens share the K/V of those n
//     positions, so a prefix cache that reuses them is correct, and one that
//     reused the wrong pages would be caught by Reference();
//   - the next token is a function of the context (greedy decoding of a
//     fixed model): NextToken(context) = hash(seed, context) mod vocab_size.
// The attention output is not fed back (there are no weights to feed it
// through); Reference() recomputes one output row in double precision from
// the model alone, to check what the engine and kernels returned.
//
// Cost: one token-layer is Hq*D + 2*Hkv*D 32-bit hashes (6144 for the
// Llama-3-8B shapes), a few microseconds.
//
// Thread-safety: immutable after Create; every member may run concurrently.
// Memory ordering: none.
//
// Example:
//   RPA_ASSIGN_OR_RETURN(SyntheticModel model, SyntheticModel::Create(
//       {.seed = 1, .num_layers = 4, .num_q_heads = 32, .num_kv_heads = 8,
//        .head_dim = 128}));
//   std::uint64_t context = SyntheticModel::kEmptyContext;
//   for (std::int32_t token : prompt) context = model.Extend(context, token);
//   model.FillToken(layer, context, q_row, k_row, v_row);
//   std::int32_t next = model.NextToken(context);

#include <cstdint>
#include <optional>
#include <span>

#include "rpa/memory/storage_type.h"
#include "rpa/runtime/status.h"

namespace rpa::scheduler {

struct SyntheticModelConfig {
  std::uint64_t seed = 0;
  std::uint32_t num_layers = 0;       // >= 1
  std::uint32_t num_q_heads = 0;      // Hq, a multiple of Hkv
  std::uint32_t num_kv_heads = 0;     // Hkv >= 1
  std::uint32_t head_dim = 0;         // D >= 1
  std::uint32_t vocab_size = 128256;  // >= 2, <= 2^31 - 1
};

// One output row's comparison with the reference.
struct ReferenceCheck {
  double max_abs_error = 0;  // over the Hq*D values
  double max_abs_expected = 0;
  // max over values of |got - expected| / (1 + |expected|): SPEC section 4
  // accepts <= 1e-4.
  double max_scaled_error = 0;
};

class SyntheticModel {
 public:
  static constexpr std::uint64_t kEmptyContext = 0x6a09e667f3bcc908ULL;

  // InvalidArgument naming the field (zero sizes, Hq % Hkv != 0, vocab).
  static StatusOr<SyntheticModel> Create(const SyntheticModelConfig& config);

  // The context after `token` (a hash chain; kEmptyContext before the first
  // token).
  static std::uint64_t Extend(std::uint64_t context, std::int32_t token);

  // One token's rows of `layer` (< num_layers, RPA_CHECK): q [Hq * D],
  // k and v [Hkv * D] (sizes RPA_CHECKed). `context` includes the token.
  void FillToken(std::uint32_t layer, std::uint64_t context, std::span<float> q,
                 std::span<float> k, std::span<float> v) const;

  // The token greedy decoding emits after `context`, in [0, vocab_size).
  std::int32_t NextToken(std::uint64_t context) const;

  // The attention output row of the token at position contexts.size() - 1
  // of a sequence whose contexts (one per position, from the first token)
  // are `contexts`, computed in double precision from this model: causal
  // attention over all positions (optionally the last sliding_window_tokens
  // only), sm_scale default 1/sqrt(D), K and V first rounded to `storage`
  // as the cache stores them (SPEC section 4). Compares with `got`
  // ([Hq * D], RPA_CHECKed) and returns the errors. contexts must not be
  // empty (RPA_CHECK).
  ReferenceCheck Reference(
      std::uint32_t layer, std::span<const std::uint64_t> contexts,
      memory::StorageType storage, std::span<const float> got,
      std::optional<float> sm_scale = std::nullopt,
      std::optional<std::int32_t> sliding_window_tokens = std::nullopt) const;

  const SyntheticModelConfig& config() const { return config_; }
  std::uint32_t q_row_floats() const {
    return config_.num_q_heads * config_.head_dim;
  }
  std::uint32_t kv_row_floats() const {
    return config_.num_kv_heads * config_.head_dim;
  }

 private:
  explicit SyntheticModel(const SyntheticModelConfig& config)
      : config_(config) {}

  SyntheticModelConfig config_;
};

}  // namespace rpa::scheduler
