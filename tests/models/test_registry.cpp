// The model factory, checkpoints, weight import/export and the models/weights/predict commands.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>

#include "common/config_node.h"
#include "common/json.h"
#include "data/npy_torch.h"
#include "models/checkpoint.h"
#include "models/registry.h"
#include "models/safetensors.h"
#include "testing.h"

namespace csipose {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

// Published parameter counts (MODELS.md sections 1-2) and those pinned by the family tests.
TEST(Registry, EveryPresetBuildsWithItsExactParameterCount) {
  const std::map<std::string, int64_t> expected = {
      {"wiflow_full", 2225042}, {"wiflow_half", 843834}, {"wiflow_quarter", 338600}, {"wiflow_tiny", 56290},
      {"pose_nano", 39971},     {"pose_micro", 75237},   {"pose_tiny", 210949},      {"pose_small", 348005},
      {"pose_base", 726437},    {"pose_flagship", 2320869}};
  ASSERT_EQ(model_preset_names().size(), expected.size());
  for (const auto& name : model_preset_names()) {
    auto net = make_model(model_preset(name));
    EXPECT_EQ(count_parameters(*net), expected.at(name)) << name;
  }
}

TEST(Registry, ShippedConfigFilesEqualThePresets) {
  for (const auto& name : model_preset_names()) {
    const ModelConfig from_file = resolve_model_config(testing::source_path("configs/models/" + name + ".yaml"));
    EXPECT_EQ(from_file.to_yaml(), model_preset(name).to_yaml()) << name;
  }
}

TEST(Registry, YamlSelectsFamilyStartsFromPresetAndRejectsUnknownKeys) {
  const ConfigNode n = ConfigNode::load_string("type: wiflow\npreset: wiflow_half\ndropout: 0.1\n", "<t>");
  const ModelConfig c = ModelConfig::from_yaml(n);
  n.finish();
  EXPECT_EQ(c.wiflow.tcn_channels, (std::vector<int64_t>{270, 220, 170, 120}));
  EXPECT_DOUBLE_EQ(c.wiflow.dropout, 0.1);

  const ConfigNode bad = ConfigNode::load_string("type: wiflow\npreset: wiflow_half\ndropuot: 0.1\n", "<t>");
  ModelConfig ignored = ModelConfig::from_yaml(bad);
  try {
    bad.finish();
    FAIL() << "a misspelled key was accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("<t>:3: dropuot: unknown key"));
  }
  try {
    ModelConfig::from_yaml(ConfigNode::load_string("type: wiflow\npreset: pose_micro\n", "<t>"));
    FAIL() << "family mismatch accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("<t>:2: preset: preset \"pose_micro\" is a pose_transformer model, but type is wiflow"));
  }
  try {
    ModelConfig::from_yaml(ConfigNode::load_string("type: cnn\n", "<t>"));
    FAIL() << "unknown type accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("type: unknown value \"cnn\"; expected one of: wiflow, pose_transformer"));
  }
  EXPECT_THROW(model_preset("wiflow_double"), Error);
}

TEST(Checkpoint, RoundTripGivesIdenticalOutputs) {
  TempDir dir;
  for (const std::string name : {"wiflow_tiny", "pose_micro"}) {
    torch::manual_seed(3);
    const ModelConfig cfg = model_preset(name);
    auto net = make_model(cfg);
    // Non-trivial BatchNorm statistics, so buffers must round-trip too.
    for (auto& kv : net->named_buffers())
      if (kv.key().find("running_") != std::string::npos) kv.value().uniform_(0.5, 1.5);
    net->eval();
    const std::string path = dir.file(name + ".ckpt");
    save_checkpoint(path, cfg, *net);
    const Checkpoint ck = load_checkpoint(path);
    EXPECT_EQ(ck.config.to_yaml(), cfg.to_yaml());
    std::vector<int64_t> shape{4};
    for (int64_t d : net->input_shape()) shape.push_back(d);
    torch::NoGradGuard ng;
    const auto x = torch::rand(shape);
    EXPECT_TRUE(torch::equal(net->forward(x), ck.model->forward(x))) << name;
  }
}

TEST(Checkpoint, ExportImportRoundTripAndPyTorchNames) {
  TempDir dir;
  torch::manual_seed(5);
  const ModelConfig cfg = model_preset("wiflow_tiny");
  auto net = make_model(cfg);
  net->eval();
  export_weights(dir.file("w.safetensors"), cfg, *net);
  const SafetensorsFile file = load_safetensors(dir.file("w.safetensors"));
  EXPECT_TRUE(file.tensors.count("tcn.network.0.conv1_group.weight"));  // no "model." prefix
  EXPECT_EQ(file.metadata.at("format"), "pt");
  auto back = import_weights(dir.file("w.safetensors"), cfg);
  torch::NoGradGuard ng;
  const auto x = torch::rand({2, 540, 20});
  EXPECT_TRUE(torch::equal(net->forward(x), back->forward(x)));
  // Weights of another preset do not fit: the error names the mismatch.
  try {
    import_weights(dir.file("w.safetensors"), model_preset("wiflow_half"));
    FAIL() << "mismatched weights accepted";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("does not fit model wiflow_half"));
    EXPECT_THAT(e.what(), HasSubstr("shape mismatch"));
  }
}

TEST(Checkpoint, BadFilesAreClearErrors) {
  TempDir dir;
  EXPECT_THROW(load_checkpoint(dir.file("missing.ckpt")), Error);
  testing::write_file(dir.file("garbage.ckpt"), "this is not a checkpoint");
  try {
    load_checkpoint(dir.file("garbage.ckpt"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("garbage.ckpt"));
  }
  const ModelConfig cfg = model_preset("pose_nano");
  auto net = make_model(cfg);
  export_weights(dir.file("plain.safetensors"), cfg, *net);
  try {
    load_checkpoint(dir.file("plain.safetensors"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("not a csipose checkpoint"));
  }
  save_checkpoint(dir.file("good.ckpt"), cfg, *net, {});
  // A truncated checkpoint (a crash mid-copy) is rejected, never half-loaded.
  std::ifstream in(dir.file("good.ckpt"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  testing::write_file(dir.file("truncated.ckpt"), bytes.substr(0, bytes.size() / 2));
  EXPECT_THROW(load_checkpoint(dir.file("truncated.ckpt")), Error);
}

TEST(ModelsCli, TableJsonAndYaml) {
  auto r = testing::run_csipose({"models"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("wiflow_half"));
  EXPECT_THAT(r.output, HasSubstr("843834"));
  EXPECT_THAT(r.output, HasSubstr("2320869"));
  r = testing::run_csipose({"models", "--json"});
  ASSERT_EQ(r.exit_code, 0);
  const auto start = r.output.find('[');
  ASSERT_NE(start, std::string::npos);
  const Json j = Json::parse(r.output.substr(start));
  ASSERT_EQ(j.size(), model_preset_names().size());
  EXPECT_EQ(j.at(1).at("preset").as_string(), "wiflow_half");
  EXPECT_EQ(j.at(1).at("parameters").as_int(), 843834);
  EXPECT_EQ(j.at(1).at("macs_per_sample").as_int(), make_model(model_preset("wiflow_half"))->macs_per_sample());
  r = testing::run_csipose({"models", "--yaml", "pose_micro"});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.output, model_preset("pose_micro").to_yaml());
}

TEST(WeightsCli, InitExportImportPredict) {
  TempDir dir;
  auto r = testing::run_csipose({"weights", "init", "--model", "wiflow_tiny", "--seed", "1", "--out", dir.file("a.ckpt")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = testing::run_csipose({"weights", "export", "--checkpoint", dir.file("a.ckpt"), "--out", dir.file("a.safetensors")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = testing::run_csipose({"weights", "import", "--model", "wiflow_tiny", "--weights", dir.file("a.safetensors"), "--out",
                            dir.file("b.ckpt")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  torch::manual_seed(0);
  const auto x = torch::rand({5, 540, 20});
  save_npy(dir.file("x.npy"), x);
  for (const std::string ck : {"a.ckpt", "b.ckpt"}) {
    r = testing::run_csipose({"predict", "--checkpoint", dir.file(ck), "--input", dir.file("x.npy"), "--output",
                              dir.file(ck + ".npy"), "--device", "cpu", "--batch-size", "2"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  const auto ya = load_npy(dir.file("a.ckpt.npy")), yb = load_npy(dir.file("b.ckpt.npy"));
  EXPECT_EQ(ya.sizes(), (std::vector<int64_t>{5, 15, 2}));
  EXPECT_TRUE(torch::equal(ya, yb));
  // predict in batches of 2 equals one forward pass of the checkpoint's model.
  const Checkpoint ck = load_checkpoint(dir.file("a.ckpt"));
  torch::NoGradGuard ng;
  EXPECT_LT((ck.model->forward(x) - ya).abs().max().item<float>(), 1e-6f);
}

TEST(WeightsCli, ErrorsAreOneLine) {
  TempDir dir;
  auto expect_error = [](const std::vector<std::string>& args, const std::string& needle) {
    const auto r = testing::run_csipose(args);
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr(needle));
    EXPECT_THAT(r.output, HasSubstr("error: "));
  };
  expect_error({"weights", "init", "--model", "wiflow_double", "--out", dir.file("x.ckpt")}, "unknown model preset");
  expect_error({"weights", "frobnicate"}, "unknown action \"frobnicate\"");
  expect_error({"predict", "--checkpoint", dir.file("none.ckpt"), "--input", "x", "--output", "y"}, "does not exist");
  ASSERT_EQ(testing::run_csipose({"weights", "init", "--model", "pose_nano", "--out", dir.file("p.ckpt")}).exit_code, 0);
  save_npy(dir.file("wrong.npy"), torch::rand({2, 540, 20}));
  expect_error({"predict", "--checkpoint", dir.file("p.ckpt"), "--input", dir.file("wrong.npy"), "--output", dir.file("o.npy"),
                "--device", "cpu"},
               "does not fit the model; expected (N, 3, 114, 10)");
  auto nan = torch::rand({2, 3, 114, 10});
  nan[1][0][0][0] = std::numeric_limits<float>::quiet_NaN();
  save_npy(dir.file("nan.npy"), nan);
  expect_error({"predict", "--checkpoint", dir.file("p.ckpt"), "--input", dir.file("nan.npy"), "--output", dir.file("o.npy"),
                "--device", "cpu"},
               "sample 1 has non-finite values");
  if (!torch::cuda::is_available())
    expect_error({"predict", "--checkpoint", dir.file("p.ckpt"), "--input", dir.file("nan.npy"), "--output", dir.file("o.npy"),
                  "--device", "cuda"},
                 "CUDA is not available");
}

TEST(Predict, CpuAndCudaAgree_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  for (const std::string name : {"wiflow_half", "pose_micro"}) {
    torch::manual_seed(7);
    auto net = make_model(model_preset(name));
    net->eval();
    std::vector<int64_t> shape{8};
    for (int64_t d : net->input_shape()) shape.push_back(d);
    const auto x = torch::rand(shape);
    torch::NoGradGuard ng;
    const auto cpu = net->forward(x);
    net->to(torch::kCUDA);
    const auto gpu = net->forward(x.to(torch::kCUDA)).cpu();
    EXPECT_LT((cpu - gpu).abs().max().item<float>(), 1e-4f) << name;
  }
}

}  // namespace
}  // namespace csipose
