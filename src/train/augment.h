#pragma once
// Training-time randomness applied to batches: mixup and input augmentations, plus the
// test-time-augmentation views. Inputs are (B, C, ..., T): dim 1 holds the links (WiFlow: 9 tx-rx
// pairs x 60 subcarriers = 540 channels; MM-Fi: 3 antennas), the last dim is time.
//
// Mixup draws lambda and the pairing from csipose::Rng (fixed by the seed on every device);
// augmentations draw from the torch generator of the batch's device, which the trainer seeds
// per step from (run seed, global step), so resumed runs repeat them exactly.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/rng.h"
#include "train/train_config.h"

namespace csipose {

/// Gamma(shape, 1) by Marsaglia-Tsang (shape < 1 via the Gamma(shape + 1) * U^(1/shape) boost).
double sample_gamma(double shape, Rng& rng);
/// Beta(a, b) = X / (X + Y), X ~ Gamma(a), Y ~ Gamma(b).
double sample_beta(double a, double b, Rng& rng);

struct MixupDraw {
  bool mixed = false;
  double lambda = 1.0;            ///< weight of the original sample
  std::vector<int64_t> partner;   ///< partner[i]: the sample mixed into sample i (a permutation)
};

/// With probability prob: lambda ~ Beta(alpha, alpha) and a random pairing of the batch.
MixupDraw draw_mixup(const MixupConfig& config, int64_t batch_size, Rng& rng);
/// x = lambda * x + (1 - lambda) * x[partner], same for y (the pose targets mix linearly).
void apply_mixup(torch::Tensor& x, torch::Tensor& y, const MixupDraw& draw);

/// The number of links along dim 1 for an input of this per-sample shape ({540, 20} -> 9, {3, 114, 10} -> 3).
int64_t num_links(const std::vector<int64_t>& input_shape);

/// Per-sample scaling, link drop, time masking, then additive noise (in that order).
torch::Tensor augment_inputs(const torch::Tensor& x, const AugmentConfig& config, int64_t links);

/// One TTA view: "identity", "scale:F", "shift:K" (time shift by K steps, edge values repeated).
torch::Tensor tta_view(const torch::Tensor& x, const std::string& view);

}  // namespace csipose
