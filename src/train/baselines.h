#pragma once
// Closed-form baselines that calibrate how hard a dataset is, scored under the locked metric:
//  - mean pose: the average training pose predicted for every window (what a model that ignores
//    the CSI can reach);
//  - ridge regression: a linear map from the flattened, standardized CSI window to the keypoints,
//    fit on the train split, its L2 strength chosen on the val split (what a linear model reaches).
// A learned network must beat both by a wide margin, or the dataset is too easy to show
// quantization effects.
#include <torch/types.h>

#include <string>
#include <vector>

#include "common/json.h"
#include "data/dataset.h"
#include "eval/pck.h"

namespace csipose {

struct RidgeOptions {
  std::vector<double> lambdas{1e-1, 1, 1e1, 1e2, 1e3, 1e4, 1e5};  ///< L2 strengths tried, relative to N
  int64_t max_train = 8000;  ///< subsample train windows beyond this (keeps the solve O(max_train^3))
  uint64_t seed = 0;         ///< for that subsample
};

struct RidgeModel {
  torch::Tensor x_mean, x_scale;  ///< (D,) standardization
  torch::Tensor weight;           ///< (D, 2J) float64
  torch::Tensor bias;             ///< (2J,)
  double lambda = 0.0;
  std::vector<double> val_pck20;  ///< per lambda tried, for the report
  /// x: (N, ...) -> (N, J, 2)
  torch::Tensor predict(const torch::Tensor& x, int64_t num_joints) const;
};

/// Mean of the clean training labels: (J, 2).
torch::Tensor fit_mean_pose(const PoseDataset& ds);
RidgeModel fit_ridge(const PoseDataset& ds, const RidgeOptions& options = {});

struct BaselineResult {
  std::string name;             ///< "mean_pose" | "ridge"
  Json details;                 ///< fitted hyper-parameters
  std::vector<PoseMetrics> metrics;  ///< test/full, test/clean, val/clean
  Json to_json() const;
};

/// Fits and scores both baselines.
std::vector<BaselineResult> run_baselines(const PoseDataset& ds, const RidgeOptions& options = {});

/// Scores predictions (N_all, J, 2) made for every window of ds on a split and subset.
PoseMetrics score_on(const PoseDataset& ds, const torch::Tensor& pred_all, Split split, Subset subset);

}  // namespace csipose
