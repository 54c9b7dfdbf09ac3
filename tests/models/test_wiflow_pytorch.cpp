// WiFlow cross-checked against an independent PyTorch implementation of MODELS.md section 1
// (tests/models/python/wiflow_ref.py, run with Debian's /usr/bin/python3 and its torch): our
// state dict, exported with save_safetensors, loads there with load_state_dict(strict=True), and
// both forwards agree in eval mode with every BatchNorm carrying non-trivial statistics.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/npy_torch.h"
#include "models/safetensors.h"
#include "models/wiflow.h"
#include "quant/qmodules.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::TempDir;

constexpr const char* kSystemPython = "/usr/bin/python3";
constexpr double kTolerance = 1e-5;

#define SKIP_WITHOUT_TORCH_PYTHON()        \
  if (!testing::system_python_has_torch()) \
  GTEST_SKIP() << kSystemPython << " cannot import torch; WiFlow PyTorch cross-check skipped"

// ---- the model under test and the reference run --------------------------------------------------

std::string list_json(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

std::string config_json(const WiFlowConfig& c) {
  std::ostringstream o;
  o << "{\"tcn_channels\": " << list_json(c.tcn_channels) << ", \"conv_channels\": " << list_json(c.conv_channels)
    << ", \"attn_groups\": " << c.attn_groups << ", \"groups_mode\": \"" << to_string(c.groups_mode)
    << "\", \"input_pw_groups\": " << c.input_pw_groups << ", \"input_channels\": " << c.input_channels
    << ", \"time_steps\": " << c.time_steps << ", \"keypoints\": " << c.keypoints << "}";
  return o.str();
}

/// A model from `config` with seeded initialization and non-trivial BatchNorms, in eval mode.
///
/// Random BN statistics alone (mean ~ 0, var in [0.5, 2]) leave a freshly initialized WiFlow
/// input-independent: the un-normalized activations shrink ~3x per layer, and by the attention the
/// output varies by < 1e-7 between inputs, so a comparison would check little beyond biases. So
/// every BN first gets a random affine (weight in [0.5, 1.5], bias ~ N(0, 0.2)), then its running
/// statistics are calibrated on one random batch (train mode, momentum 1, dropout 0), then made
/// non-trivial: var *= U(0.5, 2), mean += N(0, 0.2) * sqrt(var).
WiFlow make_model(WiFlowConfig config, uint64_t seed) {
  torch::manual_seed(seed);
  config.dropout = 0;  // training-only; keeps the calibration pass deterministic
  config.dropout2d = 0;
  WiFlow model(config);
  torch::NoGradGuard no_grad;
  // WiFlow's BatchNorms after convolutions are QBatchNorm (foldable in QAT), the rest torch's.
  struct Bn {
    torch::Tensor weight, bias, running_mean, running_var;
    std::function<void(double)> set_momentum;
  };
  std::vector<Bn> bns;
  for (const auto& m : model->modules(/*include_self=*/false)) {
    if (auto* bn = m->as<torch::nn::BatchNorm1dImpl>())
      bns.push_back({bn->weight, bn->bias, bn->running_mean, bn->running_var, [bn](double v) { bn->options.momentum(v); }});
    if (auto* bn = m->as<torch::nn::BatchNorm2dImpl>())
      bns.push_back({bn->weight, bn->bias, bn->running_mean, bn->running_var, [bn](double v) { bn->options.momentum(v); }});
    if (auto* bn = m->as<QBatchNormImpl>())
      bns.push_back({bn->weight, bn->bias, bn->running_mean, bn->running_var, [bn](double v) { bn->set_momentum(v); }});
  }
  EXPECT_GT(bns.size(), 30u);
  for (Bn& bn : bns) {
    bn.weight.uniform_(0.5, 1.5);
    bn.bias.normal_(0.0, 0.2);
    bn.set_momentum(1.0);
  }
  model->train();
  model->forward(torch::randn({32, config.input_channels, config.time_steps}));
  for (Bn& bn : bns) {
    bn.set_momentum(0.1);
    bn.running_var.mul_(torch::empty_like(bn.running_var).uniform_(0.5, 2.0));
    bn.running_mean.add_(torch::randn_like(bn.running_mean) * 0.2 * bn.running_var.sqrt());
  }
  model->eval();
  return model;
}

struct Comparison {
  torch::Tensor ours, reference;
  double max_diff = -1;
};

/// Exports `model`, runs our forward and wiflow_ref.py on the same random (4, C, T) input. Any
/// failure of the reference run is reported through gtest and leaves max_diff < 0.
Comparison compare_with_pytorch(WiFlow model, uint64_t input_seed, const std::string& perturb = "") {
  Comparison out;
  TempDir dir;
  const WiFlowConfig& c = model->config();
  torch::manual_seed(input_seed);
  const torch::Tensor x = torch::randn({4, c.input_channels, c.time_steps});
  save_safetensors(dir.file("weights.safetensors"), state_dict(*model));
  testing::write_file(dir.file("config.json"), config_json(c));
  save_npy(dir.file("x.npy"), x.to(torch::kFloat32));
  {
    torch::NoGradGuard no_grad;
    out.ours = model->forward(x);
  }

  std::string cmd = std::string("env -u PYTHONPATH -u PYTHONHOME ") + kSystemPython + " '" +
                    testing::source_path("tests/models/python/wiflow_ref.py") + "' --config '" +
                    dir.file("config.json") + "' --weights '" + dir.file("weights.safetensors") + "' --input '" +
                    dir.file("x.npy") + "' --output '" + dir.file("y.npy") + "'";
  if (!perturb.empty()) cmd += " --perturb '" + perturb + "'";
  const testing::RunResult run = testing::run_command(cmd);
  const std::string& output = run.output;
  const int rc = run.exit_code;
  if (rc != 0) {
    ADD_FAILURE() << "wiflow_ref.py exited with " << rc << ":\n" << output << "\ncommand: " << cmd;
    return out;
  }
  try {
    out.reference = load_npy(dir.file("y.npy")).to(torch::kFloat32);
  } catch (const std::exception& e) {
    ADD_FAILURE() << e.what() << "\nscript output:\n" << output;
    return out;
  }
  if (out.reference.sizes() != out.ours.sizes()) {
    ADD_FAILURE() << "reference output has shape " << out.reference.sizes() << ", ours " << out.ours.sizes();
    return out;
  }
  out.max_diff = (out.ours - out.reference).abs().max().item<double>();
  return out;
}

void expect_matches(const std::string& preset, const WiFlowConfig& config, uint64_t seed) {
  SCOPED_TRACE(preset);
  const WiFlow model = make_model(config, seed);
  const Comparison r = compare_with_pytorch(model, seed + 1000);
  ASSERT_GE(r.max_diff, 0.0) << "no reference output";
  // The comparison means something only if the output is neither constant nor degenerate.
  EXPECT_TRUE(torch::isfinite(r.ours).all().item<bool>());
  const double spread = (r.ours - r.ours.narrow(0, 0, 1)).abs().max().item<double>();
  EXPECT_GT(spread, 1e-2) << "the output barely depends on the input";
  EXPECT_LT(r.max_diff, kTolerance) << preset << ": max |ours - PyTorch| = " << r.max_diff << " (tolerance "
                                    << kTolerance << ")";
  std::printf("[ WiFlowPyTorch ] %s: max |ours - PyTorch| = %.3g, max |output| = %.3g, max spread over inputs %.3g\n",
              preset.c_str(), r.max_diff, r.ours.abs().max().item<double>(), spread);
}

TEST(WiFlowPyTorch, HalfMatchesReference) {
  SKIP_WITHOUT_TORCH_PYTHON();
  expect_matches("wiflow_half", wiflow_half(), /*seed=*/11);
}

TEST(WiFlowPyTorch, TinyMatchesReference) {
  SKIP_WITHOUT_TORCH_PYTHON();
  expect_matches("wiflow_tiny", wiflow_tiny(), /*seed=*/12);
}

TEST(WiFlowPyTorch, QuarterMatchesReference) {
  SKIP_WITHOUT_TORCH_PYTHON();
  expect_matches("wiflow_quarter", wiflow_quarter(), /*seed=*/13);
}

// The cross-check can fail: one weight at the very start of the network, changed by 0.1 on the
// PyTorch side only, must show up at the output.
TEST(WiFlowPyTorch, DetectsPerturbedWeight) {
  SKIP_WITHOUT_TORCH_PYTHON();
  const WiFlow model = make_model(wiflow_tiny(), /*seed=*/12);
  const Comparison r = compare_with_pytorch(model, /*input_seed=*/1012, "tcn.network.0.conv1_group.weight");
  ASSERT_GE(r.max_diff, 0.0) << "no reference output";
  EXPECT_GT(r.max_diff, 1e-3) << "perturbing tcn.network.0.conv1_group.weight[0] by 0.1 changed the output by only "
                              << r.max_diff;
  std::printf("[ WiFlowPyTorch ] perturbed: max |ours - PyTorch| = %.3g\n", r.max_diff);
}

}  // namespace
}  // namespace csipose
