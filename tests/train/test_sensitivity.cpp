// Per-layer sensitivity and the accuracy-budget search (train/sensitivity.h) on a pose_nano whose
// labels are its own fp32 predictions: fp32 then scores PCK 100% / MPJPE 0 exactly, so any
// quantization error can only make the metric worse and the drops are not masked by a weak model.
// One op is made fragile on purpose (2-bit weights and activations in the policy): it must rank
// first, and it must be the one op --auto-budget moves back to fp32.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/config_node.h"
#include "common/json.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/synth/generator.h"
#include "data/synth/synth_config.h"
#include "models/pose_model.h"
#include "models/registry.h"
#include "quant/prepare.h"
#include "train/evaluate.h"
#include "train/loss.h"
#include "train/sensitivity.h"
#include "testing.h"

namespace csipose {
namespace {

constexpr const char* kFragile = "tf.layers.0.linear1";

struct RelabelledNano {
  testing::TempDir dir;
  PoseDataset data;
  std::shared_ptr<PoseModelImpl> model;
};

/// A seeded pose_nano and the MM-Fi-layout synthetic data relabelled with its own predictions.
RelabelledNano make_setup() {
  RelabelledNano s;
  generate_synthetic(SynthConfig::from_yaml(ConfigNode::load_string(
                         "layout: mmfi\nsubjects: 2\nactivities: [wave, squat]\nsessions: 3\nwindows_per_file: 8\n",
                         "<test>")),
                     s.dir.file("data"), 1);
  s.data = open_dataset(s.dir.file("data"));
  torch::manual_seed(5);
  s.model = make_model(model_preset("pose_nano"));
  s.model->eval();
  torch::NoGradGuard no_grad;
  s.data.y = s.model->forward(s.data.x).detach().clone();
  return s;
}

PreparedModel calibrate(RelabelledNano& s, const QuantPolicy& policy) {
  PreparedModel p = prepare(*s.model, policy, s.model->bn_fold_pairs());
  p.set_mode(QuantMode::observe);
  {
    torch::NoGradGuard no_grad;
    s.model->forward(s.data.x.index_select(0, torch::tensor(s.data.indices(Split::train))));
  }
  p.freeze_observers(true);
  p.set_mode(QuantMode::fake_quant);
  return p;
}

QuantPolicy fragile_policy() {
  ConfigNode node = ConfigNode::load_string(std::string("rules:\n  - match: \"") + kFragile +
                                                "\"\n    weights: {bits: 2}\n    activations: {bits: 2}\n",
                                            "<test>");
  QuantPolicy p = QuantPolicy::from_yaml(node);
  node.finish();
  p.activation_observer.type = ObserverType::minmax;
  return p;
}

TEST(Sensitivity, FragileLayerRanksFirstAndAutoBudgetMovesOnlyIt) {
  RelabelledNano s = make_setup();
  const PoseLoss loss(skeleton_bones(s.data.spec.skeleton), s.data.num_joints());
  const EvalSet val(s.data, Split::val, torch::kCPU, 64);
  const MonitorSpec metric = MonitorSpec::parse("val/clean/pck@20", "<test>");
  PreparedModel prepared = calibrate(s, fragile_policy());
  const torch::Tensor probe = s.data.x.index_select(0, torch::tensor(s.data.indices(Split::val)));

  const SensitivityReport r = layer_sensitivity(*s.model, prepared, val, loss, probe, metric);
  ASSERT_EQ(r.layers.size(), prepared.hooks.size());
  EXPECT_DOUBLE_EQ(r.fp32, 100.0);  // labels are the fp32 predictions
  EXPECT_EQ(r.probe_windows, probe.size(0));
  const std::vector<size_t> rank = r.ranking();
  EXPECT_EQ(r.layers[rank[0]].name, kFragile) << r.table();
  EXPECT_GT(r.layers[rank[0]].drop, 10.0) << r.table();
  for (const LayerSensitivity& l : r.layers) {
    EXPECT_GE(l.drop, 0.0) << l.name;  // nothing beats 100%
    EXPECT_DOUBLE_EQ(l.drop, r.fp32 - l.only_this) << l.name;
    if (l.name != kFragile) {
      EXPECT_LT(l.drop, 2.0) << l.name << "\n" << r.table();
    }
  }
  // SQNR: the fragile op's own output is the worst of all the ops before it in the model.
  size_t fragile = 0;
  while (r.layers[fragile].name != kFragile) ++fragile;
  for (size_t i = 0; i < fragile; ++i) EXPECT_GT(r.layers[i].sqnr_db, r.layers[fragile].sqnr_db + 10) << r.layers[i].name;
  EXPECT_LT(r.layers[fragile].sqnr_db, 15.0);
  EXPECT_LT(r.quantized, 90.0);  // the fragile op is in the all-quantized model too
  for (const auto& [name, hook] : prepared.hooks) EXPECT_EQ(hook->mode(), QuantMode::fake_quant) << name;

  // The search: all quantized misses a 2-point budget; moving the fragile op alone meets it.
  const AutoBudgetResult a = auto_budget(*s.model, prepared, val, loss, r, /*budget=*/2.0);
  EXPECT_TRUE(a.met) << a.table();
  ASSERT_EQ(a.fp32_layers, std::vector<std::string>{kFragile}) << a.table();
  ASSERT_EQ(a.steps.size(), 2u);
  EXPECT_GT(a.steps[0].drop, 2.0);
  EXPECT_LE(a.steps[1].drop, 2.0);
  EXPECT_NEAR(a.steps[1].value, val.evaluate(*s.model, loss, {"identity"}).clean.pck_at(0.2) * 100, 1e-9);

  std::printf("%s\n%s\n", r.table().c_str(), a.table().c_str());

  // The written policy keeps that op in fp32 (no hook) and reproduces the searched model exactly.
  const QuantPolicy chosen = with_fp32_layers(fragile_policy(), a.fp32_layers);
  EXPECT_FALSE(chosen.resolve(kFragile).weights.has_value());
  EXPECT_FALSE(chosen.resolve(kFragile).activations.has_value());
  unprepare(*s.model);
  PreparedModel again = calibrate(s, chosen);
  EXPECT_EQ(again.hooks.size(), prepared.hooks.size() - 1);
  EXPECT_DOUBLE_EQ(metric_value(val.evaluate(*s.model, loss, {"identity"}), metric), a.steps[1].value);

  EXPECT_THROW(auto_budget(*s.model, again, val, loss, r, -1.0), Error);  // a negative budget
  // The metric must be on the split the model is evaluated on.
  const EvalSet test(s.data, Split::test, torch::kCPU, 64);
  EXPECT_THROW(layer_sensitivity(*s.model, again, test, loss, probe, metric), Error);
}

TEST(Sensitivity, MpjpeDropIsQuantizedMinusFp32) {
  const MonitorSpec mpjpe = MonitorSpec::parse("val/clean/mpjpe", "<t>");
  const MonitorSpec pck = MonitorSpec::parse("val/full/pck@50", "<t>");
  EXPECT_DOUBLE_EQ(metric_drop(mpjpe, 0.010, 0.013), 0.003);
  EXPECT_DOUBLE_EQ(metric_drop(pck, 91.0, 90.5), 0.5);
  EXPECT_THROW(MonitorSpec::parse("test/clean/pck@20", "ptq --metric"), Error);  // never search on test
  QuantPolicy p;
  EXPECT_THROW(with_fp32_layers(p, {"tf.*"}), Error);
  const QuantPolicy q = with_fp32_layers(p, {"head.0", "att"});
  ASSERT_EQ(q.rules.size(), 2u);
  EXPECT_EQ(q.first_match("att"), 1);
  EXPECT_FALSE(q.resolve("head.0").weights.has_value());
  EXPECT_TRUE(q.resolve("head.2").weights.has_value());
}

// The CLI: ptq --auto-budget writes the sensitivity table and the search into the JSON, the chosen
// policy (--policy-out) and a .csq of exactly that mixed-precision model.
TEST(Sensitivity, PtqAutoBudgetCli) {
  RelabelledNano s = make_setup();  // only its data directory: the labels on disk are the synthetic ones
  testing::TempDir tmp;
  auto r = testing::run_csipose({"weights", "init", "--model", "pose_nano", "--seed", "1", "--out", tmp.file("m.ckpt")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  testing::write_file(tmp.file("frag.yaml"), std::string("rules:\n  - match: \"") + kFragile +
                                                 "\"\n    weights: {bits: 2}\n    activations: {bits: 2}\n");
  const std::vector<std::string> base = {"ptq", "--checkpoint", tmp.file("m.ckpt"), "--data", s.dir.file("data"),
                                         "--calibration", "2", "--batch-size", "16", "--observer", "minmax",
                                         "--policy", tmp.file("frag.yaml")};
  auto args = base;
  for (const char* a : {"--metric", "val/clean/mpjpe", "--auto-budget", "0", "--policy-out"}) args.push_back(a);
  for (const std::string& a : {tmp.file("chosen.yaml"), std::string("--out"), tmp.file("m.csq"), std::string("--json"), tmp.file("p.json")})
    args.push_back(a);
  r = testing::run_csipose(args);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("per-layer sensitivity, val/clean/mpjpe (10 quantized ops"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("auto-budget: max drop of val/clean/mpjpe"), std::string::npos) << r.output;
  const Json j = Json::parse(read_text_file(tmp.file("p.json")));
  EXPECT_EQ(j.at("sensitivity").at("layers_most_sensitive_first").size(), 10u);
  const Json& a = j.at("auto_budget");
  const size_t moved = a.at("fp32_layers").size();
  EXPECT_EQ(a.at("steps").size(), moved + 1);
  EXPECT_EQ(j.at("quantized_ops").as_int(), static_cast<int64_t>(10 - moved));
  const QuantPolicy chosen = QuantPolicy::load_file(tmp.file("chosen.yaml"));
  for (size_t i = 0; i < moved; ++i) {
    const std::string name = a.at("fp32_layers").at(i).as_string();
    EXPECT_FALSE(chosen.resolve(name).weights.has_value()) << name;
    EXPECT_FALSE(chosen.resolve(name).activations.has_value()) << name;
  }
  // The .csq holds the chosen policy and evaluates as ptq reported.
  r = testing::run_csipose({"eval", "--checkpoint", tmp.file("m.csq"), "--data", s.dir.file("data"), "--json", tmp.file("e.json")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Json::parse(read_text_file(tmp.file("e.json"))).at("result").at("clean").dump(), j.at("int8").at("clean").dump());
  // The search never looks at the test split.
  args = base;
  for (const char* a2 : {"--metric", "test/clean/pck@20", "--auto-budget", "1"}) args.push_back(a2);
  r = testing::run_csipose(args);
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("is not a validation metric"), std::string::npos) << r.output;
}

// qat --auto-budget: the search runs on the PTQ-calibrated warm start before the run, the run's
// config.yaml holds the chosen policy (so --resume trains the same one), and the QAT report shows
// the search and the per-layer sensitivity table of the trained model.
TEST(Sensitivity, QatAutoBudgetCli) {
  RelabelledNano s = make_setup();
  testing::TempDir tmp;
  auto r = testing::run_csipose({"weights", "init", "--model", "pose_nano", "--seed", "1", "--out", tmp.file("m.ckpt")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string cfg = "name: q\nseed: 0\ndata: {root: \"" + s.dir.file("data") +
                          "\"}\nmodel: {type: pose_transformer, preset: pose_nano}\n"
                          "train: {epochs: 2, batch_size: 16, eval_batch_size: 64, init_output: none}\n"
                          "qat:\n  init_from: \"" + tmp.file("m.ckpt") + "\"\n  policy:\n    rules:\n      - match: \"" +
                          kFragile + "\"\n        weights: {bits: 2}\n        activations: {bits: 2}\n";
  testing::write_file(tmp.file("q.yaml"), cfg);
  const std::string dir = tmp.file("run");
  r = testing::run_csipose({"qat", "--config", tmp.file("q.yaml"), "--run-dir", dir, "--auto-budget", "0", "--metric",
                            "val/clean/mpjpe", "--calibration", "2", "--stop-after", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("auto-budget: max drop of val/clean/mpjpe"), std::string::npos) << r.output;
  const Json search = Json::parse(read_text_file(dir + "/auto_budget.json"));
  const Json& moved = search.at("search").at("fp32_layers");
  ASSERT_GE(moved.size(), 1u);  // with budget 0 at least the fragile op moves
  bool fragile_moved = false;
  for (size_t i = 0; i < moved.size(); ++i) fragile_moved = fragile_moved || moved.at(i).as_string() == kFragile;
  EXPECT_TRUE(fragile_moved);
  // The run's config holds the chosen policy: a resume trains exactly it, without searching again.
  const ExperimentConfig saved = ExperimentConfig::load(dir + "/config.yaml");
  for (size_t i = 0; i < moved.size(); ++i) {
    EXPECT_FALSE(saved.qat.policy.resolve(moved.at(i).as_string()).weights.has_value());
    EXPECT_FALSE(saved.qat.policy.resolve(moved.at(i).as_string()).activations.has_value());
  }
  r = testing::run_csipose({"qat", "--resume", dir, "--auto-budget", "1"});
  EXPECT_EQ(r.exit_code, 1);
  r = testing::run_csipose({"qat", "--resume", dir});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json q = Json::parse(read_text_file(dir + "/report.json")).at("quantization");
  EXPECT_EQ(q.at("quantized_ops").as_int(), static_cast<int64_t>(10 - moved.size()));
  EXPECT_EQ(q.at("auto_budget").at("search").dump(), search.at("search").dump());
  // The sensitivity table of the trained model covers exactly the ops it quantizes.
  EXPECT_EQ(q.at("sensitivity").at("layers_most_sensitive_first").size(), 10 - moved.size());
  const std::string md = read_text_file(dir + "/report.md");
  EXPECT_NE(md.find("## Per-layer sensitivity of the QAT model"), std::string::npos) << md;
  EXPECT_NE(md.find("## Accuracy-budget search before QAT"), std::string::npos) << md;
  // The search never looks at the test split.
  r = testing::run_csipose({"qat", "--config", tmp.file("q.yaml"), "--run-dir", tmp.file("run2"), "--auto-budget", "1",
                            "--metric", "test/clean/pck@20"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("is not a validation metric"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace csipose
