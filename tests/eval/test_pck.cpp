// The locked PCK / MPJPE harness (src/eval/pck.h, MODELS.md section 4) against hand-computed values.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/json.h"
#include "eval/metric_spec.h"
#include "eval/pck.h"

namespace csipose {
namespace {

constexpr int64_t kRShoulder = 2;  // WiFlow torso pair (2, 12)
constexpr int64_t kLHip = 12;

torch::Tensor poses(int64_t batch, int64_t joints) { return torch::zeros({batch, joints, 2}, torch::kFloat64); }

/// Expects fn() to throw csipose::Error whose message contains every one of `parts`.
template <typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected csipose::Error";
  } catch (const Error& e) {
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

// Two WiFlow samples whose every distance is an offset along x, built so that each PCK value can be
// counted by hand. Offsets are at least 0.05 away from every t * norm, so rounding cannot matter.
//   sample 0: gt all at (0,0) except LHip(12) at (0.6, 0.8) -> torso = 1.0, t*norm = 0.1 .. 0.5
//             dist j0..j5 = 0.05 0.15 0.25 0.35 0.45 0.55, j6..j14 = 0 (9 joints; j12's pred sits on
//             its gt). RShoulder's pred moves by 0.25: the norm uses ground truth only.
//             hits  @10: j0 + 9 = 10   @20: 11   @30: 12   @40: 13   @50: 14
//   sample 1: gt all at (1,1) except LHip(12) at (1,3)     -> torso = 2.0, t*norm = 0.2 .. 1.0
//             dist j0..j4 = 0.3, j5..j9 = 0.7, j10..j14 = 1.1
//             hits  @10: 0   @20: 5   @30: 5   @40: 10   @50: 10
//   totals over 2 x 15 = 30 points: @10 10/30, @20 16/30, @30 17/30, @40 23/30, @50 24/30
//   MPJPE = (0.05+0.15+0.25+0.35+0.45+0.55 + 5*0.3 + 5*0.7 + 5*1.1) / 30 = (1.8 + 10.5) / 30 = 0.41
//   per joint @20 (t*norm 0.2 / 0.4): j0, j1 hit twice -> 1; j2..j4 miss / hit -> 0.5; j5 0.55 / 0.7
//             -> 0; j6..j9 0 / 0.7 -> 0.5; j10..j14 0 / 1.1 -> 0.5
struct HandCase {
  torch::Tensor pred, gt;
};

HandCase hand_case() {
  torch::Tensor gt = poses(2, 15);
  gt[0][kLHip][0] = 0.6;
  gt[0][kLHip][1] = 0.8;
  gt[1].fill_(1.0);
  gt[1][kLHip][1] = 3.0;
  torch::Tensor pred = gt.clone();
  const double dx0[6] = {0.05, 0.15, 0.25, 0.35, 0.45, 0.55};
  for (int j = 0; j < 6; ++j) pred[0][j][0] += dx0[j];
  for (int j = 0; j < 15; ++j) pred[1][j][0] += (j < 5 ? 0.3 : j < 10 ? 0.7 : 1.1);
  return {pred, gt};
}

TEST(Pck, TwoSampleHandComputed) {
  const HandCase c = hand_case();
  const PoseMetrics m = score_predictions(c.pred, c.gt, metric_spec_for("wiflow"), "test", "full");
  EXPECT_EQ(m.num_samples, 2);
  ASSERT_EQ(m.pck.size(), 5u);
  EXPECT_DOUBLE_EQ(m.pck[0], 10.0 / 30);
  EXPECT_DOUBLE_EQ(m.pck[1], 16.0 / 30);
  EXPECT_DOUBLE_EQ(m.pck[2], 17.0 / 30);
  EXPECT_DOUBLE_EQ(m.pck[3], 23.0 / 30);
  EXPECT_DOUBLE_EQ(m.pck[4], 24.0 / 30);
  EXPECT_DOUBLE_EQ(m.pck_at(0.2), 16.0 / 30);
  EXPECT_NEAR(m.mpjpe, 0.41, 1e-12);
  EXPECT_EQ(m.num_nonfinite, 0);
}

TEST(Pck, PerJointAtSecondThreshold) {
  const HandCase c = hand_case();
  const PoseMetrics m = score_predictions(c.pred, c.gt, metric_spec_for("wiflow"), "test", "full");
  const std::vector<double> expected = {1, 1, 0.5, 0.5, 0.5, 0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5};
  ASSERT_EQ(m.pck_per_joint.size(), expected.size());
  for (size_t j = 0; j < expected.size(); ++j) EXPECT_DOUBLE_EQ(m.pck_per_joint[j], expected[j]) << "joint " << j;
}

TEST(Pck, FloatInputsMatchDouble) {
  // The harness casts to float64 itself; float32 inputs of the hand case give the same counts.
  const HandCase c = hand_case();
  const auto spec = metric_spec_for("wiflow");
  const PoseMetrics d = score_predictions(c.pred, c.gt, spec, "test", "full");
  const PoseMetrics f = score_predictions(c.pred.to(torch::kFloat32), c.gt.to(torch::kFloat32), spec, "test", "full");
  EXPECT_EQ(f.pck, d.pck);
  EXPECT_NEAR(f.mpjpe, d.mpjpe, 1e-7);
}

TEST(Pck, BoundaryIsInclusive) {
  // torso = ||(0.5, 0) - (0, 0)|| = 0.5 exactly. t = 0.5 -> t*norm = 0.25 exactly, and
  // t = 0.2 -> 0.2 * 0.5 = 0.1 exactly (halving is exact, and the double nearest 0.2, halved, is
  // the double nearest 0.1). Distances 0.25 and 0.1 along one axis from 0 are exact too.
  torch::Tensor gt = poses(1, 15);
  gt[0][kLHip][0] = 0.5;
  torch::Tensor pred = gt.clone();
  pred[0][0][0] = 0.25;                       // == 0.5 * norm: hit at @50
  pred[0][1][0] = std::nextafter(0.25, 1.0);  // one ulp above: a miss even at @50
  pred[0][3][1] = 0.1;                        // == 0.2 * norm: hit from @20 on
  pred[0][4][1] = std::nextafter(0.1, 1.0);   // one ulp above: miss at @20, hit from @30 (0.15)
  const auto m = score_predictions(pred, gt, metric_spec_for("wiflow"), "test", "full");
  // 11 joints are exact (j2, j5..j14).
  EXPECT_DOUBLE_EQ(m.pck_at(0.1), 11.0 / 15);
  EXPECT_DOUBLE_EQ(m.pck_at(0.2), 12.0 / 15);  // + j3 on the boundary
  EXPECT_DOUBLE_EQ(m.pck_at(0.3), 13.0 / 15);  // + j4
  EXPECT_DOUBLE_EQ(m.pck_at(0.4), 13.0 / 15);
  EXPECT_DOUBLE_EQ(m.pck_at(0.5), 14.0 / 15);  // + j0 on the boundary; j1 never
  EXPECT_DOUBLE_EQ(m.pck_per_joint[3], 1.0);
  EXPECT_DOUBLE_EQ(m.pck_per_joint[4], 0.0);
}

TEST(Pck, BoundaryIsInclusiveInFloat32) {
  // Same boundary from float32 inputs (0.5 and 0.25 are exact in float32 as well): the harness's
  // float64 cast must not move the point off the boundary.
  torch::Tensor gt = torch::zeros({1, 15, 2});
  gt[0][kLHip][0] = 0.5f;
  torch::Tensor pred = gt.clone();
  pred[0][7][0] = 0.25f;
  PckAccumulator acc(metric_spec_for("wiflow"));
  acc.add(pred, gt);
  const auto m = acc.result("test", "full");
  EXPECT_DOUBLE_EQ(m.pck_at(0.5), 1.0);
  EXPECT_DOUBLE_EQ(m.pck_at(0.4), 14.0 / 15);
}

TEST(Pck, NormIsClampedAt001) {
  // RShoulder and LHip coincide -> torso 0 -> norm 0.01; t*norm = 0.001 .. 0.005.
  // j0 off by 0.004: hit at @50 (0.005), miss at @30 (0.003). j1 off by 0.006: always a miss.
  // The other 13 joints are exact. Without the clamp every non-zero distance would miss.
  torch::Tensor gt = poses(1, 15);
  gt[0].fill_(0.3);
  torch::Tensor pred = gt.clone();
  pred[0][0][0] += 0.004;
  pred[0][1][1] += 0.006;
  const auto m = score_predictions(pred, gt, metric_spec_for("wiflow"), "test", "full");
  EXPECT_DOUBLE_EQ(m.pck_at(0.1), 13.0 / 15);
  EXPECT_DOUBLE_EQ(m.pck_at(0.3), 13.0 / 15);
  EXPECT_DOUBLE_EQ(m.pck_at(0.5), 14.0 / 15);
  EXPECT_NEAR(m.mpjpe, (0.004 + 0.006) / 15, 1e-12);
}

TEST(Pck, BatchesAreSummedNotAveraged) {
  // 7 samples, torso 1.0, batches 3, 3, 1. Samples 0..5 are exact, sample 6 misses every joint.
  // Whole set: 6/7 at every t. The mean of per-batch means would be (1 + 1 + 0) / 3 = 2/3.
  torch::Tensor gt = poses(7, 15);
  gt.select(1, kLHip).select(1, 0).fill_(1.0);
  torch::Tensor pred = gt.clone();
  pred[6] += 10.0;
  PckAccumulator acc(metric_spec_for("wiflow"));
  acc.add(pred.slice(0, 0, 3), gt.slice(0, 0, 3));
  acc.add(pred.slice(0, 3, 6), gt.slice(0, 3, 6));
  acc.add(pred.slice(0, 6, 7), gt.slice(0, 6, 7));  // the short last batch counts
  const auto m = acc.result("test", "full");
  EXPECT_EQ(m.num_samples, 7);
  EXPECT_DOUBLE_EQ(m.pck_at(0.2), 6.0 / 7);
  EXPECT_NE(m.pck_at(0.2), 2.0 / 3);
  // MPJPE: 15 joints of sample 6 at distance 10*sqrt(2), over 7*15 points.
  EXPECT_NEAR(m.mpjpe, 15 * 10 * std::sqrt(2.0) / (7 * 15), 1e-12);
}

TEST(Pck, BatchedEqualsWholeSetOnRandomData) {
  torch::manual_seed(7);
  const torch::Tensor gt = torch::rand({7, 15, 2}, torch::kFloat64);
  const torch::Tensor pred = gt + 0.1 * torch::randn({7, 15, 2}, torch::kFloat64);
  const auto spec = metric_spec_for("wiflow");
  const auto whole = score_predictions(pred, gt, spec, "val", "full");
  PckAccumulator acc(spec);
  for (int64_t start : {0, 3, 6}) acc.add(pred.slice(0, start, std::min<int64_t>(start + 3, 7)),
                                         gt.slice(0, start, std::min<int64_t>(start + 3, 7)));
  const auto batched = acc.result("val", "full");
  EXPECT_EQ(batched.pck, whole.pck);  // integer counts: exactly equal
  EXPECT_EQ(batched.pck_per_joint, whole.pck_per_joint);
  EXPECT_NEAR(batched.mpjpe, whole.mpjpe, 1e-12);
  // An empty batch is a no-op.
  acc.add(pred.slice(0, 0, 0), gt.slice(0, 0, 0));
  EXPECT_EQ(acc.num_samples(), 7);
}

TEST(Pck, NonFinitePredictionsAreMisses) {
  // torso 1.0; j0 NaN, j1 +inf in x, everything else exact. 13/15 at every t; MPJPE inf.
  torch::Tensor gt = poses(1, 15);
  gt[0][kLHip][0] = 1.0;
  torch::Tensor pred = gt.clone();
  pred[0][0][1] = std::numeric_limits<double>::quiet_NaN();
  pred[0][1][0] = std::numeric_limits<double>::infinity();
  PckAccumulator acc(metric_spec_for("wiflow"));
  acc.add(pred, gt);
  EXPECT_EQ(acc.num_nonfinite(), 2);
  const auto m = acc.result("test", "full");
  for (double p : m.pck) EXPECT_DOUBLE_EQ(p, 13.0 / 15);
  EXPECT_TRUE(std::isinf(m.mpjpe));
  EXPECT_EQ(m.num_nonfinite, 2);
  EXPECT_NE(m.summary().find("2 non-finite"), std::string::npos) << m.summary();
  // Non-finite ground truth is a data error, not a miss.
  torch::Tensor bad_gt = gt.clone();
  bad_gt[0][5][0] = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { acc.add(gt, bad_gt); }, {"gt", "non-finite"});
}

TEST(Pck, ShapeErrorsPrintTheShapes) {
  PckAccumulator acc(metric_spec_for("wiflow"));
  expect_error([&] { acc.add(poses(2, 15), poses(3, 15)); }, {"[2, 15, 2]", "[3, 15, 2]"});
  expect_error([&] { acc.add(torch::zeros({2, 15, 3}), torch::zeros({2, 15, 3})); }, {"(B, 15, 2)", "[2, 15, 3]"});
  expect_error([&] { acc.add(torch::zeros({2, 30}), torch::zeros({2, 30})); }, {"[2, 30]"});
  expect_error([&] { acc.add(poses(2, 17), poses(2, 17)); }, {"[2, 17, 2]", "expects 15"});
  EXPECT_EQ(acc.num_samples(), 0);
  expect_error([&] { acc.result("test", "full"); }, {"no samples"});
}

TEST(Pck, MmfiSpecHas17JointsAndItsOwnTorso) {
  const auto spec = metric_spec_for("mmfi");
  EXPECT_EQ(spec.skeleton, "coco17");
  EXPECT_EQ(spec.num_joints, 17);
  EXPECT_EQ(spec.torso_a, 6);
  EXPECT_EQ(spec.torso_b, 11);
  EXPECT_EQ(joint_names(spec.skeleton)[6], "right_shoulder");
  EXPECT_EQ(joint_names(spec.skeleton)[11], "left_hip");
  PckAccumulator acc(spec);
  expect_error([&] { acc.add(poses(4, 15), poses(4, 15)); }, {"[4, 15, 2]", "expects 17"});
  // right_shoulder (6) to left_hip (11) = (0, 0.5): norm 0.5, so a 0.25 offset hits at @50 only.
  torch::Tensor gt = poses(1, 17);
  gt[0][11][1] = 0.5;
  torch::Tensor pred = gt.clone();
  pred[0][0][0] = 0.25;
  acc.add(pred, gt);
  const auto m = acc.result("test", "full");
  EXPECT_DOUBLE_EQ(m.pck_at(0.4), 16.0 / 17);
  EXPECT_DOUBLE_EQ(m.pck_at(0.5), 1.0);
}

TEST(MetricSpec, LockedSpecs) {
  const auto w = metric_spec_for("wiflow");
  EXPECT_EQ(w.skeleton, "body25_15");
  EXPECT_EQ(w.num_joints, 15);
  EXPECT_EQ(w.torso_a, 2);
  EXPECT_EQ(w.torso_b, 12);
  EXPECT_EQ(w.units, "pixels/1000");
  EXPECT_DOUBLE_EQ(w.norm_clamp, 0.01);
  EXPECT_EQ(w.thresholds, (std::vector<double>{0.1, 0.2, 0.3, 0.4, 0.5}));
  EXPECT_EQ(metric_spec_for("mmfi").units, "normalized image coordinates [0,1]");
  expect_error([] { metric_spec_for("coco"); }, {"\"coco\"", "wiflow, mmfi"});
}

TEST(MetricSpec, DescribeNamesEverything) {
  const std::string d = metric_spec_for("wiflow").describe();
  for (const char* part : {"RShoulder", "LHip", "(2,12)", "0.01", "<=", "inclusive", "0.1, 0.2, 0.3, 0.4, 0.5",
                           "pixels/1000"})
    EXPECT_NE(d.find(part), std::string::npos) << part << " missing from: " << d;
  EXPECT_EQ(d.find('\n'), std::string::npos);
  const std::string m = metric_spec_for("mmfi").describe();
  EXPECT_NE(m.find("right_shoulder"), std::string::npos) << m;
  EXPECT_NE(m.find("left_hip"), std::string::npos) << m;
}

TEST(MetricSpec, PckNames) {
  EXPECT_EQ(pck_name(0.1), "pck@10");
  EXPECT_EQ(pck_name(0.2), "pck@20");
  EXPECT_EQ(pck_name(0.3), "pck@30");  // 0.3 * 100 = 30.000000000000004
  EXPECT_EQ(pck_name(0.125), "pck@12.5");
}

TEST(MetricSpec, JsonRoundTripAndMismatchMessages) {
  const auto w = metric_spec_for("wiflow");
  const auto back = MetricSpec::from_json(Json::parse(w.to_json().dump()));
  EXPECT_EQ(back, w);
  EXPECT_NO_THROW(require_same_spec(w, back));

  MetricSpec computed = w;
  computed.thresholds = {0.1, 0.1 * 2, 0.1 * 3, 0.1 * 4, 0.1 * 5};  // 0.1 * 3 = 0.30000000000000004
  EXPECT_EQ(computed, w);

  MetricSpec other = w;
  other.norm_clamp = 0.02;
  EXPECT_NE(other, w);
  expect_error([&] { require_same_spec(w, other); }, {"norm_clamp", "0.01", "0.02", "not comparable"});
  expect_error([&] { require_same_spec(w, metric_spec_for("mmfi")); }, {"dataset", "\"wiflow\"", "\"mmfi\""});
  other = w;
  other.torso_b = 9;
  expect_error([&] { require_same_spec(w, other); }, {"torso pair", "(2,12)", "(2,9)"});
  other = w;
  other.thresholds = {0.1, 0.2};
  expect_error([&] { require_same_spec(w, other); }, {"thresholds", "{0.1, 0.2}"});

  Json bad = w.to_json();
  bad.set("torso_b", 15);
  expect_error([&] { MetricSpec::from_json(bad); }, {"torso pair", "out of range"});
}

TEST(PoseMetrics, JsonRoundTrip) {
  const HandCase c = hand_case();
  const PoseMetrics m = score_predictions(c.pred, c.gt, metric_spec_for("wiflow"), "test", "clean");
  const Json j = Json::parse(m.to_json().dump(2));
  EXPECT_EQ(j.at("definition").as_string(), m.spec.describe());
  EXPECT_NEAR(j.at("pck").at("pck@20").as_double(), 16.0 / 30, 1e-9);
  const PoseMetrics back = PoseMetrics::from_json(j);
  EXPECT_EQ(back.spec, m.spec);
  EXPECT_EQ(back.split, "test");
  EXPECT_EQ(back.subset, "clean");
  EXPECT_EQ(back.num_samples, 2);
  ASSERT_EQ(back.pck.size(), m.pck.size());
  EXPECT_EQ(back.pck, m.pck);  // JSON writes the shortest digits that read back as the same double
  EXPECT_EQ(back.mpjpe, m.mpjpe);
  EXPECT_EQ(back.pck_per_joint, m.pck_per_joint);
  EXPECT_NO_THROW(metric_difference(m, back));

  // inf MPJPE is written as null and read back as inf.
  PoseMetrics inf = m;
  inf.mpjpe = std::numeric_limits<double>::infinity();
  inf.num_nonfinite = 3;
  const PoseMetrics inf_back = PoseMetrics::from_json(Json::parse(inf.to_json().dump()));
  EXPECT_TRUE(std::isinf(inf_back.mpjpe));
  EXPECT_EQ(inf_back.num_nonfinite, 3);
}

TEST(PoseMetrics, SummaryAndPckAt) {
  const HandCase c = hand_case();
  const PoseMetrics m = score_predictions(c.pred, c.gt, metric_spec_for("wiflow"), "test", "clean");
  EXPECT_EQ(m.summary(), "PCK@20 53.33%  MPJPE 0.41 (test/clean, 2 samples)")
      << "MPJPE prints with %.6g; 16/30 = 53.33%";
  EXPECT_DOUBLE_EQ(m.pck_at(0.2 + 1e-12), 16.0 / 30);
  expect_error([&] { m.pck_at(0.25); }, {"0.25", "pck@20"});
}

TEST(PoseMetrics, DifferenceRefusesIncomparableResults) {
  const HandCase c = hand_case();
  const auto spec = metric_spec_for("wiflow");
  const PoseMetrics fp32 = score_predictions(c.gt, c.gt, spec, "test", "clean");  // perfect
  const PoseMetrics int8 = score_predictions(c.pred, c.gt, spec, "test", "clean");
  const auto d = metric_difference(fp32, int8);
  ASSERT_EQ(d.size(), 6u);  // 5 thresholds + MPJPE
  EXPECT_DOUBLE_EQ(d[1], 16.0 / 30 - 1.0);
  EXPECT_NEAR(d[5], 0.41, 1e-12);

  expect_error([&] { metric_difference(fp32, score_predictions(c.pred, c.gt, spec, "test", "full")); },
               {"not comparable", "subset", "\"clean\"", "\"full\""});
  expect_error([&] { metric_difference(fp32, score_predictions(c.pred, c.gt, spec, "val", "clean")); },
               {"not comparable", "split", "\"test\"", "\"val\""});
  MetricSpec other = spec;
  other.torso_a = 1;  // "Neck" instead of "RShoulder": a different metric
  expect_error([&] { metric_difference(fp32, score_predictions(c.pred, c.gt, other, "test", "clean")); },
               {"not comparable", "torso pair"});
  torch::Tensor gt17 = poses(2, 17);
  gt17[0][11][0] = 1.0;
  gt17[1][11][0] = 1.0;
  const auto mmfi = score_predictions(gt17, gt17, metric_spec_for("mmfi"), "test", "clean");
  expect_error([&] { metric_difference(fp32, mmfi); }, {"not comparable", "dataset"});
}

TEST(Pck, AgreesWithCpu_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(3);
  const torch::Tensor gt = torch::rand({64, 15, 2});
  const torch::Tensor pred = gt + 0.05 * torch::randn({64, 15, 2});
  const auto spec = metric_spec_for("wiflow");
  const auto cpu = score_predictions(pred, gt, spec, "test", "full");
  const auto gpu = score_predictions(pred.cuda(), gt.cuda(), spec, "test", "full");
  EXPECT_EQ(gpu.pck, cpu.pck);
  EXPECT_EQ(gpu.pck_per_joint, cpu.pck_per_joint);
  EXPECT_NEAR(gpu.mpjpe, cpu.mpjpe, 1e-12);
}

}  // namespace
}  // namespace csipose
