#pragma once
// Per-layer quantization sensitivity and the accuracy-budget search built on it.
//
// layer_sensitivity() answers "which layer costs the accuracy?" in two ways, for every quantized op
// of a prepared (calibrated or dynamic) model:
//   - SQNR: 10 log10(sum ref^2 / sum (q - ref)^2) of the op's output, where ref is the output with
//     every op in float and q the output with every op fake-quantized (error accumulated from the
//     layers before included, as PyTorch's numeric suite compares model outputs), over a probe batch;
//   - drop: how much worse the monitored metric (default val/clean/pck@20) is with ONLY this op
//     quantized (fake-quant, every other op float) than with every op float: fp32 - quantized for a
//     PCK (in points), quantized - fp32 for MPJPE or loss (in their units).
// auto_budget() starts from the all-quantized model and moves ops back to fp32, most sensitive first
// (largest drop, then lowest SQNR), until the drop against fp32 is within the budget: NNCF's
// quantize_with_accuracy_control, run on the validation split so the test split stays untouched.
#include <torch/types.h>

#include <string>
#include <vector>

#include "common/json.h"
#include "quant/policy.h"
#include "train/train_config.h"

namespace c10 {
struct Device;
}

namespace csipose {
class EvalSet;
struct PoseDataset;
class PoseLoss;
class PoseModelImpl;
struct EvalMetrics;
struct PreparedModel;

struct LayerSensitivity {
  std::string name;
  double sqnr_db = 0.0;     ///< +inf when the quantized output equals the float one
  double only_this = 0.0;   ///< the metric with only this op quantized (PCK in %)
  double drop = 0.0;        ///< how much worse than fp32 (see above)
};

/// The monitored metric's value as reported: PCK in %, MPJPE and loss as they are.
double metric_value(const EvalMetrics& m, const MonitorSpec& metric);
/// How much worse `quantized` is than `fp32` (both from metric_value): positive = worse.
double metric_drop(const MonitorSpec& metric, double fp32, double quantized);

struct SensitivityReport {
  MonitorSpec metric;             ///< split/subset/measure the drops are measured on
  std::string metric_definition;  ///< MetricSpec::describe() of that split
  int64_t probe_windows = 0;      ///< windows of the SQNR probe batch
  double fp32 = 0.0;              ///< the metric with every op float
  double quantized = 0.0;         ///< the metric with every op quantized
  std::vector<LayerSensitivity> layers;  ///< in the model's op order

  /// Indices into `layers`, most sensitive first: larger drop, then lower SQNR, then model order.
  std::vector<size_t> ranking() const;
  Json to_json() const;
  /// A markdown table in ranking order, with the definitions above it.
  std::string table() const;
};

/// `prepared` must be calibrated (observers frozen) or dynamic; every hook ends in fake_quant mode.
/// `probe_x` is one input batch on the model's device.
/// `metric`'s split must be `set`'s.
SensitivityReport layer_sensitivity(PoseModelImpl& model, PreparedModel& prepared, const EvalSet& set,
                                    const PoseLoss& loss, const torch::Tensor& probe_x, const MonitorSpec& metric);

struct BudgetStep {
  std::string moved;  ///< the op moved to fp32 at this step (empty for the all-quantized start)
  double value = 0.0;  ///< the metric after the step
  double drop = 0.0;
};

struct AutoBudgetResult {
  MonitorSpec metric;
  double budget = 0.0;  ///< max drop, in the metric's units (PCK points)
  bool met = false;
  std::vector<std::string> fp32_layers;  ///< the ops moved to fp32, in the order they were moved
  std::vector<BudgetStep> steps;
  Json to_json() const;
  std::string table() const;
};

/// Greedy search described at the top. Ops moved to fp32 have their hooks switched off (float), so
/// the model afterwards computes the final mixed-precision model in fake-quant. A budget no
/// choice meets ends with every op in fp32 and met = false.
AutoBudgetResult auto_budget(PoseModelImpl& model, PreparedModel& prepared, const EvalSet& set, const PoseLoss& loss,
                             const SensitivityReport& sensitivity, double budget);

/// Static calibration (PTQ): the first min(batches, available) batches of train/clean, in the
/// loader order of `seed`, run through `model` with every hook observing; the observers are then
/// frozen and the hooks left in fake_quant mode. Returns the calibration windows' dataset indices.
std::vector<int64_t> calibrate_static(PoseModelImpl& model, PreparedModel& prepared, const PoseDataset& data,
                                      int64_t batches, int64_t batch_size, uint64_t seed, const c10::Device& device);

/// The SQNR probe batch of layer_sensitivity: the first (up to) 64 clean windows of the metric's
/// split, in dataset order. Throws when that split has no clean window.
torch::Tensor sensitivity_probe(const PoseDataset& data, const MonitorSpec& metric, const c10::Device& device);

/// `policy` with one leading fp32 rule (weights and activations) per named op; names must be plain
/// module paths (no glob characters).
QuantPolicy with_fp32_layers(const QuantPolicy& policy, const std::vector<std::string>& names);

}  // namespace csipose
