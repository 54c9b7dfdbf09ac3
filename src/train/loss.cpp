#include "train/loss.h"

#include <torch/torch.h>

#include "common/check.h"

namespace csipose {

const std::vector<Bone>& skeleton_bones(const std::string& skeleton) {
  static const std::vector<Bone> body25_15 = {{0, 1}, {1, 8}, {1, 2}, {2, 3},  {3, 4},   {1, 5},   {5, 6},
                                              {6, 7}, {8, 9}, {8, 12}, {9, 10}, {10, 11}, {12, 13}, {13, 14}};
  static const std::vector<Bone> coco17 = {{0, 1},  {0, 2},  {1, 3},   {2, 4},   {5, 6},   {5, 7},   {7, 9},   {6, 8},
                                           {8, 10}, {5, 11}, {6, 12}, {11, 12}, {11, 13}, {13, 15}, {12, 14}, {14, 16}};
  if (skeleton == "body25_15") return body25_15;
  if (skeleton == "coco17") return coco17;
  fail("unknown skeleton \"", skeleton, "\"; expected one of: body25_15, coco17");
}

PoseLoss::PoseLoss(std::vector<Bone> bones, int64_t num_joints, PoseLossOptions options)
    : bones_(std::move(bones)), options_(options) {
  std::vector<int64_t> a, b;
  for (const auto& bone : bones_) {
    CSIPOSE_CHECK(bone.first >= 0 && bone.first < num_joints && bone.second >= 0 && bone.second < num_joints,
                  "PoseLoss: bone (", bone.first, ",", bone.second, ") is outside ", num_joints, " joints");
    a.push_back(bone.first);
    b.push_back(bone.second);
  }
  a_ = torch::tensor(a, torch::kInt64);
  b_ = torch::tensor(b, torch::kInt64);
}

torch::Tensor PoseLoss::bone_lengths(const torch::Tensor& joints) const {
  if (a_.device() != joints.device()) {
    a_ = a_.to(joints.device());
    b_ = b_.to(joints.device());
  }
  const auto d = joints.index_select(1, a_) - joints.index_select(1, b_);
  return (d.pow(2).sum(-1) + 1e-8).sqrt();
}

torch::Tensor PoseLoss::operator()(const torch::Tensor& pred, const torch::Tensor& gt) const {
  CSIPOSE_CHECK(pred.sizes() == gt.sizes(), "PoseLoss: prediction ", pred.sizes(), " and target ", gt.sizes(),
                " differ in shape");
  // at::smooth_l1_loss directly: LibTorch 1.13's functional wrapper ignores the options' beta
  // (it takes beta as a separate argument that defaults to 1), which silently trains a different loss.
  const int64_t mean = at::Reduction::Mean;
  auto loss = torch::smooth_l1_loss(pred, gt, mean, options_.beta);
  if (bones_.empty() || options_.bone_weight == 0.0) return loss;
  return loss + options_.bone_weight * torch::smooth_l1_loss(bone_lengths(pred), bone_lengths(gt), mean, options_.bone_beta);
}

}  // namespace csipose
