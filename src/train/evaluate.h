#pragma once
// Evaluation under the locked metric: one pass over a split (device-resident, ascending order,
// last partial batch kept), optional test-time-augmentation views averaged, scored on the full
// subset and on the clean subset (corrupted windows excluded) from the same predictions.
#include <torch/types.h>

#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "eval/pck.h"
#include "train/loss.h"
#include "train/train_config.h"

namespace csipose {
class PoseModelImpl;

struct EvalMetrics {
  PoseMetrics full, clean;
  double loss_full = 0.0, loss_clean = 0.0;  ///< PoseLoss over the whole subset
  std::vector<std::string> views{"identity"};
  /// The value of a monitored metric ("val/clean/pck@20", "val/full/mpjpe", "val/clean/loss").
  double value(const MonitorSpec& monitor) const;
  Json to_json() const;
};

/// One split of a dataset, gathered once onto the evaluation device.
class EvalSet {
 public:
  EvalSet(const PoseDataset& data, Split split, c10::Device device, int64_t batch_size);
  const std::string& split() const { return split_; }
  int64_t size() const { return loader_.num_samples(); }
  int64_t num_clean() const { return num_clean_; }
  /// Predictions (N, J, 2) on CPU in the split's window order, averaged over the views.
  torch::Tensor predict(PoseModelImpl& model, const std::vector<std::string>& views) const;
  EvalMetrics evaluate(PoseModelImpl& model, const PoseLoss& loss, const std::vector<std::string>& views) const;

 private:
  std::string split_;
  MetricSpec spec_;
  BatchLoader loader_;
  torch::Tensor y_;      // (N, J, 2) CPU
  torch::Tensor clean_;  // (N,) bool CPU
  int64_t num_clean_ = 0;
};

/// Checks that a monitor names a threshold of the spec ("pck@20" needs 0.2 in spec.thresholds).
void check_monitor(const MonitorSpec& monitor, const MetricSpec& spec, const std::string& what);

}  // namespace csipose
