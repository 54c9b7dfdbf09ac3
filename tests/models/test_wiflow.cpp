// WiFlow (MODELS.md section 1): published parameter counts, the exact PyTorch parameter/buffer
// layout (tests/models/reference/wiflow_*.state_dict.txt), shapes, determinism, gradient flow,
// the encoder's stride schedule, MACs against a hand count, and config errors that name their key.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/config_node.h"
#include "models/pose_model.h"
#include "models/wiflow.h"
#include "testing.h"

namespace csipose {
namespace {

std::vector<std::pair<std::string, WiFlowConfig>> all_presets() {
  return {{"wiflow_full", wiflow_full()},
          {"wiflow_half", wiflow_half()},
          {"wiflow_quarter", wiflow_quarter()},
          {"wiflow_tiny", wiflow_tiny()}};
}

/// "name shape dtype" lines of a reference file ("#" lines skipped), plus the parameter count its
/// header states ("...; 2225042 parameters").
struct ReferenceLayout {
  std::vector<std::string> entries;
  int64_t parameters = -1;
};

ReferenceLayout read_reference(const std::string& preset) {
  const std::string path = testing::source_path("tests/models/reference/" + preset + ".state_dict.txt");
  std::ifstream in(path);
  if (!in) throw Error("cannot open " + path);
  ReferenceLayout out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      const size_t end = line.rfind(" parameters");
      const size_t start = line.rfind(' ', end - 1);
      if (end != std::string::npos) out.parameters = std::stoll(line.substr(start + 1, end - start - 1));
      continue;
    }
    std::istringstream fields(line);
    std::string name, shape, dtype;
    fields >> name >> shape >> dtype;
    out.entries.push_back(name + " " + shape + " " + dtype);
  }
  std::sort(out.entries.begin(), out.entries.end());
  return out;
}

std::string describe(const std::string& name, const torch::Tensor& t) {
  std::string shape;
  for (int64_t i = 0; i < t.dim(); ++i) shape += (i ? "x" : "") + std::to_string(t.size(i));
  if (t.dim() == 0) shape = "scalar";
  const std::string dtype = t.scalar_type() == torch::kFloat ? "float32"
                            : t.scalar_type() == torch::kLong ? "int64"
                                                              : std::string(c10::toString(t.scalar_type()));
  return name + " " + shape + " " + dtype;
}

/// named_parameters() + named_buffers() in the reference files' format, sorted.
std::vector<std::string> layout_of(const WiFlowImpl& model) {
  std::vector<std::string> out;
  for (const auto& p : model.named_parameters(/*recurse=*/true)) out.push_back(describe(p.key(), p.value()));
  for (const auto& b : model.named_buffers(/*recurse=*/true)) out.push_back(describe(b.key(), b.value()));
  std::sort(out.begin(), out.end());
  return out;
}

std::string lines_missing_from(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  std::vector<std::string> diff;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
  std::string text;
  for (const auto& d : diff) text += "  " + d + "\n";
  return text;
}

void expect_reference_layout(const std::string& preset, const WiFlowConfig& config) {
  const ReferenceLayout ref = read_reference(preset);
  WiFlow model(config);
  const std::vector<std::string> ours = layout_of(*model);
  EXPECT_EQ(ours.size(), ref.entries.size()) << preset;
  EXPECT_TRUE(ours == ref.entries) << preset << ": only in csipose:\n"
                                   << lines_missing_from(ours, ref.entries) << "only in the reference:\n"
                                   << lines_missing_from(ref.entries, ours);
  EXPECT_EQ(count_parameters(*model), ref.parameters) << preset;
}

std::string validate_error(const WiFlowConfig& c) {
  try {
    c.validate();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string yaml_error(const std::string& yaml) {
  try {
    const ConfigNode node = ConfigNode::load_string(yaml, "<test>");
    WiFlowConfig::from_yaml(node);
    node.finish();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- parameter counts and layout -------------------------------------------------------------------
TEST(WiFlowParams, PublishedCounts) {
  // MODELS.md section 1 (the published PyTorch models).
  EXPECT_EQ(count_parameters(*WiFlow(wiflow_full())), 2225042);
  EXPECT_EQ(count_parameters(*WiFlow(wiflow_half())), 843834);
}

TEST(WiFlowParams, RecordedCountsOfSmallerPresets) {
  // No published number: recorded from this implementation and matched by an independent count
  // from MODELS.md's layer list (a short Python formula); they pin the presets' definitions.
  EXPECT_EQ(count_parameters(*WiFlow(wiflow_quarter())), 338600);
  EXPECT_EQ(count_parameters(*WiFlow(wiflow_tiny())), 56290);
}

TEST(WiFlowLayout, FullMatchesPyTorchReference) { expect_reference_layout("wiflow_full", wiflow_full()); }

TEST(WiFlowLayout, HalfMatchesPyTorchReference) { expect_reference_layout("wiflow_half", wiflow_half()); }

TEST(WiFlowLayout, DepthwiseAndInputGroupsShapeTheTcnWeights) {
  // tiny: depthwise kernel-3 convs (1 input channel per group), 4 groups on level 0's pointwise convs.
  WiFlow model(wiflow_tiny());
  const auto params = model->named_parameters();
  EXPECT_EQ(params["tcn.network.0.conv1_group.weight"].sizes(), torch::IntArrayRef({540, 1, 3}));
  EXPECT_EQ(params["tcn.network.0.conv1_pw.weight"].sizes(), torch::IntArrayRef({68, 135, 1}));
  EXPECT_EQ(params["tcn.network.0.downsample.0.weight"].sizes(), torch::IntArrayRef({68, 135, 1}));
  EXPECT_EQ(params["tcn.network.0.conv2_pw.weight"].sizes(), torch::IntArrayRef({68, 68, 1}));
  EXPECT_EQ(params["tcn.network.1.conv1_pw.weight"].sizes(), torch::IntArrayRef({56, 68, 1}));
  EXPECT_EQ(params["decoder.0.weight"].sizes(), torch::IntArrayRef({8, 16, 3, 3}));
}

TEST(WiFlowInit, Conv1dKaimingFanOutAndUnitBatchNorm1d) {
  torch::manual_seed(0);
  WiFlow model(wiflow_full());
  const auto params = model->named_parameters();
  // kaiming-normal (fan_out, relu): std = sqrt(2 / (out_channels * kernel)).
  const double pw_std = params["tcn.network.0.conv1_pw.weight"].std().item<double>();
  EXPECT_NEAR(pw_std, std::sqrt(2.0 / 540.0), 0.02 * std::sqrt(2.0 / 540.0));
  const double group_std = params["tcn.network.0.conv1_group.weight"].std().item<double>();
  EXPECT_NEAR(group_std, std::sqrt(2.0 / (540.0 * 3.0)), 0.05 * std::sqrt(2.0 / (540.0 * 3.0)));
  const double qkv_std = params["attention.width_axis.qkv_transform.weight"].std().item<double>();
  EXPECT_NEAR(qkv_std, std::sqrt(2.0 / 192.0), 0.1 * std::sqrt(2.0 / 192.0));
  EXPECT_TRUE(torch::all(params["tcn.network.2.bn1_pw.weight"] == 1).item<bool>());
  EXPECT_TRUE(torch::all(params["attention.height_axis.bn_output.bias"] == 0).item<bool>());
}

// ---- forward ---------------------------------------------------------------------------------------
TEST(WiFlowForward, OutputShapeForEveryPresetAndBatchSize) {
  torch::manual_seed(1);
  for (const auto& [name, config] : all_presets()) {
    WiFlow model(config);
    model->eval();
    torch::NoGradGuard no_grad;
    for (int64_t n : {1, 3, 8}) {
      const torch::Tensor y = model->forward(torch::randn({n, 540, 20}));
      EXPECT_EQ(y.sizes(), torch::IntArrayRef({n, 15, 2})) << name << " N=" << n;
      EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << name << " N=" << n;
    }
  }
}

TEST(WiFlowForward, ModelInterface) {
  WiFlow model(wiflow_half());
  EXPECT_EQ(model->family(), "wiflow");
  EXPECT_EQ(model->input_shape(), (std::vector<int64_t>{540, 20}));
  EXPECT_EQ(model->num_keypoints(), 15);
  EXPECT_EQ(model->config(), wiflow_half());
}

TEST(WiFlowForward, EvalModeIsDeterministic) {
  torch::manual_seed(2);
  WiFlow model(wiflow_half());
  model->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({3, 540, 20});
  const torch::Tensor a = model->forward(x);
  const torch::Tensor b = model->forward(x);
  EXPECT_TRUE(torch::equal(a, b));
  // Each sample is independent of the others in eval mode.
  const torch::Tensor single = model->forward(x.narrow(0, 1, 1));
  EXPECT_TRUE(torch::allclose(single, a.narrow(0, 1, 1), /*rtol=*/1e-5, /*atol=*/1e-6));
}

TEST(WiFlowForward, RejectsWrongInputShape) {
  WiFlow model(wiflow_tiny());
  try {
    model->forward(torch::zeros({2, 540, 19}));
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("(N, 540, 20)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 540, 19]"), std::string::npos) << e.what();
  }
}

/// Parameters whose gradient is zero by construction in train mode: a conv bias directly followed
/// by a train-mode BatchNorm (the batch mean cancels it) and bn_similarity.bias (softmax is
/// invariant to a constant added to every score of a row).
bool structurally_zero_in_train_mode(const std::string& name) {
  const bool bias = name.size() > 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
  const bool conv_before_bn = name.find(".block.0.") != std::string::npos ||  // encoder convs 0, 4, 8
                              name.find(".block.4.") != std::string::npos ||
                              name.find(".block.8.") != std::string::npos ||
                              name.rfind("decoder.0.", 0) == 0 || name.rfind("decoder.3.", 0) == 0;
  return bias && (conv_before_bn || name.find("bn_similarity") != std::string::npos);
}

TEST(WiFlowGradient, ReachesEveryParameterInTrainMode) {
  torch::manual_seed(3);
  for (const auto& [preset, config] : all_presets()) {
    WiFlow model(config);
    model->train();
    model->forward(torch::randn({4, 540, 20})).sum().backward();
    const auto params = model->named_parameters();
    for (const auto& p : params) {
      const std::string& name = p.key();
      const torch::Tensor& g = p.value().grad();
      ASSERT_TRUE(g.defined()) << preset << " " << name;
      const double max_abs = g.abs().max().item<double>();
      if (structurally_zero_in_train_mode(name)) {
        // Only rounding noise, far below the gradient of the same layer's weight.
        std::string weight = name.substr(0, name.size() - 5) + ".weight";
        const double sibling = params[weight].grad().abs().max().item<double>();
        EXPECT_LT(max_abs, 1e-3 * sibling) << preset << " " << name;
      } else {
        EXPECT_GT(max_abs, 0.0) << preset << " " << name;
      }
    }
  }
}

TEST(WiFlowGradient, ConvBiasesAreWiredInEvalMode) {
  // With running statistics the conv biases before BatchNorm do move the output.
  torch::manual_seed(4);
  WiFlow model(wiflow_quarter());
  model->eval();
  model->forward(torch::randn({2, 540, 20})).sum().backward();
  for (const auto& p : model->named_parameters()) {
    if (p.key().find("bn_similarity.bias") != std::string::npos) continue;  // softmax shift invariance
    EXPECT_GT(p.value().grad().abs().max().item<double>(), 0.0) << p.key();
  }
}

// ---- encoder stride schedule -----------------------------------------------------------------------
TEST(WiFlowEncoder, StrideScheduleOfEveryPreset) {
  // From w = C_tcn, halve (w = ceil(w/2), stride 2) while ceil(w/2) >= 15, else stride 1:
  //   full    240 -> 120 -> 60 -> 30 -> 15                   strides 2 2 2 2
  //   half    120 -> 60 -> 30 -> 15 -> (ceil 8 < 15) 15       strides 2 2 2 1
  //   quarter  60 -> 30 -> 15 -> 15 -> 15                     strides 2 2 1 1
  //   tiny     32 -> 16 -> (ceil 8 < 15) 16 -> 16 -> 16       strides 2 1 1 1
  using V = std::vector<int64_t>;
  EXPECT_EQ(wiflow_encoder_strides(wiflow_full()), (V{2, 2, 2, 2}));
  EXPECT_EQ(wiflow_encoder_widths(wiflow_full()), (V{120, 60, 30, 15}));
  EXPECT_EQ(wiflow_encoder_strides(wiflow_half()), (V{2, 2, 2, 1}));
  EXPECT_EQ(wiflow_encoder_widths(wiflow_half()), (V{60, 30, 15, 15}));
  EXPECT_EQ(wiflow_encoder_strides(wiflow_quarter()), (V{2, 2, 1, 1}));
  EXPECT_EQ(wiflow_encoder_widths(wiflow_quarter()), (V{30, 15, 15, 15}));
  EXPECT_EQ(wiflow_encoder_strides(wiflow_tiny()), (V{2, 1, 1, 1}));
  EXPECT_EQ(wiflow_encoder_widths(wiflow_tiny()), (V{16, 16, 16, 16}));
}

TEST(WiFlowEncoder, TensorsFollowTheSchedule) {
  // Run the registered children one by one and compare every intermediate shape.
  torch::manual_seed(5);
  for (const auto& [preset, config] : all_presets()) {
    WiFlow model(config);
    model->eval();
    torch::NoGradGuard no_grad;
    auto children = model->named_children();
    torch::Tensor h = children["tcn"]->as<wiflow::TemporalConvNetImpl>()->forward(torch::randn({2, 540, 20}));
    ASSERT_EQ(h.sizes(), torch::IntArrayRef({2, config.tcn_channels[3], 20})) << preset;
    h = children["up"]->as<wiflow::ResidualBlock2dImpl>()->forward(h.transpose(1, 2).unsqueeze(1));
    ASSERT_EQ(h.sizes(), torch::IntArrayRef({2, config.conv_channels[0], 20, config.tcn_channels[3]})) << preset;
    const auto& blocks = *children["residual_blocks"]->as<torch::nn::ModuleListImpl>();
    const std::vector<int64_t> widths = wiflow_encoder_widths(config);
    for (size_t i = 0; i < blocks.size(); ++i) {
      h = blocks[i]->as<wiflow::ResidualBlock2dImpl>()->forward(h);
      ASSERT_EQ(h.sizes(), torch::IntArrayRef({2, config.conv_channels[i], 20, widths[i]})) << preset << " " << i;
    }
    h = children["attention"]->as<wiflow::DualAxialAttentionImpl>()->forward(h.permute({0, 1, 3, 2}));
    ASSERT_EQ(h.sizes(), torch::IntArrayRef({2, config.conv_channels[3], widths[3], 20})) << preset;
  }
}

// ---- attention ------------------------------------------------------------------------------------
TEST(WiFlowAttention, MatchesAnExplicitLoopImplementation) {
  // One axis, eval mode, random BN statistics: compare with a per-element loop written straight
  // from MODELS.md (scores sum_c q[c,i] k[c,j], no scaling, BN2d(groups), softmax over j).
  torch::manual_seed(6);
  const int64_t N = 2, C = 4, G = 2, H = 3, W = 5;
  for (bool along_width : {true, false}) {
    wiflow::AxialAttention attn(C, G, along_width);
    {
      torch::NoGradGuard no_grad;
      for (auto& b : attn->named_buffers())
        if (b.key().find("running_") != std::string::npos) b.value().uniform_(0.5, 1.5);
      for (auto& p : attn->named_parameters()) p.value().uniform_(-1, 1);
    }
    attn->eval();
    torch::NoGradGuard no_grad;
    const torch::Tensor x = torch::randn({N, C, H, W});
    const torch::Tensor got = attn->forward(x);

    auto params = attn->named_parameters();
    auto buffers = attn->named_buffers();
    auto bn = [&](const std::string& name, double v, int64_t ch) {
      const double mean = buffers[name + ".running_mean"][ch].item<double>();
      const double var = buffers[name + ".running_var"][ch].item<double>();
      return (v - mean) / std::sqrt(var + 1e-5) * params[name + ".weight"][ch].item<double>() +
             params[name + ".bias"][ch].item<double>();
    };
    const torch::Tensor wq = params["qkv_transform.weight"].squeeze(-1);  // (3C, C)
    const torch::Tensor expected = torch::zeros_like(x);
    const int64_t L = along_width ? W : H, other = along_width ? H : W, cg = C / G;
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t o = 0; o < other; ++o) {
        // Sequence (C, L) and its qkv (3C, L).
        std::vector<std::vector<double>> qkv(3 * C, std::vector<double>(L));
        for (int64_t r = 0; r < 3 * C; ++r)
          for (int64_t l = 0; l < L; ++l) {
            double s = 0;
            for (int64_t c = 0; c < C; ++c)
              s += wq[r][c].item<double>() *
                   (along_width ? x[n][c][o][l] : x[n][c][l][o]).item<double>();
            qkv[r][l] = bn("bn_qkv", s, r);
          }
        for (int64_t g = 0; g < G; ++g) {
          for (int64_t i = 0; i < L; ++i) {
            std::vector<double> p(L);
            double z = 0;
            for (int64_t j = 0; j < L; ++j) {
              double s = 0;
              for (int64_t c = g * cg; c < (g + 1) * cg; ++c) s += qkv[c][i] * qkv[C + c][j];
              p[j] = std::exp(bn("bn_similarity", s, g));
              z += p[j];
            }
            for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
              double out = 0;
              for (int64_t j = 0; j < L; ++j) out += p[j] / z * qkv[2 * C + c][j];
              const double y = bn("bn_output", out, c);
              (along_width ? expected[n][c][o][i] : expected[n][c][i][o]).fill_(y);
            }
          }
        }
      }
    }
    EXPECT_TRUE(torch::allclose(got, expected, /*rtol=*/1e-4, /*atol=*/1e-4))
        << (along_width ? "width" : "height") << " axis, max diff "
        << (got - expected).abs().max().item<double>();
  }
}

// ---- MACs -------------------------------------------------------------------------------------------
TEST(WiFlowMacs, SmallConfigMatchesHandCount) {
  // input 20 x T=4; tcn [20,10,10,10] gcd20; conv [2,2,4,4]; attn_groups 2; input_pw_groups 2;
  // keypoints 3. A conv costs out_elements x in_per_group x taps; kernel-3 TCN convs compute
  // T + 2d outputs.
  //  TCN L0 d=1 20->20 (g=20, pw=2): 20*6*1*3 + 20*4*10 + 20*6*1*3 + 20*4*20        = 3120
  //      L1 d=2 20->10 (g 20,10):    20*8*1*3 + 10*4*20 + 10*8*1*3 + 10*4*10 + 10*4*20 = 2720
  //      L2 d=4 10->10:              10*12*3 + 10*4*10 + 10*12*3 + 10*4*10           = 1520
  //      L3 d=8 10->10:              10*20*3 + 400 + 10*20*3 + 400                   = 2000
  //  Strides from C_tcn=10 with floor 3: 10->5 (2), 5->3 (2), ceil(3/2)=2<3 (1), (1).
  //  Encoder, per block out*T*W_out*(3 in + 3 out + 3 out + in):
  //      up 1->2 W=10: 2*4*10*(3+6+6+1)   = 1280
  //      b0 2->2 W=5:  2*4*5*(6+6+6+2)    =  800
  //      b1 2->2 W=3:  2*4*3*(20)         =  480
  //      b2 2->4 W=3:  4*4*3*(6+12+12+2)  = 1536
  //      b3 4->4 W=3:  4*4*3*(12+12+12+4) = 1920
  //  Attention C=4, W'=3, T=4: qkv 2 * 12*4*12 = 1152; width q.k + p.v 2*4*16*3 = 384;
  //      height 2*4*9*4 = 288                                                    -> 1824
  //  Decoder hidden max(4/2,4)=4: 4*3*4*4*9 + 2*3*4*4 = 1728 + 96                 -> 1824
  //  Total 9360 + 6016 + 1824 + 1824 = 19024
  WiFlowConfig c;
  c.input_channels = 20;
  c.time_steps = 4;
  c.tcn_channels = {20, 10, 10, 10};
  c.conv_channels = {2, 2, 4, 4};
  c.attn_groups = 2;
  c.input_pw_groups = 2;
  c.keypoints = 3;
  EXPECT_EQ(wiflow_encoder_widths(c), (std::vector<int64_t>{5, 3, 3, 3}));
  WiFlow model(c);
  EXPECT_EQ(model->macs_per_sample(), 19024);
  EXPECT_EQ(model->forward(torch::randn({2, 20, 4})).sizes(), torch::IntArrayRef({2, 3, 2}));
}

TEST(WiFlowMacs, RecordedPresetValues) {
  // Recorded from wiflow_macs_per_sample; they pin the presets and the counting convention.
  EXPECT_EQ(WiFlow(wiflow_full())->macs_per_sample(), 78658800);
  EXPECT_EQ(WiFlow(wiflow_half())->macs_per_sample(), 24537660);
  EXPECT_EQ(WiFlow(wiflow_quarter())->macs_per_sample(), 8877930);
  EXPECT_EQ(WiFlow(wiflow_tiny())->macs_per_sample(), 3081824);
}

// ---- config -----------------------------------------------------------------------------------------
TEST(WiFlowConfig, DefaultsAreTheFullPresetAndPresetsAreValid) {
  EXPECT_EQ(WiFlowConfig(), wiflow_full());
  for (const auto& [name, config] : all_presets()) EXPECT_NO_THROW(config.validate()) << name;
  EXPECT_EQ(wiflow_tiny().groups_mode, WiFlowGroupsMode::depthwise);
  EXPECT_EQ(wiflow_tiny().input_pw_groups, 4);
}

TEST(WiFlowConfig, YamlRoundTripOfEveryPreset) {
  for (const auto& [name, config] : all_presets()) {
    const ConfigNode node = ConfigNode::load_string(config.to_yaml(), "<to_yaml>");
    const WiFlowConfig back = WiFlowConfig::from_yaml(node);
    node.finish();  // to_yaml writes only keys from_yaml reads
    EXPECT_EQ(back, config) << name << ":\n" << config.to_yaml();
  }
}

TEST(WiFlowConfig, FromYamlStartsFromBaseAndLeavesFinishToTheCaller) {
  const ConfigNode node =
      ConfigNode::load_string("type: wiflow\ndropout: 0.25\ngroups_mode: depthwise\n", "<test>");
  const WiFlowConfig c = WiFlowConfig::from_yaml(node, wiflow_half());
  EXPECT_EQ(c.tcn_channels, wiflow_half().tcn_channels);
  EXPECT_EQ(c.dropout, 0.25);
  EXPECT_EQ(c.groups_mode, WiFlowGroupsMode::depthwise);
  // `type` belongs to the caller: unread until it reads it, so finish() still reports it.
  EXPECT_THROW(node.finish(), Error);
  EXPECT_EQ(node.get<std::string>("type"), "wiflow");
  EXPECT_NO_THROW(node.finish());
}

TEST(WiFlowConfig, ValidationNamesFieldAndValue) {
  auto expect_error = [](WiFlowConfig c, const std::vector<std::string>& parts) {
    const std::string message = validate_error(c);
    for (const auto& part : parts) EXPECT_NE(message.find(part), std::string::npos) << message;
  };
  WiFlowConfig c;
  c.conv_channels = {8, 16, 32, 60};
  expect_error(c, {"attn_groups = 8", "conv_channels[3] = 60"});
  c = WiFlowConfig();
  c.tcn_channels = {540, 440, 240};
  expect_error(c, {"tcn_channels", "3 entries", "exactly 4"});
  c = WiFlowConfig();
  c.conv_channels = {8, 16, 32, 64, 128};
  expect_error(c, {"conv_channels", "5 entries", "exactly 4"});
  c = WiFlowConfig();
  c.conv_channels = {8, 0, 32, 64};
  expect_error(c, {"conv_channels[1] = 0", "positive"});
  c = WiFlowConfig();
  c.tcn_channels = {540, -4, 340, 240};
  expect_error(c, {"tcn_channels[1] = -4", "positive"});
  c = WiFlowConfig();
  c.input_pw_groups = 7;
  expect_error(c, {"input_pw_groups = 7", "input_channels = 540"});
  c = wiflow_half();
  c.input_pw_groups = 4;  // divides 540 but not 270
  expect_error(c, {"input_pw_groups = 4", "tcn_channels[0] = 270"});
  c = WiFlowConfig();
  c.attn_groups = 0;
  expect_error(c, {"attn_groups = 0", "positive"});
  c = WiFlowConfig();
  c.time_steps = 0;
  expect_error(c, {"time_steps = 0"});
  c = WiFlowConfig();
  c.dropout2d = 1.5;
  expect_error(c, {"dropout2d = 1.5"});
  // The model refuses an invalid config the same way.
  c = WiFlowConfig();
  c.keypoints = -1;
  EXPECT_THROW(WiFlow{c}, Error);
}

TEST(WiFlowConfig, YamlErrorsNameKeyAndLine) {
  auto contains = [](const std::string& text, const std::string& part) {
    return text.find(part) != std::string::npos;
  };
  std::string e = yaml_error("attn_groups: 8\nconv_channels: [8, 16, 32, 60]\n");
  EXPECT_TRUE(contains(e, "<test>:") && contains(e, "attn_groups") && contains(e, "60")) << e;
  e = yaml_error("groups_mode: gcd\n");
  EXPECT_TRUE(contains(e, "<test>:1") && contains(e, "groups_mode") && contains(e, "gcd20, depthwise")) << e;
  e = yaml_error("tcn_channels: [540, 440]\n");
  EXPECT_TRUE(contains(e, "<test>:1") && contains(e, "tcn_channels") && contains(e, "exactly 4")) << e;
  e = yaml_error("time_steps: 20\nattn_groups: 0\n");
  EXPECT_TRUE(contains(e, "<test>:2") && contains(e, "attn_groups")) << e;
  e = yaml_error("dropout: 1.5\n");
  EXPECT_TRUE(contains(e, "dropout")) << e;
  e = yaml_error("input_pw_groups: 7\n");
  EXPECT_TRUE(contains(e, "input_pw_groups") && contains(e, "540")) << e;
}

TEST(WiFlowConfig, GroupsModeNames) {
  EXPECT_EQ(parse_wiflow_groups_mode("gcd20"), WiFlowGroupsMode::gcd20);
  EXPECT_EQ(parse_wiflow_groups_mode("depthwise"), WiFlowGroupsMode::depthwise);
  EXPECT_STREQ(to_string(WiFlowGroupsMode::depthwise), "depthwise");
  try {
    parse_wiflow_groups_mode("dw");
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("expected one of: gcd20, depthwise"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace csipose
