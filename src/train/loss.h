#pragma once
// PoseLoss (MODELS.md section 5):
//   smooth_l1(pred, gt, beta 0.1) + 0.2 * smooth_l1(bone_len(pred), bone_len(gt), beta 0.05)
// with bone_len = sqrt(sum d^2 + 1e-8) over the skeleton's bones, both terms means over elements.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace csipose {

using Bone = std::pair<int64_t, int64_t>;

/// The bones of a skeleton: "body25_15" (WiFlow, 14 bones) or "coco17" (MM-Fi, 16 bones).
/// Throws for other names.
const std::vector<Bone>& skeleton_bones(const std::string& skeleton);

struct PoseLossOptions {
  double beta = 0.1;          ///< smooth-L1 beta of the joint term
  double bone_weight = 0.2;
  double bone_beta = 0.05;
};

class PoseLoss {
 public:
  PoseLoss(std::vector<Bone> bones, int64_t num_joints, PoseLossOptions options = {});
  /// pred, gt: (B, J, 2) -> scalar.
  torch::Tensor operator()(const torch::Tensor& pred, const torch::Tensor& gt) const;
  /// (B, J, 2) -> (B, num_bones) bone lengths.
  torch::Tensor bone_lengths(const torch::Tensor& joints) const;

 private:
  std::vector<Bone> bones_;
  PoseLossOptions options_;
  // (num_bones,) int64 joint indices; moved once to the device of the first input seen there.
  mutable torch::Tensor a_, b_;
};

}  // namespace csipose
