#pragma once
// The locked metric's definition as a value. A dataset declares its MetricSpec (torso pair, clamp,
// thresholds, units); every result carries it, and results with different specs refuse to be
// compared. MODELS.md section 4.
#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"

namespace csipose {

struct MetricSpec {
  std::string dataset;        ///< "wiflow" | "mmfi"
  std::string skeleton;       ///< "body25_15" | "coco17"
  int64_t num_joints = 0;
  int64_t torso_a = 0;        ///< torso pair (a, c): norm_b = max(||gt[b,a] - gt[b,c]||, clamp)
  int64_t torso_b = 0;
  double norm_clamp = 0.01;   ///< lower clamp on the per-sample torso length (label units)
  std::vector<double> thresholds{0.1, 0.2, 0.3, 0.4, 0.5};  ///< PCK@t, inclusive (<=)
  std::string units;          ///< label units, e.g. "pixels/1000"

  Json to_json() const;
  static MetricSpec from_json(const Json& j);
  /// One line for reports: "torso-normalized PCK, pair (2,12) ..., clamp 0.01, t in {..}, inclusive".
  std::string describe() const;
  /// Throws csipose::Error unless usable: num_joints > 0, torso pair distinct and in [0, num_joints),
  /// clamp > 0, thresholds non-empty, positive and strictly increasing.
  void validate() const;
  /// Field-wise; doubles compare with a relative tolerance of 1e-9 (0.1 * 3 equals 0.3 here).
  bool operator==(const MetricSpec& o) const;
  bool operator!=(const MetricSpec& o) const { return !(*this == o); }
};

/// The locked spec a dataset declares: "wiflow" (BODY_25 first 15 joints, torso (2,12)) or
/// "mmfi" (COCO-17, torso (6,11)). Throws for other names, listing the known ones.
MetricSpec metric_spec_for(const std::string& dataset);

/// Throws csipose::Error naming the first field in which a and b differ.
void require_same_spec(const MetricSpec& a, const MetricSpec& b);

/// PCK@t column name for a threshold: 0.2 -> "pck@20" (0.125 -> "pck@12.5").
std::string pck_name(double threshold);

/// Joint names of a known skeleton in index order ("body25_15": Nose, Neck, RShoulder, ...;
/// "coco17": nose, left_eye, ...); empty for skeletons this file does not know.
const std::vector<std::string>& joint_names(const std::string& skeleton);

}  // namespace csipose
