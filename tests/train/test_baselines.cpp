// Closed-form baselines on tiny in-memory datasets whose answers are known: labels that are an
// exact linear function of the inputs (ridge must recover them), corrupted training windows with
// wrong labels (both baselines must ignore them), and the dual / primal ridge solves agreeing.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/check.h"
#include "data/dataset.h"
#include "eval/metric_spec.h"
#include "eval/pck.h"
#include "train/baselines.h"

namespace csipose {
namespace {

constexpr int64_t kJoints = 15;  // wiflow spec: torso pair (2, 12)

struct Toy {
  PoseDataset ds;
  int64_t informative = 0;  ///< features 0..informative-1 carry signal; the rest are all zero
};

/// 12 files x `per_file` windows, files 0-7 train, 8-9 val, 10-11 test. x: (N, 1, D) standard
/// normal in the first `informative` features, zero in `zero_pad` more. y = x A + b (+ noise), with
/// b a pose whose torso (joint 2 -> joint 12) has length 1. Every 7th window (i % 7 == 3) is
/// flagged corrupted and its label pushed 5 units away, as a broken window would be.
Toy linear_toy(int64_t per_file, int64_t informative, int64_t zero_pad, double noise, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t files = 12, n = files * per_file, d = informative + zero_pad;
  Toy t;
  t.informative = informative;
  PoseDataset& ds = t.ds;
  ds.root = "<toy>";
  ds.layout = Layout::wiflow;
  ds.spec = metric_spec_for("wiflow");
  torch::Tensor x = torch::zeros({n, 1, d}, torch::kFloat32);
  x.narrow(2, 0, informative).copy_(torch::randn({n, 1, informative}));
  const torch::Tensor a = 0.02 * torch::randn({informative, 2 * kJoints}, torch::kFloat64);
  torch::Tensor base = torch::zeros({kJoints, 2}, torch::kFloat64);
  for (int64_t j = 0; j < kJoints; ++j) {
    base[j][0] = 0.05 * static_cast<double>(j);
    base[j][1] = 0.5;
  }
  base[2][1] = 0.0;
  base[12][1] = 1.0;
  base[12][0] = base[2][0].item<double>();
  torch::Tensor y = torch::mm(x.narrow(2, 0, informative).flatten(1).to(torch::kFloat64), a) + base.flatten();
  y = y + noise * torch::randn({n, 2 * kJoints}, torch::kFloat64);
  ds.y = y.view({n, kJoints, 2}).to(torch::kFloat32).contiguous();
  ds.x = x;
  ds.file_id = torch::arange(n, torch::kInt64).div(per_file, "floor");
  ds.corrupted = torch::zeros({n}, torch::kBool);
  for (int64_t i = 3; i < n; i += 7) {
    ds.corrupted[i] = true;
    ds.y[i] += 5.0f;
  }
  for (int64_t f = 0; f < files; ++f) (f < 8 ? ds.split.train : f < 10 ? ds.split.val : ds.split.test).push_back(f);
  ds.split.source = "toy";
  ds.split_of_window.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const int64_t f = i / per_file;
    ds.split_of_window[static_cast<size_t>(i)] = f < 8 ? 0 : (f < 10 ? 1 : 2);
  }
  return t;
}

TEST(Baselines, RidgeRecoversALinearMap) {
  const Toy t = linear_toy(/*per_file=*/30, /*informative=*/24, /*zero_pad=*/0, /*noise=*/0.0, /*seed=*/1);
  const RidgeModel m = fit_ridge(t.ds);
  EXPECT_EQ(m.val_pck20.size(), RidgeOptions{}.lambdas.size());
  EXPECT_EQ(m.weight.sizes(), (std::vector<int64_t>{24, 2 * kJoints}));
  const torch::Tensor pred = m.predict(t.ds.x, kJoints);
  ASSERT_EQ(pred.sizes(), t.ds.y.sizes());
  const PoseMetrics test = score_on(t.ds, pred, Split::test, Subset::clean);
  EXPECT_EQ(test.num_samples, static_cast<int64_t>(t.ds.indices(Split::test, Subset::clean).size()));
  EXPECT_DOUBLE_EQ(test.pck_at(0.1), 1.0);
  EXPECT_LT(test.mpjpe, 1e-3);
  // The corrupted windows (labels 5 units off) were not fitted: the map predicts them as clean.
  const PoseMetrics full = score_on(t.ds, pred, Split::test, Subset::full);
  EXPECT_LT(full.pck_at(0.5), 1.0);

  const auto results = run_baselines(t.ds);
  ASSERT_EQ(results.size(), 2u);
  EXPECT_EQ(results[0].name, "mean_pose");
  EXPECT_EQ(results[1].name, "ridge");
  for (const auto& r : results) {
    ASSERT_EQ(r.metrics.size(), 3u);
    EXPECT_EQ(r.metrics[0].split + "/" + r.metrics[0].subset, "test/full");
    EXPECT_EQ(r.metrics[1].split + "/" + r.metrics[1].subset, "test/clean");
    EXPECT_EQ(r.metrics[2].split + "/" + r.metrics[2].subset, "val/clean");
    EXPECT_EQ(r.to_json().at("name").as_string(), r.name);
  }
  EXPECT_DOUBLE_EQ(results[1].metrics[1].pck_at(0.1), 1.0);
  EXPECT_LT(results[0].metrics[1].pck_at(0.1), 1.0);  // the mean pose cannot follow the inputs
}

TEST(Baselines, MeanPoseIsTheCleanTrainMean) {
  const Toy t = linear_toy(10, 6, 0, 0.0, 2);
  const PoseDataset& ds = t.ds;
  torch::Tensor sum = torch::zeros({kJoints, 2}, torch::kFloat64);
  int64_t count = 0, corrupted_train = 0;
  for (int64_t i = 0; i < ds.size(); ++i) {
    if (ds.split_of_window[static_cast<size_t>(i)] != 0) continue;
    if (ds.corrupted[i].item<bool>()) {
      ++corrupted_train;
      continue;
    }
    sum += ds.y[i].to(torch::kFloat64);
    ++count;
  }
  ASSERT_GT(corrupted_train, 0);
  const torch::Tensor expected = (sum / static_cast<double>(count)).to(torch::kFloat32);
  const torch::Tensor mean = fit_mean_pose(ds);
  ASSERT_EQ(mean.sizes(), (std::vector<int64_t>{kJoints, 2}));
  EXPECT_TRUE(torch::allclose(mean, expected, /*rtol=*/0, /*atol=*/1e-6)) << mean - expected;
}

TEST(Baselines, MeanPoseNeedsCleanTrainWindows) {
  Toy t = linear_toy(4, 4, 0, 0.0, 3);
  for (int64_t i = 0; i < t.ds.size(); ++i)
    if (t.ds.split_of_window[static_cast<size_t>(i)] == 0) t.ds.corrupted[i] = true;
  try {
    fit_mean_pose(t.ds);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no clean windows"), std::string::npos) << e.what();
  }
  EXPECT_THROW(fit_ridge(t.ds), Error);
}

TEST(Baselines, ScoreOnUsesOnlyTheRequestedWindows) {
  const Toy t = linear_toy(5, 4, 0, 0.0, 4);
  const PoseDataset& ds = t.ds;
  // Exact on test/clean, 1 unit off (10 torso lengths: a miss at every threshold) everywhere else.
  torch::Tensor pred = ds.y.clone() + 1.0f;
  const auto test_clean = ds.indices(Split::test, Subset::clean);
  for (int64_t i : test_clean) pred[i] = ds.y[i];
  const PoseMetrics exact = score_on(ds, pred, Split::test, Subset::clean);
  EXPECT_EQ(exact.num_samples, static_cast<int64_t>(test_clean.size()));
  EXPECT_EQ(exact.split, "test");
  EXPECT_EQ(exact.subset, "clean");
  for (double p : exact.pck) EXPECT_DOUBLE_EQ(p, 1.0);
  EXPECT_DOUBLE_EQ(exact.mpjpe, 0.0);

  const auto test_full = ds.indices(Split::test, Subset::full);
  ASSERT_GT(test_full.size(), test_clean.size());
  const PoseMetrics full = score_on(ds, pred, Split::test, Subset::full);
  EXPECT_EQ(full.num_samples, static_cast<int64_t>(test_full.size()));
  EXPECT_DOUBLE_EQ(full.pck_at(0.5), static_cast<double>(test_clean.size()) / static_cast<double>(test_full.size()));

  const PoseMetrics val = score_on(ds, pred, Split::val, Subset::clean);
  EXPECT_EQ(val.num_samples, static_cast<int64_t>(ds.indices(Split::val, Subset::clean).size()));
  EXPECT_DOUBLE_EQ(val.pck_at(0.5), 0.0);
  EXPECT_NEAR(val.mpjpe, std::sqrt(2.0), 1e-6);
}

/// w = (X^T X + lam I)^-1 X^T y on standardized clean train features, the textbook primal form.
torch::Tensor reference_weight(const PoseDataset& ds, double lam_rel, int64_t max_features) {
  const auto idx = torch::tensor(ds.indices(Split::train, Subset::clean), torch::kInt64);
  torch::Tensor x = ds.x.index_select(0, idx).flatten(1).narrow(1, 0, max_features).to(torch::kFloat64);
  x = (x - x.mean(0)) / x.std(0, /*unbiased=*/false);
  torch::Tensor y = ds.y.index_select(0, idx).flatten(1).to(torch::kFloat64);
  y = y - y.mean(0);
  const double lam = lam_rel * static_cast<double>(x.size(0)) / 1000.0;
  const auto lhs = torch::mm(x.t(), x) + lam * torch::eye(x.size(1), torch::kFloat64);
  return torch::linalg::solve(lhs, torch::mm(x.t(), y), /*left=*/true);
}

TEST(Baselines, RidgeDualAndPrimalAgree) {
  // 8 train files x 4 windows = 32 windows, minus the corrupted ones. With 10 features the solve is
  // primal (N > D); 50 more all-zero features (standardized to 0, so the same problem) make it dual.
  const Toy primal = linear_toy(4, 10, 0, 0.05, 5);
  const Toy dual = linear_toy(4, 10, 50, 0.05, 5);
  const int64_t n_train = static_cast<int64_t>(primal.ds.indices(Split::train, Subset::clean).size());
  ASSERT_GT(n_train, 10);
  ASSERT_LT(n_train, 60);
  ASSERT_TRUE(torch::equal(primal.ds.x.flatten(1), dual.ds.x.flatten(1).narrow(1, 0, 10)));
  for (double lam : {0.1, 10.0, 1000.0}) {
    SCOPED_TRACE("lambda " + std::to_string(lam));
    RidgeOptions o;
    o.lambdas = {lam};
    const RidgeModel mp = fit_ridge(primal.ds, o), md = fit_ridge(dual.ds, o);
    const torch::Tensor pp = mp.predict(primal.ds.x, kJoints), pd = md.predict(dual.ds.x, kJoints);
    EXPECT_LT((pp - pd).abs().max().item<float>(), 1e-6f);
    const torch::Tensor ref = reference_weight(primal.ds, lam, 10);
    EXPECT_LT((mp.weight - ref).abs().max().item<double>(), 1e-9);
    EXPECT_LT((md.weight.narrow(0, 0, 10) - ref).abs().max().item<double>(), 1e-9);
    EXPECT_LT(md.weight.narrow(0, 10, 50).abs().max().item<double>(), 1e-9);
  }
  // With the default lambda grid both pick the same lambda.
  EXPECT_EQ(fit_ridge(primal.ds).lambda, fit_ridge(dual.ds).lambda);
}

TEST(Baselines, RidgeSubsamplesBeyondMaxTrain) {
  const Toy t = linear_toy(30, 8, 0, 0.0, 6);
  RidgeOptions o;
  o.max_train = 50;
  const RidgeModel m = fit_ridge(t.ds, o);
  // Still exact: 50 windows determine an 8-feature linear map.
  EXPECT_DOUBLE_EQ(score_on(t.ds, m.predict(t.ds.x, kJoints), Split::test, Subset::clean).pck_at(0.1), 1.0);
}

}  // namespace
}  // namespace csipose
