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
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "models/safetensors.h"
#include "models/wiflow.h"
#include "testing.h"

namespace csipose::testing {
// Defined in test_safetensors.cpp (same binary).
bool system_python_has_torch();
}  // namespace csipose::testing

namespace csipose {
namespace {

using testing::TempDir;

constexpr const char* kSystemPython = "/usr/bin/python3";
constexpr double kTolerance = 1e-5;

#define SKIP_WITHOUT_TORCH_PYTHON()        \
  if (!testing::system_python_has_torch()) \
  GTEST_SKIP() << kSystemPython << " cannot import torch; WiFlow PyTorch cross-check skipped"

// ---- .npy (format 1.0, little-endian float32, C order) -------------------------------------------

void write_npy(const std::string& path, const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  std::string shape = "(";
  for (int64_t i = 0; i < c.dim(); ++i) shape += std::to_string(c.size(i)) + (c.dim() == 1 || i + 1 < c.dim() ? "," : "");
  shape += ")";
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  const size_t unpadded = 10 + header.size() + 1;  // magic(6) + version(2) + length(2) + header + '\n'
  header += std::string((64 - unpadded % 64) % 64, ' ') + "\n";
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  const uint16_t n = static_cast<uint16_t>(header.size());
  const char len[2] = {static_cast<char>(n & 0xff), static_cast<char>(n >> 8)};
  f.write(len, 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(static_cast<const char*>(c.data_ptr()), static_cast<std::streamsize>(c.numel() * sizeof(float)));
  ASSERT_TRUE(f.good()) << "writing " << path;
}

/// Reads a float32 C-order .npy written by numpy.save; throws std::runtime_error otherwise.
torch::Tensor read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) throw std::runtime_error(path + ": not .npy");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, start;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    start = 10;
  } else {
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    start = 12;
  }
  const std::string header = bytes.substr(start, header_len);
  if (header.find("'descr': '<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error(path + ": expected little-endian float32 in C order, header " + header);
  const size_t open = header.find('(', header.find("'shape'")), close = header.find(')', open);
  std::vector<int64_t> shape;
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  for (std::string d; std::getline(dims, d, ',');)
    if (d.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(d));
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t data = start + header_len;
  if (bytes.size() - data != static_cast<size_t>(numel) * sizeof(float))
    throw std::runtime_error(path + ": data size does not match the shape");
  torch::Tensor t = torch::empty(shape, torch::kFloat32);
  std::memcpy(t.data_ptr(), bytes.data() + data, bytes.size() - data);
  return t;
}

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

/// A model from `config` with seeded initialization, every BatchNorm given random affine
/// parameters and running statistics (var in [0.5, 2]), in eval mode.
WiFlow make_model(const WiFlowConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  WiFlow model(config);
  torch::NoGradGuard no_grad;
  int bn_count = 0;
  for (const auto& m : model->modules(/*include_self=*/false)) {
    auto randomize = [&](auto* bn) {
      bn->weight.uniform_(0.5, 1.5);
      bn->bias.normal_(0.0, 0.2);
      bn->running_mean.normal_(0.0, 0.2);
      bn->running_var.uniform_(0.5, 2.0);
      ++bn_count;
    };
    if (auto* bn1 = m->as<torch::nn::BatchNorm1dImpl>()) randomize(bn1);
    if (auto* bn2 = m->as<torch::nn::BatchNorm2dImpl>()) randomize(bn2);
  }
  EXPECT_GT(bn_count, 30);
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
  write_npy(dir.file("x.npy"), x);
  {
    torch::NoGradGuard no_grad;
    out.ours = model->forward(x);
  }

  std::string cmd = std::string("env -u PYTHONPATH -u PYTHONHOME ") + kSystemPython + " '" +
                    testing::source_path("tests/models/python/wiflow_ref.py") + "' --config '" +
                    dir.file("config.json") + "' --weights '" + dir.file("weights.safetensors") + "' --input '" +
                    dir.file("x.npy") + "' --output '" + dir.file("y.npy") + "'";
  if (!perturb.empty()) cmd += " --perturb '" + perturb + "'";
  cmd += " 2>&1";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "popen failed: " << cmd;
    return out;
  }
  std::string output;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) output.append(buf, n);
  const int status = ::pclose(pipe);
  const int rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (rc != 0) {
    ADD_FAILURE() << "wiflow_ref.py exited with " << rc << ":\n" << output << "\ncommand: " << cmd;
    return out;
  }
  try {
    out.reference = read_npy(dir.file("y.npy"));
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
  EXPECT_GT((r.ours - r.ours.mean()).abs().max().item<double>(), 1e-3) << "output is (nearly) constant";
  EXPECT_LT(r.max_diff, kTolerance) << preset << ": max |ours - PyTorch| = " << r.max_diff << " (tolerance "
                                    << kTolerance << ")";
  std::printf("[ WiFlowPyTorch ] %s: max |ours - PyTorch| = %.3g, max |output| = %.3g\n", preset.c_str(),
              r.max_diff, r.ours.abs().max().item<double>());
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
