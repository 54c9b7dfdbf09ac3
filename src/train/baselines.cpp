#include "train/baselines.h"

#include <torch/torch.h>

#include <cmath>

#include "common/check.h"
#include "common/rng.h"

namespace csipose {
namespace {

torch::Tensor index_tensor(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); }

torch::Tensor flat_features(const torch::Tensor& x, const std::vector<int64_t>& idx) {
  return x.index_select(0, index_tensor(idx)).flatten(1).to(torch::kFloat64);
}

}  // namespace

torch::Tensor fit_mean_pose(const PoseDataset& ds) {
  const auto idx = ds.indices(Split::train, Subset::clean);
  CSIPOSE_CHECK(!idx.empty(), ds.root, ": the train split has no clean windows");
  return ds.y.index_select(0, index_tensor(idx)).to(torch::kFloat64).mean(0).to(torch::kFloat32);
}

torch::Tensor RidgeModel::predict(const torch::Tensor& x, int64_t num_joints) const {
  std::vector<torch::Tensor> outs;
  const int64_t chunk = 2048;
  for (int64_t s = 0; s < x.size(0); s += chunk) {
    auto f = (x.slice(0, s, std::min(x.size(0), s + chunk)).flatten(1).to(torch::kFloat64) - x_mean) / x_scale;
    outs.push_back(torch::addmm(bias, f, weight));
  }
  return torch::cat(outs).view({x.size(0), num_joints, 2}).to(torch::kFloat32);
}

RidgeModel fit_ridge(const PoseDataset& ds, const RidgeOptions& options) {
  auto train_idx = ds.indices(Split::train, Subset::clean);
  const auto val_idx = ds.indices(Split::val, Subset::clean);
  CSIPOSE_CHECK(!train_idx.empty() && !val_idx.empty(), ds.root, ": ridge needs clean train and val windows");
  if (static_cast<int64_t>(train_idx.size()) > options.max_train) {
    Rng rng(options.seed, 0x41d9e);
    rng.shuffle(train_idx);
    train_idx.resize(static_cast<size_t>(options.max_train));
    std::sort(train_idx.begin(), train_idx.end());
  }
  const int64_t j = ds.num_joints();
  RidgeModel m;
  auto x = flat_features(ds.x, train_idx);
  m.x_mean = x.mean(0);
  m.x_scale = (x - m.x_mean).square().mean(0).sqrt().clamp_min(1e-8);  // population std
  x = (x - m.x_mean) / m.x_scale;
  auto y = ds.y.index_select(0, index_tensor(train_idx)).flatten(1).to(torch::kFloat64);
  m.bias = y.mean(0);
  y = y - m.bias;
  const int64_t n = x.size(0), d = x.size(1);
  auto xv = (flat_features(ds.x, val_idx) - m.x_mean) / m.x_scale;
  auto yv = ds.y.index_select(0, index_tensor(val_idx));

  // One eigendecomposition serves every lambda: dual form (X X^T) when N < D, else primal (X^T X).
  const bool dual = n < d;
  auto gram = dual ? torch::mm(x, x.t()) : torch::mm(x.t(), x);
  auto eig = torch::linalg::eigh(gram, "L");
  auto evals = std::get<0>(eig).clamp_min(0.0), evecs = std::get<1>(eig);
  auto proj = dual ? torch::mm(evecs.t(), y) : torch::mm(evecs.t(), torch::mm(x.t(), y));  // (n|d, 2J)
  double best = -1.0;
  for (double lam_rel : options.lambdas) {
    const double lam = lam_rel * static_cast<double>(n) / 1000.0;
    auto scaled = proj / (evals + lam).unsqueeze(1);
    auto w = dual ? torch::mm(x.t(), torch::mm(evecs, scaled)) : torch::mm(evecs, scaled);  // (D, 2J)
    auto pred = (torch::mm(xv, w) + m.bias).view({-1, j, 2}).to(torch::kFloat32);
    const double pck20 = score_predictions(pred, yv, ds.spec, "val", "clean").pck_at(0.2);
    m.val_pck20.push_back(pck20);
    if (pck20 > best) {
      best = pck20;
      m.lambda = lam_rel;
      m.weight = w;
    }
  }
  return m;
}

PoseMetrics score_on(const PoseDataset& ds, const torch::Tensor& pred_all, Split split, Subset subset) {
  const auto idx = index_tensor(ds.indices(split, subset));
  return score_predictions(pred_all.index_select(0, idx), ds.y.index_select(0, idx), ds.spec, to_string(split),
                           to_string(subset));
}

Json BaselineResult::to_json() const {
  Json j = Json::object();
  j.set("name", name).set("details", details);
  Json ms = Json::array();
  for (const auto& m : metrics) ms.push(m.to_json());
  j.set("metrics", ms);
  return j;
}

std::vector<BaselineResult> run_baselines(const PoseDataset& ds, const RidgeOptions& options) {
  std::vector<BaselineResult> out;
  auto score_all = [&](BaselineResult& r, const torch::Tensor& pred) {
    r.metrics.push_back(score_on(ds, pred, Split::test, Subset::full));
    r.metrics.push_back(score_on(ds, pred, Split::test, Subset::clean));
    r.metrics.push_back(score_on(ds, pred, Split::val, Subset::clean));
  };
  {
    BaselineResult r;
    r.name = "mean_pose";
    const auto mean = fit_mean_pose(ds);
    r.details = Json::object().set("fit_on", "train/clean");
    score_all(r, mean.unsqueeze(0).expand({ds.size(), -1, -1}).contiguous());
    out.push_back(r);
  }
  {
    BaselineResult r;
    r.name = "ridge";
    const RidgeModel m = fit_ridge(ds, options);
    r.details = Json::object()
                    .set("fit_on", "train/clean (standardized flattened windows)")
                    .set("lambda_per_1000_samples", m.lambda)
                    .set("lambdas_tried", Json(options.lambdas))
                    .set("val_clean_pck@20_per_lambda", Json(m.val_pck20))
                    .set("features", m.weight.size(0));
    score_all(r, m.predict(ds.x, ds.num_joints()));
    out.push_back(r);
  }
  return out;
}

}  // namespace csipose
