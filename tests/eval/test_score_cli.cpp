// `csipose score` end to end: .npy files in, a table and a JSON report out; every bad input is a
// one-line "error: ..." and a non-zero exit.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/json.h"
#include "data/npy_torch.h"
#include "eval/pck.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::run_csipose;
using testing::TempDir;

// Two WiFlow samples, torso RShoulder(2)-LHip(12) = 1.0 in both. Sample 0 is exact; every joint of
// sample 1 is off by 0.25 in y. t*norm = 0.1 .. 0.5, so
//   PCK@10 = PCK@20 = 15/30 = 50%, PCK@30..@50 = 30/30 = 100%, MPJPE = 15 * 0.25 / 30 = 0.125.
struct Arrays {
  torch::Tensor pred, gt;
};

Arrays two_samples() {
  torch::Tensor gt = torch::zeros({2, 15, 2});
  gt.select(1, 12).select(1, 0).fill_(1.0f);
  torch::Tensor pred = gt.clone();
  pred[1].select(1, 1) += 0.25f;
  return {pred, gt};
}

using testing::line_with;

/// A failed run: non-zero exit and exactly one line, "error: ..." containing `part`.
void expect_one_line_error(const testing::RunResult& r, const std::string& part) {
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
  ASSERT_FALSE(r.output.empty());
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "expected one line, got:\n" << r.output;
  EXPECT_NE(r.output.find(part), std::string::npos) << "missing \"" << part << "\" in: " << r.output;
}

class ScoreCli : public ::testing::Test {
 protected:
  void SetUp() override {
    const Arrays a = two_samples();
    save_npy(pred_, a.pred);
    save_npy(gt_, a.gt);
  }
  TempDir dir_;
  const std::string pred_ = dir_.file("pred.npy");
  const std::string gt_ = dir_.file("gt.npy");
};

TEST_F(ScoreCli, PrintsTableAndWritesJson) {
  const std::string out_json = dir_.file("reports/score.json");
  const auto r = run_csipose({"score", "--pred", pred_, "--gt", gt_, "--dataset", "wiflow", "--split", "test",
                              "--subset", "clean", "--json", out_json});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(line_with(r.output, "metric:").find("(2,12) = (RShoulder, LHip)"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "split:").find("clean"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "PCK@10").find("50.00%"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "PCK@20").find("50.00%"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "PCK@30").find("100.00%"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "PCK@50").find("100.00%"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "MPJPE").find("0.125 pixels/1000"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "N ").find("2"), std::string::npos) << r.output;

  const Json j = Json::parse(read_text_file(out_json));
  EXPECT_EQ(j.at("split").as_string(), "test");
  EXPECT_EQ(j.at("subset").as_string(), "clean");
  EXPECT_EQ(j.at("num_samples").as_int(), 2);
  EXPECT_DOUBLE_EQ(j.at("pck").at("pck@20").as_double(), 0.5);
  EXPECT_DOUBLE_EQ(j.at("pck").at("pck@50").as_double(), 1.0);
  EXPECT_DOUBLE_EQ(j.at("mpjpe").as_double(), 0.125);
  EXPECT_EQ(j.at("spec").at("dataset").as_string(), "wiflow");
  EXPECT_EQ(j.at("spec").at("torso_a").as_int(), 2);
  EXPECT_EQ(j.at("spec").at("torso_b").as_int(), 12);
  EXPECT_NE(j.at("definition").as_string().find("inclusive"), std::string::npos);
  EXPECT_EQ(j.at("inputs").at("pred").as_string(), pred_);
  const PoseMetrics m = PoseMetrics::from_json(j);
  EXPECT_EQ(m.spec, metric_spec_for("wiflow"));
  EXPECT_DOUBLE_EQ(m.pck_per_joint[0], 0.5);
  // Written atomically: no temp file is left beside the report.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir_.file("reports")),
                          std::filesystem::directory_iterator()), 1);
}

TEST_F(ScoreCli, DefaultsAndFlatPredictions) {
  // (N, 2J) predictions are reshaped to (N, J, 2) row-major and score the same.
  const std::string flat = dir_.file("flat.npy");
  save_npy(flat, two_samples().pred.reshape({2, 30}));
  const auto r = run_csipose({"score", "--pred", flat, "--gt", gt_, "--dataset", "wiflow"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(line_with(r.output, "split:").find("unspecified"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "split:").find("full"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "PCK@20").find("50.00%"), std::string::npos) << r.output;
  EXPECT_NE(line_with(r.output, "MPJPE").find("0.125"), std::string::npos) << r.output;
}

TEST_F(ScoreCli, HelpListsOptionsWithDefaults) {
  const auto r = run_csipose({"score", "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* part : {"--pred", "--gt", "--dataset", "--split", "unspecified", "--subset", "full", "--json"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << " missing from:\n" << r.output;
}

TEST_F(ScoreCli, MissingFile) {
  expect_one_line_error(run_csipose({"score", "--pred", dir_.file("nope.npy"), "--gt", gt_, "--dataset", "wiflow"}),
                        "nope.npy");
}

TEST_F(ScoreCli, SampleCountMismatch) {
  const std::string three = dir_.file("three.npy");
  save_npy(three, torch::zeros({3, 15, 2}));
  expect_one_line_error(run_csipose({"score", "--pred", three, "--gt", gt_, "--dataset", "wiflow"}),
                        "--pred has 3 samples but --gt has 2");
}

TEST_F(ScoreCli, WrongJointCount) {
  // The wiflow arrays scored as MM-Fi (17 joints).
  expect_one_line_error(run_csipose({"score", "--pred", pred_, "--gt", gt_, "--dataset", "mmfi"}), "(2, 15, 2)");
  const std::string bad_pred = dir_.file("bad_pred.npy");
  save_npy(bad_pred, torch::zeros({2, 15, 3}));
  expect_one_line_error(run_csipose({"score", "--pred", bad_pred, "--gt", gt_, "--dataset", "wiflow"}),
                        "(2, 15, 3)");
}

TEST_F(ScoreCli, NonFiniteGroundTruth) {
  torch::Tensor gt = two_samples().gt;
  gt[1][4][0] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan_gt = dir_.file("nan_gt.npy");
  save_npy(nan_gt, gt);
  expect_one_line_error(run_csipose({"score", "--pred", pred_, "--gt", nan_gt, "--dataset", "wiflow"}),
                        "sample 1, joint 4");
}

TEST_F(ScoreCli, UnknownDataset) {
  expect_one_line_error(run_csipose({"score", "--pred", pred_, "--gt", gt_, "--dataset", "coco"}),
                        "expected one of: wiflow, mmfi");
}

TEST_F(ScoreCli, UnknownOptionAndBadValues) {
  expect_one_line_error(run_csipose({"score", "--pred", pred_, "--gt", gt_, "--dataset", "wiflow", "--bogus", "1"}),
                        "--bogus");
  expect_one_line_error(run_csipose({"score", "--pred", pred_, "--gt", gt_, "--dataset", "wiflow", "extra"}),
                        "positional");
  expect_one_line_error(run_csipose({"score", "--pre", pred_, "--gt", gt_, "--dataset", "wiflow"}), "--pre");
  expect_one_line_error(run_csipose({"score", "--gt", gt_, "--dataset", "wiflow"}), "--pred");
  expect_one_line_error(
      run_csipose({"score", "--pred", pred_, "--gt", gt_, "--dataset", "wiflow", "--subset", "dirty"}),
      "expected one of: full, clean");
}

}  // namespace
}  // namespace csipose
