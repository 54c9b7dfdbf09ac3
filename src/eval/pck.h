#pragma once
// The locked torso-normalized PCK / MPJPE harness (MODELS.md section 4).
//   norm_b  = max(||gt[b,a] - gt[b,c]||, clamp)        ground truth only, torso pair (a,c)
//   PCK@t   = mean over all samples x joints of [||pred - gt|| <= t * norm_b]   (inclusive)
//   MPJPE   = mean over all samples x joints of ||pred - gt||                   (label units)
// Aggregated over the whole set: batches are summed (counts and distance sums in 64-bit), never
// averaged per batch, and no last batch is dropped.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"
#include "eval/metric_spec.h"

namespace csipose {

/// One scored evaluation: numbers plus everything needed to know what they mean.
struct PoseMetrics {
  MetricSpec spec;
  std::string split;            ///< "train" | "val" | "test" | a user label
  std::string subset;           ///< "full" | "clean"
  int64_t num_samples = 0;
  std::vector<double> pck;      ///< fraction in [0,1], one per spec.thresholds entry
  double mpjpe = 0.0;           ///< label units
  std::vector<double> pck_per_joint;  ///< fraction at the spec's second threshold (t = 0.2 when default)
  /// Predicted joints with a non-finite coordinate. They count as misses at every threshold and make
  /// mpjpe +inf (written as null in JSON): a mean over the finite distances only would look better
  /// than the model is, so the harness refuses to produce one.
  int64_t num_nonfinite = 0;

  /// PCK at threshold t (must be one of spec.thresholds); throws otherwise.
  double pck_at(double t) const;
  Json to_json() const;
  static PoseMetrics from_json(const Json& j);
  /// "PCK@20 96.62%  MPJPE 0.008981 (test/clean, 1234 samples)".
  std::string summary() const;
};

class PckAccumulator {
 public:
  explicit PckAccumulator(MetricSpec spec);
  /// pred, gt: (B, J, 2) float tensors on any device, J == spec.num_joints. Non-finite
  /// predictions count as misses (distance inf) and are reported via num_nonfinite().
  void add(const torch::Tensor& pred, const torch::Tensor& gt);
  PoseMetrics result(const std::string& split, const std::string& subset) const;
  int64_t num_samples() const { return num_samples_; }
  int64_t num_nonfinite() const { return num_nonfinite_; }

 private:
  MetricSpec spec_;
  int64_t num_samples_ = 0;
  int64_t num_nonfinite_ = 0;
  std::vector<int64_t> hits_;            // per threshold
  std::vector<int64_t> joint_hits_;      // per joint at thresholds[1]
  double dist_sum_ = 0.0;
};

/// Scores whole prediction / ground-truth tensors in one call.
PoseMetrics score_predictions(const torch::Tensor& pred, const torch::Tensor& gt, const MetricSpec& spec,
                              const std::string& split, const std::string& subset);

/// Compares two results; throws unless spec, split and subset agree. Returns b - a per PCK
/// threshold followed by the MPJPE difference, in the spec's order.
std::vector<double> metric_difference(const PoseMetrics& a, const PoseMetrics& b);

}  // namespace csipose
