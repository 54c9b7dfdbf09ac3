// Pose transformer: published parameter counts, the exact PyTorch state-dict layout
// (tests/models/reference/*.state_dict.txt), shapes, determinism, gradients, config errors, the
// encoder layer against LibTorch's own nn::TransformerEncoderLayer, the whole model against a
// PyTorch implementation of MODELS.md section 2 (Debian's /usr/bin/python3), and checkpoint
// round trips through safetensors.
#include "models/pose_transformer.h"
#include "quant/int8_ops.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <functional>
#include <sstream>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/config_node.h"
#include "models/safetensors.h"
#include "testing.h"

namespace csipose::testing {
// Defined in test_safetensors.cpp (same binary).
extern const char* const kPythonSafetensors;
RunResult run_system_python(const TempDir& dir, const std::string& body);
}  // namespace csipose::testing

namespace csipose {
namespace {

using testing::TempDir;

using testing::error_of;

PoseTransformer make(const std::string& preset, uint64_t seed = 0) {
  torch::manual_seed(seed);
  return PoseTransformer(pose_transformer_preset(preset));
}

/// A batch of MM-Fi-like amplitudes (N, 3, 114, 10), positive with a per-sample scale and offset.
torch::Tensor csi_batch(int64_t n, uint64_t seed = 1) {
  torch::manual_seed(seed);
  const torch::Tensor scale = torch::rand({n, 1, 1, 1}) * 3 + 0.5;
  return torch::rand({n, 3, 114, 10}) * scale + torch::rand({n, 1, 1, 1});
}

std::string shape_text(torch::IntArrayRef s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

// ---- sizes and layout -------------------------------------------------------------------------

TEST(PoseTransformer, PresetParameterCounts) {
  // MODELS.md section 2 publishes nano, micro and flagship; the others are recorded here.
  const std::vector<std::pair<std::string, int64_t>> expected = {
      {"pose_nano", 39971},   {"pose_micro", 75237},  {"pose_tiny", 210949},
      {"pose_small", 348005}, {"pose_base", 726437},  {"pose_flagship", 2320869}};
  ASSERT_EQ(pose_transformer_preset_names().size(), expected.size());
  for (const auto& [name, count] : expected) {
    SCOPED_TRACE(name);
    const PoseTransformer m = make(name);
    EXPECT_EQ(count_parameters(*m), count);
    EXPECT_EQ(m->config().parameter_count(), count);
  }
  EXPECT_NE(error_of([] { pose_transformer_preset("pose_huge"); }).find("expected one of: pose_nano, pose_micro"),
            std::string::npos);
}

TEST(PoseTransformer, MacsPerSample) {
  // pose_micro by hand (T 10, F 342, d 64, ff 128, hh 64, K 17, g 64):
  //   proj 10*342*64 = 218880; layer 3*10*64*64 + 2*10*10*64 + 10*64*64 + 2*10*64*128 = 340480;
  //   pooling 2*10*64 = 1280; head 64*64 + 64*34 = 6272;
  //   graph 17*66*64 + 2*(17*17*64 + 17*64*64) + 17*64*2 = 250240  -> 817152
  EXPECT_EQ(make("pose_micro")->macs_per_sample(), 817152);
  EXPECT_EQ(make("pose_nano")->macs_per_sample(), 164160 + 193920 + 960 + 2304 + 1632);
  for (const auto& name : pose_transformer_preset_names())
    std::printf("[ info ] %-14s params %9lld  MACs/sample %10lld\n", name.c_str(),
                static_cast<long long>(count_parameters(*make(name))),
                static_cast<long long>(make(name)->macs_per_sample()));
}

struct RefEntry {
  std::string name, shape, dtype;
};

std::vector<RefEntry> read_reference(const std::string& preset, int64_t* declared_params) {
  const std::string path = testing::source_path("tests/models/reference/" + preset + ".state_dict.txt");
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<RefEntry> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {  // "# pose_micro: ...; 75237 parameters"
      const auto end = line.rfind(" parameters");
      const auto begin = line.rfind(' ', end - 1);
      *declared_params = std::stoll(line.substr(begin + 1, end - begin - 1));
      continue;
    }
    std::istringstream fields(line);
    RefEntry e;
    fields >> e.name >> e.shape >> e.dtype;
    out.push_back(e);
  }
  return out;
}

TEST(PoseTransformer, StateDictMatchesPyTorchReference) {
  for (const std::string preset : {"pose_micro", "pose_flagship"}) {
    SCOPED_TRACE(preset);
    int64_t declared = -1;
    const auto ref = read_reference(preset, &declared);
    const PoseTransformer m = make(preset);
    EXPECT_EQ(count_parameters(*m), declared);
    const auto sd = state_dict(*m);
    ASSERT_EQ(sd.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i) {
      EXPECT_EQ(sd[i].first, ref[i].name) << "entry " << i;
      EXPECT_EQ(shape_text(sd[i].second.sizes()), ref[i].shape) << ref[i].name;
      EXPECT_EQ(ref[i].dtype, "float32");
      EXPECT_EQ(sd[i].second.scalar_type(), torch::kFloat32) << ref[i].name;
    }
  }
}

TEST(PoseTransformer, AdjacencyIsRowNormalizedAndNotInStateDict) {
  const torch::Tensor a = coco17_normalized_adjacency();
  ASSERT_EQ(a.sizes(), (std::vector<int64_t>{17, 17}));
  EXPECT_TRUE(torch::allclose(a.sum(1), torch::ones({17})));
  EXPECT_TRUE(torch::equal(a > 0, (a > 0).t()));
  // Joint 5 (left shoulder): itself, 6, 7, 11 -> 1/4 each; joint 0 (nose): itself, 1, 2 -> 1/3.
  EXPECT_FLOAT_EQ(a[5][7].item<float>(), 0.25f);
  EXPECT_FLOAT_EQ(a[0][0].item<float>(), 1.0f / 3);
  EXPECT_EQ(a[0][5].item<float>(), 0.0f);
  EXPECT_EQ((a > 0).sum().item<int64_t>(), 17 + 2 * 16);
  const PoseTransformer m = make("pose_micro");
  for (const auto& [name, t] : state_dict(*m)) EXPECT_EQ(name.find("gr.A"), std::string::npos) << name;
  EXPECT_TRUE(m->named_buffers().is_empty());
  EXPECT_TRUE(torch::equal(m->gr->adjacency(), a));
}

TEST(PoseTransformer, LayersStartIdenticalLikeNnTransformerEncoder) {
  PoseTransformer m = make("pose_base");
  const auto first = m->tf->layers[0]->named_parameters();
  for (size_t i = 1; i < m->tf->layers->size(); ++i)
    for (const auto& p : m->tf->layers[i]->named_parameters())
      EXPECT_TRUE(torch::equal(p.value(), first[p.key()])) << "layer " << i << " " << p.key();
  // PyTorch's MultiheadAttention init: zero biases, xavier-uniform in_proj_weight.
  const auto& attn = m->tf->layers->ptr<PoseEncoderLayerImpl>(0)->self_attn;
  EXPECT_EQ(attn->in_proj_bias.abs().max().item<float>(), 0.0f);
  EXPECT_EQ(attn->out_proj->bias.abs().max().item<float>(), 0.0f);
  const double bound = std::sqrt(6.0 / (160 + 3 * 160));
  EXPECT_LE(attn->in_proj_weight.abs().max().item<double>(), bound);
  EXPECT_GT(attn->in_proj_weight.abs().max().item<double>(), 0.9 * bound);
}

// ---- forward ----------------------------------------------------------------------------------

TEST(PoseTransformer, ForwardShapes) {
  for (const std::string preset : {"pose_nano", "pose_micro", "pose_flagship"}) {
    PoseTransformer m = make(preset);
    m->eval();
    EXPECT_EQ(m->input_shape(), (std::vector<int64_t>{3, 114, 10}));
    EXPECT_EQ(m->num_keypoints(), 17);
    EXPECT_EQ(m->family(), "pose_transformer");
    for (int64_t n : {1, 3, 8}) {
      SCOPED_TRACE(preset + " N=" + std::to_string(n));
      const torch::Tensor y = m->forward(csi_batch(n));
      EXPECT_EQ(y.sizes(), (std::vector<int64_t>{n, 17, 2}));
      EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
      const torch::Tensor kp0 = m->forward_coarse(csi_batch(n));
      EXPECT_EQ(kp0.sizes(), (std::vector<int64_t>{n, 17, 2}));
      EXPECT_TRUE(((kp0 > 0) & (kp0 < 1)).all().item<bool>());
      // The refinement moves each coordinate by at most refine_scale.
      EXPECT_LE((y - kp0).abs().max().item<double>(), 0.3 + 1e-6);
    }
  }
}

TEST(PoseTransformer, RejectsWrongInputShape) {
  PoseTransformer m = make("pose_micro");
  const std::string msg = error_of([&] { m->forward(torch::zeros({2, 3, 10, 114})); });
  EXPECT_NE(msg.find("expected input (N, 3, 114, 10), got [2, 3, 10, 114]"), std::string::npos) << msg;
}

TEST(PoseTransformer, StandardizationMakesOutputsInvariantToPerSampleAffineInput) {
  const torch::Tensor x = csi_batch(4);
  const torch::Tensor s = standardize_per_sample(x).reshape({4, -1});
  EXPECT_TRUE(torch::allclose(s.mean(1), torch::zeros({4}), 0, 1e-5));
  EXPECT_TRUE(torch::allclose(s.std(1), torch::ones({4}), 0, 1e-5));  // torch::std is unbiased
  // The fused token form is the torch-op form, permuted to (N, T, A * S), to float rounding; with
  // a gradient to record it is that form itself.
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor want = standardize_per_sample(x).permute({0, 3, 1, 2}).reshape({4, 10, 342});
    const torch::Tensor got = standardized_tokens(x);
    ASSERT_EQ(got.sizes(), want.sizes());
    EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-6)) << (got - want).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(standardized_tokens(x * 7.0 - 2.0), want, 1e-5, 1e-5));
  }
  const torch::Tensor xg = x.clone().requires_grad_(true);
  const torch::Tensor tg = standardized_tokens(xg);
  EXPECT_TRUE(tg.requires_grad());
  EXPECT_TRUE(torch::equal(tg.detach(), standardize_per_sample(x).permute({0, 3, 1, 2}).reshape({4, 10, 342})));
  PoseTransformer m = make("pose_micro");
  m->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor a = torch::tensor({0.5f, 2.0f, 10.0f, 1.0f}).view({4, 1, 1, 1});
  EXPECT_TRUE(torch::allclose(m->forward(x), m->forward(x * a + 3.0), 0, 1e-4));
}

// The int8 tokens are the float tokens quantized, code for code (a converted proj takes them), and
// a non-finite input is refused as proj's quantize refuses it.
TEST(PoseTransformer, Int8TokensAreTheQuantizedTokens) {
  torch::NoGradGuard no_grad;
  torch::Tensor x = csi_batch(5);
  // Samples whose divisor is far from 1: one with an outlier (large |x - mean|, divisor still in
  // the exact multiply-and-correct range), one scaled past that range (the vdivps path).
  x[1][0][3][4] = 5e6f;
  x[3] = x[3] * 3e10f;
  for (const QuantParams& p : {QuantParams::per_tensor(0.02f, 3, -128, 127), QuantParams::per_tensor(0.005f, -7, -128, 127)}) {
    for (const bool kernels : {true, false}) {
      const bool before = set_int8_avx512_kernels(kernels);
      const torch::Tensor got = standardized_tokens_int8(x, p, Rounding::half_even);
      set_int8_avx512_kernels(before);
      ASSERT_EQ(got.scalar_type(), torch::kChar);
      EXPECT_TRUE(torch::equal(got, quantize_tensor(standardized_tokens(x), p))) << p.scale[0] << " kernels " << kernels;
    }
  }
  torch::Tensor bad = x.clone();
  bad[4][2][113][9] = std::numeric_limits<float>::infinity();
  const std::string msg =
      error_of([&] { standardized_tokens_int8(bad, QuantParams::per_tensor(0.02f, 0, -128, 127), Rounding::half_even); });
  EXPECT_NE(msg.find("non-finite"), std::string::npos) << msg;
}

// The tokens' statistics by their definition (float64 sums in 8 partial sums, j mod 8, combined
// pairwise; float32 mean; unbiased float32 sqrt + 1e-6), sample by sample, equal the batched
// kernel's bit for bit whatever samples share its four-sample blocks (batches of 1..9 samples of
// different scales and offsets).
TEST(PoseTransformer, TokenStatisticsFollowTheirDefinitionInAnyBatch) {
  torch::NoGradGuard no_grad;
  const torch::Tensor base = csi_batch(9);
  const torch::Tensor x = base * torch::linspace(0.01, 300.0, 9).view({9, 1, 1, 1}) +
                          torch::linspace(-50.0, 50.0, 9).view({9, 1, 1, 1});
  const int64_t n = x[0].numel();
  std::vector<torch::Tensor> want;
  for (int64_t i = 0; i < 9; ++i) {
    const torch::Tensor xi = x[i].contiguous();
    const float* v = xi.data_ptr<float>();
    double p[8] = {0, 0, 0, 0, 0, 0, 0, 0}, q[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int64_t j = 0; j < n; ++j) p[j % 8] += static_cast<double>(v[j]);
    const auto mean = static_cast<float>((((p[0] + p[4]) + (p[1] + p[5])) + ((p[2] + p[6]) + (p[3] + p[7]))) /
                                         static_cast<double>(n));
    for (int64_t j = 0; j < n; ++j) {
      const float c = v[j] - mean;
      q[j % 8] += static_cast<double>(c * c);
    }
    const double sq = ((q[0] + q[4]) + (q[1] + q[5])) + ((q[2] + q[6]) + (q[3] + q[7]));
    const float denom = std::sqrt(static_cast<float>(sq / static_cast<double>(n - 1))) + 1e-6f;
    want.push_back(((xi - mean) / denom).permute({2, 0, 1}).reshape({1, xi.size(2), -1}));
  }
  const torch::Tensor all = torch::cat(want, 0);
  // With the explicit AVX-512 statistics (where the CPU has them) and the portable loops.
  for (const bool kernels : {true, false}) {
    const bool before = set_int8_avx512_kernels(kernels);
    for (int64_t b = 1; b <= 9; ++b)
      for (int64_t start = 0; start + b <= 9; start += b)
        EXPECT_TRUE(torch::equal(standardized_tokens(x.narrow(0, start, b)), all.narrow(0, start, b)))
            << "batch " << b << " from " << start << " kernels " << kernels;
    set_int8_avx512_kernels(before);
  }
}

TEST(PoseTransformer, EvalIsDeterministicTrainUsesDropout) {
  PoseTransformer m = make("pose_flagship");
  const torch::Tensor x = csi_batch(3);
  m->eval();
  const torch::Tensor y1 = m->forward(x), y2 = m->forward(x);
  EXPECT_TRUE(torch::equal(y1, y2));
  m->train();
  torch::manual_seed(5);
  const torch::Tensor t1 = m->forward(x);
  torch::manual_seed(6);
  const torch::Tensor t2 = m->forward(x);
  EXPECT_FALSE(torch::equal(t1, t2)) << "dropout should act in training mode";
  EXPECT_FALSE(torch::equal(t1, y1));
}

TEST(PoseTransformer, GradientReachesEveryParameter) {
  for (const std::string preset : {"pose_nano", "pose_flagship"}) {
    SCOPED_TRACE(preset);
    PoseTransformer m = make(preset);
    m->train();
    torch::manual_seed(3);
    const torch::Tensor loss = (m->forward(csi_batch(8)) - torch::rand({8, 17, 2})).pow(2).mean();
    loss.backward();
    for (const auto& p : m->named_parameters()) {
      SCOPED_TRACE(p.key());
      ASSERT_TRUE(p.value().grad().defined());
      EXPECT_TRUE(torch::isfinite(p.value().grad()).all().item<bool>());
      // att.bias shifts every token's pooling logit equally, and softmax is shift-invariant:
      // its gradient is zero by construction (as in PyTorch).
      if (p.key() != "att.bias") {
        EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0.0);
      }
    }
  }
}

TEST(PoseTransformer, EncoderLayerMatchesLibTorchTransformerEncoderLayer) {
  // LibTorch's own nn::TransformerEncoderLayer (sequence-first, post-LN) with the same weights.
  torch::manual_seed(11);
  PoseEncoderLayer ours(/*d_model=*/32, /*heads=*/4, /*dim_feedforward=*/64, /*dropout=*/0.2);
  torch::nn::TransformerEncoderLayer ref(
      torch::nn::TransformerEncoderLayerOptions(32, 4).dim_feedforward(64).dropout(0.2).activation(torch::kGELU));
  std::map<std::string, torch::Tensor> weights;
  for (const auto& [name, t] : state_dict(*ours)) weights[name] = t;
  load_state_dict(*ref, weights, /*strict=*/true);
  ours->eval();
  ref->eval();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = torch::randn({5, 10, 32});  // (N, T, d)
  const torch::Tensor want = ref->forward(x.transpose(0, 1)).transpose(0, 1);
  EXPECT_TRUE(torch::allclose(ours->forward(x), want, 1e-5, 1e-5))
      << (ours->forward(x) - want).abs().max().item<double>();
}

TEST(PoseTransformer, MatchesPyTorchImplementation) {
  if (!testing::system_python_has_torch()) GTEST_SKIP() << "/usr/bin/python3 cannot import torch";
  // MODELS.md section 2 in PyTorch with nn.TransformerEncoderLayer(batch_first=True, gelu): loads
  // our weights strictly (names and shapes) and runs our input.
  // tests/models/python/pose_ref.py is the PyTorch model (also bench/train_reference.py's baseline).
  const std::string model_py =
      "import sys\nsys.path.insert(0, '" + testing::source_path("tests/models/python") + "')\nimport pose_ref\n";
  struct Case {
    std::string preset;
    PoseTransformer model{nullptr};
  };
  std::vector<Case> cases = {{"pose_micro"}, {"pose_nano"}, {"pose_flagship"}};
  TempDir dir;
  const torch::Tensor x = csi_batch(4);
  save_safetensors(dir.file("x.safetensors"), {{"x", x}});
  std::string script = model_py + "x = st_read(os.path.join(HERE, 'x.safetensors'))[0]['x']\nys = {}\n";
  for (auto& c : cases) {
    c.model = make(c.preset, /*seed=*/21);
    c.model->eval();
    // Perturb every tensor so that zero-initialized biases and identical layers test nothing by luck.
    torch::NoGradGuard no_grad;
    for (auto& p : c.model->parameters()) p.add_(torch::randn_like(p) * 0.05);
    save_safetensors(dir.file(c.preset + ".safetensors"), state_dict(*c.model), {{"preset", c.preset}});
    script += "w, meta, _, _ = st_read(os.path.join(HERE, '" + c.preset + ".safetensors'))\n"
              "m = pose_ref.build('" + c.preset + "')\n"
              "m.load_state_dict(w, strict=True)\n"
              "m.eval()\n"
              "with torch.no_grad():\n"
              "    ys[meta['preset']] = m(x)\n";
  }
  script += "st_write(os.path.join(HERE, 'y.safetensors'), ys)\nprint('OK')\n";
  const auto r = testing::run_system_python(dir, script);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const SafetensorsFile ys = load_safetensors(dir.file("y.safetensors"));
  torch::NoGradGuard no_grad;
  for (auto& c : cases) {
    SCOPED_TRACE(c.preset);
    const torch::Tensor want = ys.tensors.at(c.preset);
    const torch::Tensor got = c.model->forward(x);
    EXPECT_TRUE(torch::allclose(got, want, 1e-5, 1e-5)) << (got - want).abs().max().item<double>();
  }
}

// ---- config -----------------------------------------------------------------------------------

TEST(PoseTransformer, ConfigErrorsNameTheField) {
  struct Case {
    std::function<void(PoseTransformerConfig&)> edit;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {[](auto& c) { c.heads = 3; }, "pose_transformer: heads: must divide d_model = 64 (got 3)"},
      {[](auto& c) { c.d_model = 0; }, "pose_transformer: d_model: must be a positive integer (got 0)"},
      {[](auto& c) { c.layers = -1; }, "layers: must be a positive integer (got -1)"},
      {[](auto& c) { c.head_hidden = 0; }, "head_hidden: must be a positive integer (got 0)"},
      {[](auto& c) { c.dropout = 1.0; }, "dropout: must be a probability in [0, 1) (got 1)"},
      {[](auto& c) { c.head_dropout = -0.1; }, "head_dropout: must be a probability in [0, 1) (got -0.1)"},
      {[](auto& c) { c.graph_hidden = -4; }, "graph_hidden: must be >= 0"},
      {[](auto& c) { c.graph_hidden = 0; c.joint_embed = 8; },
       "joint_embed: needs graph refinement (graph_hidden > 0), but graph_hidden = 0 (got 8)"},
      {[](auto& c) { c.keypoints = 15; },
       "keypoints: graph refinement uses the COCO-17 skeleton and needs 17 (got 15)"},
      {[](auto& c) { c.subcarriers = 0; }, "subcarriers: must be a positive integer (got 0)"},
  };
  for (const auto& c : cases) {
    PoseTransformerConfig cfg = pose_transformer_preset("pose_micro");
    c.edit(cfg);
    const std::string msg = error_of([&] { cfg.validate(); });
    EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
    EXPECT_NE(error_of([&] { PoseTransformer m(cfg); }).find(c.expected), std::string::npos);
  }
  // Without the graph, other keypoint counts are fine.
  PoseTransformerConfig no_graph = pose_transformer_preset("pose_nano");
  no_graph.keypoints = 15;
  EXPECT_EQ(PoseTransformer(no_graph)->forward(csi_batch(2)).sizes(), (std::vector<int64_t>{2, 15, 2}));
}

TEST(PoseTransformer, FromYamlReportsFileLineAndKey) {
  const ConfigNode n = ConfigNode::load_string("model:\n  d_model: 64\n  heads: 3\n", "cfg.yaml");
  const std::string msg = error_of([&] { PoseTransformerConfig::from_yaml(n.child("model")); });
  EXPECT_NE(msg.find("cfg.yaml:3"), std::string::npos) << msg;
  EXPECT_NE(msg.find("model.heads: must divide d_model = 64 (got 3)"), std::string::npos) << msg;
  const ConfigNode typo = ConfigNode::load_string("d_model: 64\nhaeds: 2\n", "cfg.yaml");
  PoseTransformerConfig::from_yaml(typo);  // from_yaml leaves finish() to the caller...
  EXPECT_NE(error_of([&] { typo.finish(); }).find("haeds"), std::string::npos);  // ...which catches the typo
}

TEST(PoseTransformer, YamlRoundTripAndPresetBase) {
  PoseTransformerConfig c = pose_transformer_preset("pose_flagship");
  c.dropout = 0.1;
  c.refine_scale = 0.25;
  const ConfigNode n = ConfigNode::load_string(c.to_yaml(), "<to_yaml>");
  const PoseTransformerConfig back = PoseTransformerConfig::from_yaml(n);
  n.finish();
  EXPECT_EQ(back.to_yaml(), c.to_yaml());
  EXPECT_NE(c.to_yaml().find("dropout: 0.1\n"), std::string::npos) << c.to_yaml();

  const ConfigNode over = ConfigNode::load_string("layers: 2\n", "<test>");
  const PoseTransformerConfig two = PoseTransformerConfig::from_yaml(over, pose_transformer_preset("pose_flagship"));
  EXPECT_EQ(two.layers, 2);
  EXPECT_EQ(two.d_model, 256);
  EXPECT_EQ(two.joint_embed, 32);
}

// ---- checkpoints ------------------------------------------------------------------------------

TEST(PoseTransformer, SaveLoadRoundTripGivesIdenticalOutputs) {
  TempDir dir;
  for (const std::string preset : {"pose_micro", "pose_flagship"}) {
    SCOPED_TRACE(preset);
    PoseTransformer a = make(preset, /*seed=*/1);
    PoseTransformer b = make(preset, /*seed=*/2);
    const std::string path = dir.file(preset + ".safetensors");
    save_safetensors(path, state_dict(*a), {{"family", "pose_transformer"}, {"preset", preset}});
    const SafetensorsFile f = load_safetensors(path);
    EXPECT_EQ(f.metadata.at("preset"), preset);
    load_state_dict(*b, f.tensors, /*strict=*/true);
    a->eval();
    b->eval();
    const torch::Tensor x = csi_batch(5);
    EXPECT_TRUE(torch::equal(a->forward(x), b->forward(x)));
  }
  // A checkpoint of another preset fails strictly with the differences named.
  PoseTransformer micro = make("pose_micro");
  const std::string msg = error_of(
      [&] { load_state_dict(*micro, load_safetensors(dir.file("pose_flagship.safetensors")).tensors, true); });
  EXPECT_NE(msg.find("unexpected: gr.je, tf.layers.1."), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape mismatch: pos expected [1, 10, 64] got [1, 10, 256]"), std::string::npos) << msg;
}

TEST(PoseTransformer, CpuAndCudaAgree_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  PoseTransformer m = make("pose_flagship");
  m->eval();
  const torch::Tensor x = csi_batch(8);
  torch::NoGradGuard no_grad;
  const torch::Tensor cpu = m->forward(x);
  m->to(torch::kCUDA);
  const torch::Tensor gpu = m->forward(x.to(torch::kCUDA)).cpu();
  EXPECT_TRUE(m->gr->adjacency().is_cuda());
  EXPECT_TRUE(torch::allclose(cpu, gpu, 1e-4, 1e-4)) << (cpu - gpu).abs().max().item<double>();
}

}  // namespace
}  // namespace csipose
