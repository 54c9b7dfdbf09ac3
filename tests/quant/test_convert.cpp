// Conversion to int8: every quantized op computes, after convert, what its fake-quant form computed
// (to one output step on a small fraction of elements); BatchNorm folding is exact in eval and
// follows PyTorch's BatchNorm in training; whole models convert, and the .csq file round-trips bit
// for bit, stores int8 weights only and refuses a modified payload.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <functional>
#include <fstream>
#include <array>
#include <limits>
#include <string>

#include "common/check.h"
#include "common/json.h"
#include "data/npy_torch.h"
#include "models/int8_checkpoint.h"
#include "models/pose_model.h"
#include "models/registry.h"
#include "models/safetensors.h"
#include "quant/bitpack.h"
#include "quant/int8_backend.h"
#include "quant/prepare.h"
#include "quant/qmodules.h"
#include "quant/row_softmax.h"
#include "testing.h"

namespace csipose {
namespace {
using testing::TempDir;

/// One op under the name "op" (prepare looks at children), with a BatchNorm "bn" after convs.
struct OneOpImpl : torch::nn::Module {
  explicit OneOpImpl(const std::string& kind) : kind(kind) {
    if (kind == "conv1d") {
      conv1 = register_module("op", QConv1d(torch::nn::Conv1dOptions(8, 12, 3).padding(2).dilation(2).groups(2)));
      bn = register_module("bn", QBatchNorm(12));
    } else if (kind == "conv2d") {
      conv2 = register_module("op", QConv2d(torch::nn::Conv2dOptions(6, 10, {1, 3}).stride({1, 2}).padding({0, 1})));
      bn = register_module("bn", QBatchNorm(10));
    } else if (kind == "linear") {
      lin = register_module("op", QLinear(24, 16));
    } else {
      mm = register_module("op", QMatmul());
    }
  }
  torch::Tensor forward(const torch::Tensor& x) {
    if (kind == "conv1d") return bn(conv1(x));
    if (kind == "conv2d") return bn(conv2(x));
    if (kind == "linear") return lin(x);
    return mm(x, x.transpose(-2, -1));
  }
  torch::Tensor input(int64_t n) const {
    if (kind == "conv1d") return torch::randn({n, 8, 17});
    if (kind == "conv2d") return torch::randn({n, 6, 3, 11});
    if (kind == "linear") return torch::randn({n, 5, 24});
    return torch::randn({n, 2, 7, 9});
  }
  std::string kind;
  QConv1d conv1{nullptr};
  QConv2d conv2{nullptr};
  QLinear lin{nullptr};
  QMatmul mm{nullptr};
  QBatchNorm bn{nullptr};
};

/// Non-trivial BatchNorm state everywhere in a model.
void randomize_batchnorms(torch::nn::Module& m) {
  torch::NoGradGuard g;
  for (auto& kv : m.named_buffers()) {
    if (kv.key().find("running_mean") != std::string::npos) kv.value().copy_(torch::randn_like(kv.value()) * 0.2);
    if (kv.key().find("running_var") != std::string::npos) kv.value().copy_(torch::rand_like(kv.value()) + 0.5);
  }
  for (auto& kv : m.named_parameters()) {
    const auto& k = kv.key();
    if (k.find("bn") != std::string::npos || k.find("block.1.") != std::string::npos) {
      if (k.size() > 6 && k.compare(k.size() - 6, 6, "weight") == 0) kv.value().copy_(1 + 0.2 * torch::randn_like(kv.value()));
      if (k.size() > 4 && k.compare(k.size() - 4, 4, "bias") == 0) kv.value().copy_(0.1 * torch::randn_like(kv.value()));
    }
  }
}

class ConvertOp : public ::testing::TestWithParam<std::string> {};

TEST_P(ConvertOp, Int8AgreesWithFakeQuantToOneStep) {
  torch::manual_seed(11);
  OneOpImpl m(GetParam());
  randomize_batchnorms(m);
  m.eval();
  const std::vector<std::pair<std::string, std::string>> pairs =
      m.bn ? std::vector<std::pair<std::string, std::string>>{{"op", "bn"}} : std::vector<std::pair<std::string, std::string>>{};
  PreparedModel p = prepare(m, QuantPolicy{}, pairs);
  ASSERT_EQ(p.hooks.size(), 1u);
  EXPECT_EQ(p.folded_bn(), m.bn ? 1 : 0);
  torch::NoGradGuard g;
  p.set_mode(QuantMode::observe);
  for (int i = 0; i < 3; ++i) m.forward(m.input(16));
  p.freeze_observers(true);
  p.set_mode(QuantMode::fake_quant);
  const torch::Tensor x = m.input(32);
  const torch::Tensor fq = m.forward(x);
  p.convert(m);
  const QuantHook::Int8State* s = p.hooks[0].second->int8_state();
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(static_cast<bool>(s->packed), GetParam() != "matmul");  // weighted ops run the int8 kernel
  const torch::Tensor i8 = m.forward(x);
  ASSERT_EQ(i8.sizes(), fq.sizes());
  const double step = s->output->scale[0];
  const torch::Tensor steps = ((i8 - fq).abs() / step);
  EXPECT_LE(steps.max().item<double>(), 1.0 + 1e-3) << GetParam();
  const double off = (steps > 0.5).to(torch::kDouble).mean().item<double>();
  EXPECT_LE(off, 0.01) << GetParam() << ": " << off * 100 << "% of outputs differ by a step";
  // The output grid is the output point's: every value is s_out * (q - zp) for an integer q.
  const torch::Tensor q = i8 / step + s->output->zero_point[0];
  EXPECT_LT((q - q.round()).abs().max().item<double>(), 1e-3);
}

INSTANTIATE_TEST_SUITE_P(Ops, ConvertOp, ::testing::Values("conv1d", "conv2d", "linear", "matmul"));

TEST(FoldBatchNorm, EvalIsTheFoldedOpAndTrainingFollowsPyTorch) {
  for (const std::string kind : {"conv1d", "conv2d"}) {
    torch::manual_seed(5);
    OneOpImpl ref(kind), folded(kind);
    randomize_batchnorms(ref);
    {
      torch::NoGradGuard g;
      for (size_t i = 0; i < ref.parameters().size(); ++i) folded.parameters()[i].copy_(ref.parameters()[i]);
      for (size_t i = 0; i < ref.buffers().size(); ++i) folded.buffers()[i].copy_(ref.buffers()[i]);
    }
    PreparedModel p = prepare(folded, QuantPolicy{}, {{"op", "bn"}});
    p.set_mode(QuantMode::observe);  // quantization points observe only: the float math of folding
    const torch::Tensor x = ref.input(8);
    ref.eval();
    folded.eval();
    EXPECT_TRUE(torch::allclose(folded.forward(x), ref.forward(x), 1e-5, 1e-5)) << kind;
    // Training mode, BatchNorm not frozen: batch statistics, and the same running-stat update.
    ref.train();
    folded.train();
    const torch::Tensor yr = ref.forward(x), yf = folded.forward(x);
    EXPECT_TRUE(torch::allclose(yf, yr, 1e-4, 1e-5)) << kind << " max diff " << (yf - yr).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(folded.bn->running_mean, ref.bn->running_mean, 1e-5, 1e-6)) << kind;
    EXPECT_TRUE(torch::allclose(folded.bn->running_var, ref.bn->running_var, 1e-5, 1e-6)) << kind;
    EXPECT_EQ(folded.bn->num_batches_tracked.item<int64_t>(), ref.bn->num_batches_tracked.item<int64_t>());
    // Frozen BatchNorm in training: running statistics, nothing updated.
    p.freeze_bn(true);
    const torch::Tensor mean_before = folded.bn->running_mean.clone();
    ref.eval();
    EXPECT_TRUE(torch::allclose(folded.forward(x), ref.forward(x), 1e-5, 1e-5)) << kind;
    EXPECT_TRUE(torch::equal(folded.bn->running_mean, mean_before));
    // Gradients reach the conv weight and the BatchNorm's gamma / beta through the folded op.
    p.set_mode(QuantMode::fake_quant);
    folded.forward(x).pow(2).sum().backward();
    EXPECT_GT(folded.bn->weight.grad().abs().sum().item<double>(), 0.0);
    EXPECT_GT(folded.bn->bias.grad().abs().sum().item<double>(), 0.0);
  }
}

struct Converted {
  std::shared_ptr<PoseModelImpl> model;
  ModelConfig config;
  torch::Tensor x, fake_quant, int8;
};

Converted convert_preset(const std::string& preset, uint64_t seed, const QuantPolicy& policy = QuantPolicy{}) {
  torch::manual_seed(seed);
  Converted c;
  c.config = model_preset(preset);
  c.model = make_model(c.config);
  randomize_batchnorms(*c.model);
  c.model->eval();
  PreparedModel p = prepare(*c.model, policy, c.model->bn_fold_pairs());
  torch::NoGradGuard g;
  std::vector<int64_t> shape{8};
  for (int64_t d : c.model->input_shape()) shape.push_back(d);
  p.set_mode(QuantMode::observe);
  for (int i = 0; i < 2; ++i) c.model->forward(torch::rand(shape));
  p.freeze_observers(true);
  p.set_mode(QuantMode::fake_quant);
  c.x = torch::rand(shape);
  c.fake_quant = c.model->forward(c.x);
  p.convert(*c.model);
  c.int8 = c.model->forward(c.x);
  return c;
}

TEST(ConvertModel, WiFlowInt8FollowsFakeQuantAndRoundTripsThroughCsq) {
  const Converted c = convert_preset("wiflow_tiny", 21);
  // 48 ops, 42 convs with a BatchNorm after them (all but the 6 attention ones... qkv has one).
  const PreparedModel p = prepared_hooks(*c.model);
  EXPECT_EQ(p.hooks.size(), 48u);
  EXPECT_EQ(p.folded_bn(), 44);  // every conv: 20 TCN + 20 encoder + 2 qkv + 2 decoder
  // End to end, a one-step difference somewhere can move later values a little; the outputs
  // (sigmoid-range keypoints) stay within a few output steps of the fake-quant model.
  const double max_diff = (c.int8 - c.fake_quant).abs().max().item<double>();
  EXPECT_LT(max_diff, 0.02) << max_diff;
  EXPECT_LT((c.int8 - c.fake_quant).abs().mean().item<double>(), 2e-3);

  TempDir tmp;
  const std::string path = tmp.file("m.csq");
  save_int8_checkpoint(path, c.config, QuantPolicy{}, *c.model, {{"metric", "test metric"}});
  ASSERT_TRUE(is_int8_checkpoint(path));
  Int8Checkpoint back = load_int8_checkpoint(path);
  EXPECT_EQ(back.metadata.at("metric"), "test metric");
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(back.model->forward(c.x), c.int8));  // bit for bit
  // The converted ops' float weights are not in the file: NaN in the loaded model, unused.
  int nan_params = 0;
  for (const auto& t : back.model->parameters()) nan_params += torch::isnan(t).any().item<bool>() ? 1 : 0;
  EXPECT_GT(nan_params, 40);
  const Int8Size size = int8_checkpoint_size(path);
  int64_t fp32_bytes = 0;
  for (const auto& kv : state_dict(*make_model(c.config))) fp32_bytes += kv.second.numel() * kv.second.element_size();
  EXPECT_GT(size.int8_weight_bytes, 0);
  // Tensors: 1 byte per weight instead of 4 (plus int32 biases and the few float tensors). The file
  // of a model this small also carries a sizeable JSON header (every op's qparams).
  EXPECT_LT(size.int8_weight_bytes + size.float_bytes, fp32_bytes / 2) << "int8 tensors vs fp32 " << fp32_bytes;
  EXPECT_LT(size.file_bytes, fp32_bytes) << "int8 file " << size.file_bytes << " vs fp32 " << fp32_bytes;

  // A modified payload byte is refused with the reason.
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  bytes[bytes.size() - 3] ^= 0x10;
  {
    std::ofstream out(tmp.file("bad.csq"), std::ios::binary);
    out << bytes;
  }
  const std::string err = testing::error_of([&] { load_int8_checkpoint(tmp.file("bad.csq")); });
  EXPECT_NE(err.find("sha256"), std::string::npos) << err;
  EXPECT_FALSE(is_int8_checkpoint(tmp.file("missing.csq")));
}

TEST(ConvertModel, PoseTransformerInt8FollowsFakeQuant) {
  const Converted c = convert_preset("pose_nano", 22);
  EXPECT_EQ(prepared_hooks(*c.model).folded_bn(), 0);
  const double max_diff = (c.int8 - c.fake_quant).abs().max().item<double>();
  EXPECT_LT(max_diff, 0.02) << max_diff;
  EXPECT_GT(max_diff, 0.0 - 1.0);
  TempDir tmp;
  save_int8_checkpoint(tmp.file("p.csq"), c.config, QuantPolicy{}, *c.model, {{"metric", "m"}});
  torch::NoGradGuard g;
  EXPECT_TRUE(torch::equal(load_int8_checkpoint(tmp.file("p.csq")).model->forward(c.x), c.int8));
}

// `predict` on a .csq gives the in-memory int8 model's outputs bit for bit (it runs under inference
// mode), and `infer-bench` reports what the benchmarks read: the numerics, the thread setup,
// latencies, throughput from the median forward, and the memory figures.
TEST(ConvertModel, PredictAndInferBenchRunCsqFiles) {
  const Converted c = convert_preset("pose_nano", 24);
  TempDir tmp;
  save_int8_checkpoint(tmp.file("p.csq"), c.config, QuantPolicy{}, *c.model, {{"metric", "m"}});
  save_npy(tmp.file("x.npy"), c.x);
  auto r = testing::run_csipose({"predict", "--checkpoint", tmp.file("p.csq"), "--input", tmp.file("x.npy"), "--output",
                                 tmp.file("y.npy"), "--batch-size", "8", "--threads", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(torch::equal(load_npy(tmp.file("y.npy")), c.int8));
  // Other batch sizes: the float ops' vectorized bodies and scalar tails (sigmoid, softmax) round
  // the last bit differently, so within float rounding.
  r = testing::run_csipose({"predict", "--checkpoint", tmp.file("p.csq"), "--input", tmp.file("x.npy"), "--output",
                            tmp.file("y3.npy"), "--batch-size", "3", "--threads", "1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_LT((load_npy(tmp.file("y3.npy")) - c.int8).abs().max().item<float>(), 1e-6f);
  for (const std::string backend : {"onednn", "reference"}) {
    if (backend == "onednn" && !onednn_available()) continue;
    r = testing::run_csipose({"infer-bench", "--checkpoint", tmp.file("p.csq"), "--iters", "5", "--warmup", "1",
                              "--threads", "1", "--int8-backend", backend});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const Json j = Json::parse(r.output.substr(r.output.find('{')));
    EXPECT_EQ(j.at("numerics").as_string(), "int8");
    EXPECT_EQ(j.at("int8_backend").as_string(), backend);
    EXPECT_EQ(j.at("threads").as_int(), 1);
    EXPECT_LE(j.at("openblas_threads").as_int(), 1);  // 0 without OpenBLAS, else pinned to one
    const double p50 = j.at("p50_ms").as_double();
    EXPECT_GT(p50, 0.0);
    EXPECT_GE(j.at("p90_ms").as_double(), p50);
    EXPECT_NEAR(j.at("samples_per_s").as_double(), 1000.0 / p50, 1e-6 * 1000.0 / p50);
    EXPECT_GT(j.at("peak_rss_kib").as_int(), 0);
    EXPECT_GT(j.at("model_rss_kib").as_int(), 0);
  }
  const testing::RunResult bad = testing::run_csipose({"infer-bench", "--checkpoint", tmp.file("p.csq"), "--int8-backend", "fast"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("expected reference or onednn"), std::string::npos) << bad.output;
}

// ---- int8 backends ---------------------------------------------------------------------------------

/// Selects an int8 backend for one scope.
struct BackendScope {
  explicit BackendScope(Int8BackendKind k) : before(int8_backend()) { set_int8_backend(k); }
  ~BackendScope() { set_int8_backend(before); }
  Int8BackendKind before;
};

torch::Tensor random_int8(std::vector<int64_t> shape) {
  return torch::randint(-128, 128, shape, torch::TensorOptions().dtype(torch::kInt8));
}

/// A permutation-like code table over all 256 codes: table[b] = b * mul + add (mod 256).
std::array<int8_t, 256> affine_code_table(int mul, int add) {
  std::array<int8_t, 256> table{};
  for (int b = 0; b < 256; ++b) table[static_cast<size_t>(b)] = static_cast<int8_t>(static_cast<uint8_t>(b * mul + add));
  return table;
}

/// int8 codes mapped through a 256-entry table (indexed by the code's bit pattern), as a chain does.
torch::Tensor map_codes(const torch::Tensor& q, const std::array<int8_t, 256>& table) {
  torch::Tensor m = q.contiguous().clone();
  int8_t* p = m.data_ptr<int8_t>();
  for (int64_t i = 0; i < m.numel(); ++i) p[i] = table[static_cast<uint8_t>(p[i])];
  return m;
}

// oneDNN's raw s8 products plus the zero-point terms give the reference's exact integers, so every
// op (and every whole model) is bit-identical under both backends, including the worst-case
// inputs (all -128 / all 127) and zero points at the ends of the range.
TEST(Int8Backend, OnednnOpsAreBitIdenticalToTheReference) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  torch::manual_seed(3);
  for (const int32_t zp : {-128, -7, 0, 127}) {
    const QuantParams in = QuantParams::per_tensor(0.02f, zp, -128, 127);
    const QuantParams out = QuantParams::per_tensor(0.05f, 3, -128, 127);
    auto both = [&](const std::function<torch::Tensor()>& op) {
      torch::Tensor ref, dnn;
      {
        BackendScope s(Int8BackendKind::reference);
        ref = op();
      }
      {
        BackendScope s(Int8BackendKind::onednn);
        dnn = op();
      }
      EXPECT_TRUE(torch::equal(ref, dnn)) << "zp " << zp << " max diff "
                                          << (ref.to(torch::kInt) - dnn.to(torch::kInt)).abs().max().item<int>();
    };
    // linear, 3-D input
    const PackedWeight wl = pack_weight(torch::randn({16, 40}) * 0.1, torch::randn({16}) * 0.1, QuantSpec::weight_default(), in);
    for (const torch::Tensor& x : {random_int8({3, 5, 40}), torch::full({2, 40}, -128, torch::kInt8),
                                   torch::full({2, 40}, 127, torch::kInt8)})
      both([&] { return int8_linear(x, in, wl, out); });
    // conv1d: groups, dilation, padding, stride; depthwise; no bias
    const PackedWeight w1 = pack_weight(torch::randn({12, 4, 3}) * 0.1, torch::randn({12}) * 0.1, QuantSpec::weight_default(), in);
    const torch::Tensor x1 = random_int8({2, 8, 19});
    both([&] { return int8_conv1d(x1, in, w1, out, 2, 2, 2, 2); });
    const PackedWeight wd = pack_weight(torch::randn({8, 1, 3}) * 0.3, torch::Tensor(), QuantSpec::weight_default(), in);
    both([&] { return int8_conv1d(x1, in, wd, out, 1, 1, 1, 8); });
    // conv2d (1, k) kernels as WiFlow's encoder uses them
    const PackedWeight w2 = pack_weight(torch::randn({10, 6, 1, 3}) * 0.1, torch::randn({10}) * 0.1, QuantSpec::weight_default(), in);
    const torch::Tensor x2 = random_int8({2, 6, 3, 11});
    both([&] { return int8_conv2d(x2, in, w2, out, {1, 2}, {0, 1}, {1, 1}, 1); });
    // matmul of two activations, broadcast batch dimensions, both zero points
    const QuantParams b_qp = QuantParams::per_tensor(0.03f, -zp / 2, -128, 127);
    const torch::Tensor a = random_int8({2, 3, 7, 9}), b = random_int8({3, 9, 5});
    both([&] { return int8_matmul(a, in, b, b_qp, out); });
    // The fused float-in / float-out forms equal dequantize(reference op(quantize(x))) bit for bit.
    BackendScope s(Int8BackendKind::onednn);
    const torch::Tensor af = torch::randn({2, 3, 7, 9}) * 2, bf = torch::randn({3, 9, 5}) * 3;
    const torch::Tensor want_mm =
        dequantize_tensor(int8_matmul(quantize_tensor(af, in), in, quantize_tensor(bf, b_qp), b_qp, out), out);
    EXPECT_TRUE(torch::equal(int8_matmul_float(af, in, bf, b_qp, out), want_mm)) << "zp " << zp;
    // Transposed operands (attention's k^T) are quantized without a copy, to the same bits.
    const torch::Tensor at = (torch::randn({2, 3, 9, 7}) * 2).transpose(-2, -1), bt = torch::randn({3, 5, 9}).transpose(-2, -1);
    EXPECT_TRUE(torch::equal(int8_matmul_float(at, in, bt, b_qp, out),
                             dequantize_tensor(int8_matmul(quantize_tensor(at, in), in, quantize_tensor(bt, b_qp), b_qp,
                                                           out), out))) << "zp " << zp;
    // Head-split views (rows permuted, last dimension dense) and a permuted b, also to the same bits.
    const torch::Tensor ap = (torch::randn({2, 7, 3, 9}) * 2).permute({0, 2, 1, 3}),
                        bp = (torch::randn({9, 3, 5}) * 3).permute({1, 0, 2});
    EXPECT_TRUE(torch::equal(int8_matmul_float(ap, in, bp, b_qp, out),
                             dequantize_tensor(int8_matmul(quantize_tensor(ap, in), in, quantize_tensor(bp, b_qp), b_qp,
                                                           out), out))) << "zp " << zp;
    torch::Tensor an = torch::randn({2, 3, 9, 7});
    an[1][2][4][3] = NAN;
    EXPECT_THROW(int8_matmul_float(an.transpose(-2, -1), in, bt, b_qp, out), Error);  // non-finite refused
    const torch::Tensor xf = torch::randn({2, 8, 19}) * 2;
    const Int8Conv g1{{2}, {2}, {2}, 2};
    EXPECT_TRUE(torch::equal(int8_op_float(xf, in, w1, out, &g1),
                             dequantize_tensor(int8_conv1d(quantize_tensor(xf, in), in, w1, out, 2, 2, 2, 2), out)));
    const torch::Tensor lf = torch::randn({3, 5, 40}) * 2;
    EXPECT_TRUE(torch::equal(int8_op_float(lf, in, wl, out, nullptr),
                             dequantize_tensor(int8_linear(quantize_tensor(lf, in), in, wl, out), out)));
    EXPECT_THROW(int8_op_float(torch::full({2, 40}, NAN), in, wl, out, nullptr), Error);  // non-finite refused
  }
}

// The fused attention probabilities are the composed ops' codes bit for bit: int8 scores product
// (operands as attention hands them over: q^T and k as views of one narrowed qkv tensor), its
// output point, the per-group affine map and softmax of row_softmax, the next input point. The
// codes then go into the context product as they are.
TEST(Int8Backend, FusedAttentionProbabilitiesAreTheComposedOps) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  torch::manual_seed(8);
  for (const int32_t zp : {-128, -5, 0, 90}) {
    const QuantParams q_qp = QuantParams::per_tensor(0.05f, zp, -128, 127);
    const QuantParams k_qp = QuantParams::per_tensor(0.04f, -zp / 3, -128, 127);
    const QuantParams s_qp = QuantParams::per_tensor(0.08f, zp / 4, -128, 127);
    const QuantParams p_qp = QuantParams::per_tensor(1.0f / 255, -128, -128, 127);
    for (const auto& [b, g, cg, l] : std::vector<std::array<int64_t, 4>>{{6, 4, 8, 20}, {5, 2, 3, 15}, {1, 1, 16, 7}}) {
      const torch::Tensor qkv = torch::randn({b, 3 * g * cg, l}) * 2;  // (B, 3C, L) as the qkv conv gives it
      const torch::Tensor q = qkv.narrow(1, 0, g * cg).reshape({b, g, cg, l}).transpose(2, 3);  // (B, G, L, C/G)
      const torch::Tensor k = qkv.narrow(1, g * cg, g * cg).reshape({b, g, cg, l});
      const torch::Tensor a = torch::rand({g}) + 0.5, sh = torch::randn({g});
      const torch::Tensor scores = int8_matmul_float(q, q_qp, k, k_qp, s_qp);
      EXPECT_TRUE(torch::equal(scores, dequantize_tensor(int8_matmul(quantize_tensor(q.contiguous(), q_qp), q_qp,
                                                                     quantize_tensor(k.contiguous(), k_qp), k_qp, s_qp),
                                                         s_qp)))
          << "narrowed operands, zp " << zp;
      const torch::Tensor want = quantize_tensor(row_softmax(scores, a, sh), p_qp);
      const torch::Tensor got = int8_matmul_softmax(q, q_qp, k, k_qp, s_qp, 1.0f, a, sh, p_qp);
      ASSERT_EQ(got.scalar_type(), torch::kInt8);
      EXPECT_TRUE(torch::equal(got, want)) << "zp " << zp << " l " << l << ": "
                                           << (got.to(torch::kInt) - want.to(torch::kInt)).abs().max().item<int>();
      EXPECT_TRUE(torch::equal(int8_matmul_softmax(q, q_qp, k, k_qp, s_qp, 1.0f, {}, {}, p_qp),
                               quantize_tensor(row_softmax(scores), p_qp)))
          << "no affine map, zp " << zp;
      // The pose transformer's scaling: the float scores divided by sqrt(d) as the model does it.
      const double root = std::sqrt(static_cast<double>(cg));
      EXPECT_TRUE(torch::equal(int8_matmul_softmax(q, q_qp, k, k_qp, s_qp, static_cast<float>(root), {}, {}, p_qp),
                               quantize_tensor(row_softmax((scores / root).contiguous()), p_qp)))
          << "divisor, zp " << zp;
      // The context product takes the codes (transposed, as WiFlow's v p^T) as they are.
      const torch::Tensor v = qkv.narrow(1, 2 * g * cg, g * cg).reshape({b, g, cg, l});
      const QuantParams v_qp = QuantParams::per_tensor(0.03f, 4, -128, 127);
      EXPECT_TRUE(torch::equal(int8_matmul_float(v, v_qp, got.transpose(2, 3), p_qp, s_qp),
                               int8_matmul_float(v, v_qp, dequantize_tensor(got, p_qp).transpose(2, 3), p_qp, s_qp)))
          << "int8 operand, zp " << zp;
      // The context product handing the next op its codes: the float product quantized with the
      // next input point, for float and int8 operands, both roundings.
      const QuantParams next_qp = QuantParams::per_tensor(0.021f, -zp / 2, -128, 127);
      for (const Rounding r : {Rounding::half_even, Rounding::half_away}) {
        const torch::Tensor ctx = int8_matmul_float(got, p_qp, v.transpose(2, 3), v_qp, s_qp, r);
        const torch::Tensor codes = int8_matmul_codes(got, p_qp, v.transpose(2, 3), v_qp, s_qp, next_qp, r);
        ASSERT_EQ(codes.scalar_type(), torch::kInt8);
        EXPECT_TRUE(torch::equal(codes, quantize_tensor(ctx, next_qp, r))) << "codes, zp " << zp;
        // Merged heads: the same codes, laid out so that the heads' concatenation is a view.
        const torch::Tensor merged =
            int8_matmul_codes(got, p_qp, v.transpose(2, 3), v_qp, s_qp, next_qp, r, /*merge_heads=*/true);
        EXPECT_TRUE(torch::equal(merged, codes)) << "merged heads, zp " << zp;
        EXPECT_TRUE(merged.transpose(1, 2).is_contiguous());
        EXPECT_TRUE(torch::equal(int8_matmul_codes(q, q_qp, k, k_qp, s_qp, next_qp, r),
                                 quantize_tensor(int8_matmul_float(q, q_qp, k, k_qp, s_qp, r), next_qp, r)))
            << "float operands, zp " << zp;
      }
    }
  }
  // Bad scale / shift shapes and non-finite inputs are refused.
  const QuantParams qp = QuantParams::per_tensor(0.05f, 0, -128, 127);
  const torch::Tensor x = torch::randn({2, 3, 4, 5}), y = torch::randn({2, 3, 5, 4});
  EXPECT_THROW(int8_matmul_softmax(x, qp, y, qp, qp, 1.0f, torch::ones({2}), {}, qp), Error);
  torch::Tensor xn = x.clone();
  xn[1][2][3][4] = NAN;
  EXPECT_THROW(int8_matmul_softmax(xn, qp, y, qp, qp, 1.0f, {}, {}, qp), Error);
}

/// The exact int64 product of int8 tensors (float64 GEMM of integers: exact, see int8_ops.h).
torch::Tensor exact_product(const torch::Tensor& a, const torch::Tensor& b) {
  return torch::matmul(a.to(torch::kDouble), b.to(torch::kDouble)).to(torch::kLong);
}

// The raw entry point (caller buffers; per-thread plans keyed by layout, handles re-pointed per
// call) and the tensor one (batch dimensions folded into rows when b is shared) give exact
// products for every layout the fused ops use, size-1 dimensions included, and a cached plan run
// again on other data gives that data's product.
TEST(Int8Backend, OnednnGemmLayoutsAreExact) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  torch::manual_seed(11);
  for (const auto& [m, k, n] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {1, 7, 1}, {3, 5, 4}, {10, 64, 128},
                                                                     {17, 33, 9}, {1, 342, 48}}) {
    for (int round = 0; round < 2; ++round) {  // round 1 reuses round 0's plans on new data
      const torch::Tensor a = random_int8({m, k});
      const torch::Tensor w = random_int8({n, k});  // a weight (N, K), read as its transpose
      torch::Tensor c = torch::full({m, n}, -1, torch::kInt);
      S8GemmRaw g;
      g.m = m, g.k = k, g.n = n, g.a = a.data_ptr<int8_t>(), g.lda = k;
      g.b = w.data_ptr<int8_t>(), g.b_stride_k = 1, g.b_stride_n = k, g.c = c.data_ptr<int32_t>(), g.ldc = n;
      onednn_s8_gemm_raw(g);
      EXPECT_TRUE(torch::equal(c.to(torch::kLong), exact_product(a, w.t()))) << m << "x" << k << "x" << n;
      // Row-major b, batched with a shared and with a per-batch b.
      const torch::Tensor a3 = random_int8({3, m, k}), b3 = random_int8({3, k, n});
      torch::Tensor c3 = torch::empty({3, m, n}, torch::kInt);
      S8GemmRaw gb;
      gb.m = m, gb.k = k, gb.n = n, gb.a = a3.data_ptr<int8_t>(), gb.lda = k, gb.b = b3.data_ptr<int8_t>();
      gb.b_stride_k = n, gb.b_stride_n = 1, gb.c = c3.data_ptr<int32_t>(), gb.ldc = n;
      gb.batch = 3, gb.a_batch = m * k, gb.b_batch = k * n, gb.c_batch = m * n;
      onednn_s8_gemm_raw(gb);
      EXPECT_TRUE(torch::equal(c3.to(torch::kLong), exact_product(a3, b3))) << "batched " << m << "x" << k << "x" << n;
      gb.b_batch = 0;
      onednn_s8_gemm_raw(gb);
      EXPECT_TRUE(torch::equal(c3.to(torch::kLong), exact_product(a3, b3[0].unsqueeze(0))))
          << "shared b " << m << "x" << k << "x" << n;
      // Tensor form: shared b folds the batch into rows, a transposed a does not fold.
      EXPECT_TRUE(torch::equal(onednn_s8_gemm(a3, w.t().unsqueeze(0)).to(torch::kLong),
                               exact_product(a3, w.t().unsqueeze(0))));
      const torch::Tensor at = random_int8({m, 3, k}).transpose(0, 1);  // rows not equally spaced
      EXPECT_TRUE(torch::equal(onednn_s8_gemm(at, w.t().unsqueeze(0)).to(torch::kLong),
                               exact_product(at, w.t().unsqueeze(0))));
    }
  }
  S8GemmRaw bad;
  EXPECT_THROW(onednn_s8_gemm_raw(bad), Error);  // empty geometry is refused, never run
}

// The fused path's inline rounding (add-and-subtract 2^23) against the contract at exact ties of
// both parities, at +-0, near and beyond 2^22 / 2^23 / 2^24 and at huge values (clamped), and its
// requantization against the reference on the same ops: bit-identical.
TEST(Int8Backend, FusedRoundingMatchesTheReferenceAtTiesAndExtremes) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  // scale 0.5: x * (1 / s) = 2x, so x = j / 4 puts 2x on every half-integer tie j / 2.
  const QuantParams in = QuantParams::per_tensor(0.5f, 3, -128, 127);
  std::vector<float> xs;
  for (int j = -600; j <= 600; ++j) xs.push_back(static_cast<float>(j) / 4.0f);
  for (float big : {4194303.5f, 4194304.5f, 8388607.5f, 8388608.0f, 16777216.0f, 3.0e7f, 1.0e30f, 3.4e38f})
    for (float sign : {1.0f, -1.0f}) xs.push_back(sign * big / 2.0f);
  xs.push_back(-0.0f);
  xs.push_back(0.2f);
  xs.push_back(-0.2f);
  const auto n = static_cast<int64_t>(xs.size());
  const torch::Tensor x = torch::tensor(xs).reshape({1, n});
  // Identity-like weight: output c reads input c, so every input's quantization shows.
  const PackedWeight w = pack_weight(torch::eye(n) * 0.25f, torch::Tensor(), QuantSpec::weight_default(), in);
  for (const QuantParams& out :
       {QuantParams::per_tensor(0.25f, 0, -128, 127), QuantParams::per_tensor(0.0625f, -100, -128, 127)}) {
    const torch::Tensor fused = int8_op_float(x, in, w, out, nullptr);
    const torch::Tensor ref = dequantize_tensor(int8_linear(quantize_tensor(x, in), in, w, out), out);
    EXPECT_TRUE(torch::equal(fused, ref)) << "max diff " << (fused - ref).abs().max().item<float>();
    const torch::Tensor a = x.reshape({1, 1, n}), b = torch::tensor(xs).reshape({1, n, 1}) * 0.5f;
    EXPECT_TRUE(torch::equal(int8_matmul_float(a, in, b, in, out),
                             dequantize_tensor(int8_matmul(quantize_tensor(a, in), in, quantize_tensor(b, in), in, out),
                                               out)));
  }
  // The quantize step alone, element by element against quantize_tensor (ties to even).
  const torch::Tensor one = torch::eye(1) * 1.0f;
  const PackedWeight w1 = pack_weight(one, torch::Tensor(), QuantSpec::weight_default(), in);
  const QuantParams out1 = QuantParams::per_tensor(0.5f, 3, -128, 127);
  const torch::Tensor col = torch::tensor(xs).reshape({n, 1});
  EXPECT_TRUE(torch::equal(int8_op_float(col, in, w1, out1, nullptr),
                           dequantize_tensor(int8_linear(quantize_tensor(col, in), in, w1, out1), out1)));
}

TEST(Int8Backend, WholeModelsAreBitIdenticalUnderBothBackends) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  for (const char* preset : {"wiflow_tiny", "pose_nano"}) {
    Converted c;
    {
      BackendScope s(Int8BackendKind::reference);
      c = convert_preset(preset, 5);
    }
    BackendScope s(Int8BackendKind::onednn);
    torch::NoGradGuard g;
    EXPECT_TRUE(torch::equal(c.model->forward(c.x), c.int8)) << preset;
  }
}

// ---- int8 chains ----------------------------------------------------------------------------------

// The fused op with int8 on either side gives the reference op's codes: int8 output = the codes
// int8_linear / int8_conv*d compute, through a code table when given; an int8 input = the codes
// quantize_tensor would have made of the float input.
TEST(Int8Chain, FusedOpsTakeAndGiveTheReferenceCodes) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  torch::manual_seed(9);
  const QuantParams in = QuantParams::per_tensor(0.02f, -5, -128, 127);
  const QuantParams out = QuantParams::per_tensor(0.05f, 3, -128, 127);
  const QuantParams next = QuantParams::per_tensor(0.01f, -128, -128, 127);  // a post-ReLU range
  const std::array<int8_t, 256> relu = int8_code_table([](const torch::Tensor& v) { return torch::relu(v); }, out, next);
  // The table by hand: code q of `out` is 0.05 (q - 3); ReLU; quantize at 0.01 with zero point -128.
  for (int q = -128; q <= 127; ++q) {
    const float real = std::max(0.0f, static_cast<float>(q - 3) * 0.05f);
    const float code = std::min(127.0f, std::nearbyint(real * (1.0f / 0.01f)) - 128.0f);
    EXPECT_EQ(relu[static_cast<uint8_t>(static_cast<int8_t>(q))], static_cast<int8_t>(code)) << q;
  }
  const auto mapped = [&](const torch::Tensor& codes) { return map_codes(codes, relu); };
  const PackedWeight wl = pack_weight(torch::randn({16, 40}) * 0.1, torch::randn({16}) * 0.1, QuantSpec::weight_default(), in);
  const PackedWeight w1 = pack_weight(torch::randn({12, 4, 3}) * 0.1, torch::randn({12}) * 0.1, QuantSpec::weight_default(), in);
  const PackedWeight w2 = pack_weight(torch::randn({10, 6, 1, 3}) * 0.1, torch::randn({10}) * 0.1, QuantSpec::weight_default(), in);
  const Int8Conv g1{{2}, {2}, {2}, 2}, g2{{1, 2}, {0, 1}, {1, 1}, 1};
  struct Case {
    torch::Tensor x;
    const PackedWeight* w;
    const Int8Conv* g;
    std::function<torch::Tensor(const torch::Tensor&)> ref;  // int8 codes in -> int8 codes out
  };
  const std::vector<Case> cases = {
      {torch::randn({3, 5, 40}) * 2, &wl, nullptr, [&](const torch::Tensor& q) { return int8_linear(q, in, wl, out); }},
      {torch::randn({2, 8, 19}) * 2, &w1, &g1, [&](const torch::Tensor& q) { return int8_conv1d(q, in, w1, out, 2, 2, 2, 2); }},
      {torch::randn({2, 6, 3, 11}) * 2, &w2, &g2,
       [&](const torch::Tensor& q) { return int8_conv2d(q, in, w2, out, {1, 2}, {0, 1}, {1, 1}, 1); }},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const torch::Tensor xq = quantize_tensor(c.x, in);
    const torch::Tensor want = c.ref(xq);
    const torch::Tensor codes = int8_op_fused(c.x, in, *c.w, out, c.g, Int8Output{true, nullptr});
    ASSERT_EQ(codes.scalar_type(), torch::kInt8);
    EXPECT_TRUE(torch::equal(codes, want)) << "case " << i;
    EXPECT_TRUE(torch::equal(int8_op_fused(c.x, in, *c.w, out, c.g, Int8Output{true, relu.data()}), mapped(want)))
        << "case " << i;
    // int8 in: the same as quantizing the float input here; float out: the dequantized codes.
    EXPECT_TRUE(torch::equal(int8_op_fused(xq, in, *c.w, out, c.g, Int8Output{}), dequantize_tensor(want, out)))
        << "case " << i;
    EXPECT_TRUE(torch::equal(int8_op_fused(xq, in, *c.w, out, c.g, Int8Output{true, relu.data()}), mapped(want)))
        << "case " << i;
    // ReLU folded into a float output: torch::relu of the plain float output, bit for bit.
    Int8Output relu_out;
    relu_out.relu = true;
    EXPECT_TRUE(torch::equal(int8_op_fused(c.x, in, *c.w, out, c.g, relu_out), torch::relu(dequantize_tensor(want, out))))
        << "case " << i;
    // Int8 out: the codes of that ReLU at the same point (max(q, zp)), which the relu table gives
    // for a next point equal to this one.
    relu_out.int8 = true;
    const torch::Tensor relu_codes = int8_op_fused(c.x, in, *c.w, out, c.g, relu_out);
    EXPECT_TRUE(torch::equal(relu_codes, torch::maximum(want, torch::full_like(want, out.zero_point[0]))))
        << "case " << i;
    EXPECT_TRUE(torch::equal(dequantize_tensor(relu_codes, out), torch::relu(dequantize_tensor(want, out))))
        << "case " << i;
    relu_out.table = relu.data();
    EXPECT_THROW(int8_op_fused(c.x, in, *c.w, out, c.g, relu_out), Error) << "case " << i;
  }
  EXPECT_THROW(int8_op_fused(cases[0].x, in, wl, out, nullptr, Int8Output{false, relu.data()}), Error);
  // Column tables (int8_linear_split): a linear op's outputs in equal groups, each group's codes
  // through its own table (null: unchanged); conv ops, uneven groups and float outputs are refused.
  const std::array<int8_t, 256> shift = int8_code_table([](const torch::Tensor& v) { return v; }, out, next);
  const torch::Tensor x_lin = torch::randn({3, 5, wl.q.size(1)});
  const torch::Tensor plain = int8_op_fused(x_lin, in, wl, out, nullptr, Int8Output{true, nullptr});
  const int64_t o = wl.out_channels();
  for (const int64_t g : {int64_t{1}, int64_t{4}, o}) {
    Int8Output split;
    split.int8 = true;
    for (int64_t i = 0; i < g; ++i) split.column_tables.push_back(i % 3 == 0 ? relu.data() : i % 3 == 1 ? nullptr : shift.data());
    torch::Tensor want = plain.clone();
    const int64_t width = o / g;
    for (int64_t i = 0; i < g; ++i) {
      torch::Tensor cols = want.narrow(-1, i * width, width);
      if (i % 3 == 0) cols.copy_(map_codes(cols.contiguous(), relu));
      if (i % 3 == 2) cols.copy_(map_codes(cols.contiguous(), shift));
    }
    EXPECT_TRUE(torch::equal(int8_op_fused(x_lin, in, wl, out, nullptr, split), want)) << g << " groups";
  }
  // Split heads: 2 groups x 2 heads of 4 outputs, laid out (G, 3, H, T = 5, 4): each group's heads
  // contiguous, the codes of the plain split output moved to their places.
  {
    Int8Output split;
    split.int8 = true;
    split.column_tables = {relu.data(), nullptr};
    split.heads = 2;
    torch::Tensor want = plain.clone();
    want.narrow(-1, 0, 8).copy_(map_codes(want.narrow(-1, 0, 8).contiguous(), relu));
    const torch::Tensor got = int8_op_fused(x_lin, in, wl, out, nullptr, split);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{2, 3, 2, 5, 4}));
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_TRUE(torch::equal(got, want.view({3, 5, 2, 2, 4}).permute({2, 0, 3, 1, 4})));
    split.heads = 3;  // 16 outputs do not split into 2 x 3 heads
    EXPECT_THROW(int8_op_fused(x_lin, in, wl, out, nullptr, split), Error);
  }
  Int8Output uneven;
  uneven.int8 = true;
  uneven.column_tables.assign(static_cast<size_t>(o + 1), nullptr);
  EXPECT_THROW(int8_op_fused(x_lin, in, wl, out, nullptr, uneven), Error);
  Int8Output float_split;
  float_split.column_tables = {relu.data()};
  EXPECT_THROW(int8_op_fused(x_lin, in, wl, out, nullptr, float_split), Error);
  Int8Output conv_split;
  conv_split.int8 = true;
  conv_split.column_tables = {relu.data(), nullptr};
  EXPECT_THROW(int8_op_fused(cases[1].x, in, w1, out, &g1, conv_split), Error);
}

// The fused convs build their columns with their own im2col (one pass into per-thread scratch)
// wherever ATen's would copy: every geometry of 1-d and 2-d convs, including output positions that
// lie wholly in the padding, strides over dilated kernels and groups, gives the reference codes.
TEST(Int8Chain, FusedConvColumnsMatchTheReferenceOverGeometries) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  torch::manual_seed(12);
  const QuantParams in = QuantParams::per_tensor(0.03f, 7, -128, 127);  // padding code 7, not 0
  const QuantParams out = QuantParams::per_tensor(0.04f, -2, -128, 127);
  // A code table (a permutation-like map over all 256 codes) for the mapped-output check.
  const std::array<int8_t, 256> table = affine_code_table(37, 11);
  const auto mapped = [&](const torch::Tensor& q) { return map_codes(q, table); };
  const int64_t default_chunk = int8_conv_chunk_bytes();
  int64_t cases = 0;
  // Whole-batch chunks (the default at this size) and a chunk per sample give the same codes, with
  // the explicit AVX-512 kernels (where the CPU has them: strided column gathers, requantization)
  // and without.
  const bool simd_before = set_int8_avx512_kernels(true);
  for (const auto& [chunk_bytes, simd] : std::vector<std::pair<int64_t, bool>>{
           {default_chunk, true}, {int64_t{1}, true}, {default_chunk, false}}) {
  set_int8_conv_chunk_bytes(chunk_bytes);
  set_int8_avx512_kernels(simd);
  {  // a linear op in chunks of rows: float and int8 inputs, float, int8 and mapped outputs
    const PackedWeight wl = pack_weight(torch::randn({24, 40}) * 0.1, torch::randn({24}) * 0.1,
                                        QuantSpec::weight_default(), in);
    const torch::Tensor xl = torch::randn({3, 7, 40}) * 2, ql = quantize_tensor(xl, in);
    const torch::Tensor want = int8_linear(ql, in, wl, out);
    EXPECT_TRUE(torch::equal(int8_op_fused(xl, in, wl, out, nullptr, Int8Output{true, nullptr}), want)) << chunk_bytes;
    EXPECT_TRUE(torch::equal(int8_op_fused(ql, in, wl, out, nullptr, Int8Output{true, table.data()}), mapped(want)))
        << chunk_bytes;
    EXPECT_TRUE(torch::equal(int8_op_fused(xl, in, wl, out, nullptr, Int8Output{}), dequantize_tensor(want, out)))
        << chunk_bytes;
    torch::Tensor xn = xl.clone();
    xn[2][6][39] = NAN;  // in the last chunk
    EXPECT_THROW(int8_op_fused(xn, in, wl, out, nullptr, Int8Output{}), Error) << chunk_bytes;
  }
  for (int64_t k : {1, 2, 3, 4})
    for (int64_t stride : {1, 2, 3})
      for (int64_t pad : {0, 1, 3, 5})
        for (int64_t dil : {1, 3})
          for (int64_t groups : {1, 2}) {
            const int64_t len = 9;
            if (len + 2 * pad < dil * (k - 1) + 1) continue;  // kernel longer than the padded input
            const PackedWeight w1 = pack_weight(torch::randn({4, 6 / groups, k}) * 0.2, torch::randn({4}) * 0.1,
                                                QuantSpec::weight_default(), in);
            const torch::Tensor x1 = torch::randn({3, 6, len}) * 2;
            const torch::Tensor q1 = quantize_tensor(x1, in);
            const Int8Conv g1{{stride}, {pad}, {dil}, groups};
            const torch::Tensor want1 = int8_conv1d(q1, in, w1, out, stride, pad, dil, groups);
            EXPECT_TRUE(torch::equal(int8_op_fused(x1, in, w1, out, &g1, Int8Output{true, nullptr}), want1))
                << "1-d k " << k << " stride " << stride << " pad " << pad << " dil " << dil << " groups " << groups
                << " chunk " << chunk_bytes << " simd " << simd;
            EXPECT_TRUE(torch::equal(int8_op_fused(x1, in, w1, out, &g1, Int8Output{true, table.data()}), mapped(want1)))
                << "1-d k " << k << " chunk " << chunk_bytes << ": through the code table";
            EXPECT_TRUE(torch::equal(int8_op_fused(q1, in, w1, out, &g1, Int8Output{}), dequantize_tensor(want1, out)))
                << "1-d k " << k << " chunk " << chunk_bytes << ": float output";
            // 2-d: a (k, k - 1 or 1) kernel, (pad, pad / 2) padding, strides (stride, 1), dilation (1, dil),
            // on an int8 input that is a transposed (non-contiguous) view.
            const int64_t kw = std::max<int64_t>(1, k - 1);
            if (5 + 2 * pad < k || len + 2 * (pad / 2) < dil * (kw - 1) + 1) continue;
            const PackedWeight w2 = pack_weight(torch::randn({4, 6 / groups, k, kw}) * 0.2, torch::Tensor(),
                                                QuantSpec::weight_default(), in);
            const torch::Tensor q2 = quantize_tensor(torch::randn({3, 6, len, 5}) * 2, in).transpose(2, 3);
            const Int8Conv g2{{stride, 1}, {pad, pad / 2}, {1, dil}, groups};
            EXPECT_TRUE(torch::equal(int8_op_fused(q2, in, w2, out, &g2, Int8Output{true, nullptr}),
                                     int8_conv2d(q2, in, w2, out, {stride, 1}, {pad, pad / 2}, {1, dil}, groups)))
                << "2-d k " << k << " stride " << stride << " pad " << pad << " dil " << dil << " groups " << groups
                << " chunk " << chunk_bytes << " simd " << simd;
            ++cases;
          }
  }
  set_int8_conv_chunk_bytes(default_chunk);
  set_int8_avx512_kernels(simd_before);
  EXPECT_GT(cases, 300);
  // out_limit (a causal conv's chomp) gives the full output's first positions, dense, on the direct
  // route (k 3, the chomp of a dilated TCN conv) and the ATen one (k 1), float and int8 out.
  for (const auto& [k, pad, dil] : std::vector<std::array<int64_t, 3>>{{3, 4, 2}, {3, 1, 1}, {1, 0, 1}}) {
    const PackedWeight w = pack_weight(torch::randn({4, 3, k}) * 0.2, torch::randn({4}) * 0.1,
                                       QuantSpec::weight_default(), in);
    const torch::Tensor x = torch::randn({4, 6, 20}) * 2;
    const Int8Conv full{{1}, {pad}, {dil}, 2};
    Int8Conv kept = full;
    kept.out_limit = 20;
    for (const bool int8_out : {true, false}) {
      const Int8Output o = int8_out ? Int8Output{true, table.data()} : Int8Output{};
      const torch::Tensor want = int8_op_fused(x, in, w, out, &full, o).narrow(2, 0, 20);
      const torch::Tensor got = int8_op_fused(x, in, w, out, &kept, o);
      EXPECT_TRUE(got.is_contiguous());
      EXPECT_TRUE(torch::equal(got, want)) << "k " << k << " pad " << pad << " int8 out " << int8_out;
    }
  }
  Int8Conv negative{{1}, {1}, {1}, 1};
  negative.out_limit = -1;
  EXPECT_THROW(int8_op_fused(torch::randn({1, 6, 9}), in, pack_weight(torch::randn({4, 6, 3}) * 0.2, torch::Tensor(), QuantSpec::weight_default(), in), out, &negative, Int8Output{}), Error);
  EXPECT_THROW(set_int8_conv_chunk_bytes(0), Error);
  // Bad geometry is a one-line error, never a read outside the input: a kernel longer than the
  // padded input, a zero stride.
  const PackedWeight w4 = pack_weight(torch::randn({4, 6, 4}) * 0.2, torch::Tensor(), QuantSpec::weight_default(), in);
  const Int8Conv short_input{{2}, {0}, {1}, 1}, zero_stride{{0}, {1}, {1}, 1};
  EXPECT_THROW(int8_op_fused(torch::randn({1, 6, 3}), in, w4, out, &short_input, Int8Output{true, nullptr}), Error);
  EXPECT_THROW(int8_op_fused(torch::randn({1, 6, 9}), in, w4, out, &zero_stride, Int8Output{true, nullptr}), Error);
}

// The explicit AVX-512 kernels (quantize, requantize of linear and conv rows, float and int8 out)
// give the reference's bits, as the compiler-vectorized loops do, at every tail length and on the
// rounding ties of both steps: in scale 0.5 makes x = j / 4 land on x / s = j / 2 (a tie for odd
// j), and s_in 0.5 * s_w 0.25 / s_out 0.25 makes the requantize multiplier 0.5, so every odd
// accumulator is a tie too; large inputs clamp at both ends; a NaN or Inf in any lane is refused.
TEST(Int8Chain, Avx512KernelsGiveTheReferenceBits) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  torch::manual_seed(41);
  const QuantParams in = QuantParams::per_tensor(0.5f, 3, -128, 127);
  const QuantParams out = QuantParams::per_tensor(0.25f, -5, -128, 127);
  const QuantParams wqp = QuantParams::per_tensor(0.25f, 0, -127, 127);
  QuantSpec wspec = QuantSpec::weight_default();
  wspec.granularity = Granularity::per_tensor;
  const std::array<int8_t, 256> table = affine_code_table(53, 3);
  const auto mapped = [&](const torch::Tensor& q) { return map_codes(q, table); };
  // Quarter-integer inputs (ties after the 1 / 0.5 multiply), a few beyond the int8 range both ways.
  const auto quarters = [](std::vector<int64_t> shape) {
    torch::Tensor x = torch::randint(-300, 300, shape).to(torch::kFloat) / 4;
    x.view({-1})[0] = 1e30f;
    if (x.numel() > 1) x.view({-1})[x.numel() - 1] = -1e30f;
    return x;
  };
  const bool had_avx512 = int8_avx512_kernels_active();
  int64_t checks = 0;
  for (const bool on : {true, false}) {
    if (on && !had_avx512) continue;  // CPU without AVX-512F: the vectorizer's loops only
    set_int8_avx512_kernels(on);
    ASSERT_EQ(int8_avx512_kernels_active(), on);
    for (const int64_t k : {1, 5, 16, 17, 33})
      for (const int64_t o : {1, 7, 16, 19}) {
        const PackedWeight wl = pack_weight_with(torch::randint(-3, 4, {o, k}).to(torch::kFloat) * 0.25f,
                                                 torch::Tensor(), wspec, wqp, in);
        const torch::Tensor x = quarters({3, k});
        const torch::Tensor want = int8_linear(quantize_tensor(x, in), in, wl, out);
        EXPECT_TRUE(torch::equal(int8_op_fused(x, in, wl, out, nullptr, Int8Output{true, nullptr}), want))
            << "linear k " << k << " o " << o << " avx512 " << on;
        EXPECT_TRUE(torch::equal(int8_op_fused(x, in, wl, out, nullptr, Int8Output{true, table.data()}), mapped(want)))
            << "linear k " << k << " o " << o << " avx512 " << on;
        EXPECT_TRUE(torch::equal(int8_op_fused(x, in, wl, out, nullptr, Int8Output{}), dequantize_tensor(want, out)))
            << "linear k " << k << " o " << o << " avx512 " << on;
        checks += 3;
      }
    for (int64_t len = 1; len <= 35; ++len) {  // conv rows of 1..35 positions: every tail of 16 lanes
      const PackedWeight w1 = pack_weight_with(torch::randint(-3, 4, {5, 2, 1}).to(torch::kFloat) * 0.25f,
                                               torch::Tensor(), wspec, wqp, in);
      const Int8Conv g{{1}, {0}, {1}, 1};
      const torch::Tensor x = quarters({2, 2, len});
      const torch::Tensor want = int8_conv1d(quantize_tensor(x, in), in, w1, out, 1, 0, 1, 1);
      EXPECT_TRUE(torch::equal(int8_op_fused(x, in, w1, out, &g, Int8Output{true, nullptr}), want))
          << "conv len " << len << " avx512 " << on;
      EXPECT_TRUE(torch::equal(int8_op_fused(x, in, w1, out, &g, Int8Output{true, table.data()}), mapped(want)))
          << "conv len " << len << " avx512 " << on;
      EXPECT_TRUE(torch::equal(int8_op_fused(x, in, w1, out, &g, Int8Output{}), dequantize_tensor(want, out)))
          << "conv len " << len << " avx512 " << on;
      // A non-finite value in the last lane of the quantized span is refused.
      torch::Tensor bad = x.clone();
      bad.view({-1})[bad.numel() - 1] = (len % 2 != 0) ? NAN : INFINITY;
      EXPECT_THROW(int8_op_fused(bad, in, w1, out, &g, Int8Output{}), Error) << "conv len " << len;
      checks += 3;
    }
    // quantize_span over 1..150 values: the 64-value unrolled steps and every tail, ties, clamps at
    // both ends; a NaN or Inf anywhere (main steps or tail) is reported.
    for (int64_t len = 1; len <= 150; ++len) {
      const torch::Tensor x = quarters({len});
      std::vector<int8_t> got(static_cast<size_t>(len));
      ASSERT_TRUE(quantize_span(x.data_ptr<float>(), len, got.data(), in)) << "span len " << len;
      const torch::Tensor want = quantize_tensor(x, in);
      EXPECT_TRUE(torch::equal(torch::from_blob(got.data(), {len}, torch::kChar), want)) << "span len " << len << " avx512 " << on;
      for (const int64_t at : {int64_t{0}, len / 2, len - 1}) {
        torch::Tensor bad = x.clone();
        bad[at] = (at % 2 == 0) ? NAN : -INFINITY;
        EXPECT_FALSE(quantize_span(bad.data_ptr<float>(), len, got.data(), in)) << "span len " << len << " at " << at;
      }
    }
  }
  set_int8_avx512_kernels(true);
  EXPECT_EQ(int8_avx512_kernels_active(), had_avx512);
  EXPECT_EQ(checks, (had_avx512 ? 2 : 1) * (20 * 3 + 35 * 3));
}

// Converted models run their conv -> SiLU -> conv and linear -> GELU -> linear sequences as int8
// chains (10 per wiflow_tiny forward: 4 TCN blocks, 5 encoder blocks, the decoder; 7 per pose_nano
// forward: the input tokens quantized as they are made and handed to proj, the in-projection
// taking the codes made in the pass before it and giving q, k and v as the attention products'
// codes, the context product giving out_proj its codes, out_proj, the feed-forward and att taking
// the codes that the LayerNorm before them made in its pass, and the keypoint head; 10 per
// pose_micro forward: also the graph refinement, inp -> ReLU and g1 -> ReLU giving codes to the
// int8 adjacency product and g2 -> ReLU -> out; 22 per pose_flagship forward: four encoder layers,
// the graph refinement with its joint embedding) and give the same outputs, bit for bit, as the
// same model with every op dequantizing and the float functions in between. The attentions also
// hand the softmax probabilities to their context product as int8 codes (2 per wiflow_tiny
// forward, 1 per pose_nano / pose_micro forward, 4 per pose_flagship forward).
TEST(Int8Chain, ModelsGiveTheUnchainedOutputs) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  for (const auto& [preset, chains] : std::vector<std::pair<std::string, int64_t>>{{"wiflow_tiny", 10}, {"pose_nano", 7}, {"pose_micro", 10}, {"pose_flagship", 22}}) {
    const Converted c = convert_preset(preset, 31);
    torch::NoGradGuard g;
    ASSERT_TRUE(int8_chaining());
    const int64_t before = int8_chain_runs(), attention_before = int8_attention_runs();
    const torch::Tensor chained = c.model->forward(c.x);
    EXPECT_EQ(int8_chain_runs() - before, chains) << preset;
    set_int8_chaining(false);
    const torch::Tensor plain = c.model->forward(c.x);
    set_int8_chaining(true);
    EXPECT_EQ(int8_chain_runs() - before, chains) << preset;  // none while off
    EXPECT_TRUE(torch::equal(chained, plain)) << preset << ": max diff " << (chained - plain).abs().max().item<double>();
    // The compiler-vectorized loops and scalar code tables instead of the explicit AVX-512 / VBMI
    // kernels: the same bits.
    const bool kernels = set_int8_avx512_kernels(false);
    const torch::Tensor portable = c.model->forward(c.x);
    set_int8_avx512_kernels(kernels);
    EXPECT_TRUE(torch::equal(chained, portable)) << preset << " without the AVX-512 kernels";
    // The attentions fuse scores -> softmax -> probabilities codes while chains are on (twice:
    // with and without the kernels).
    const int64_t attentions = preset == "wiflow_tiny" ? 2 : preset == "pose_flagship" ? 4 : 1;
    EXPECT_EQ(int8_attention_runs() - attention_before, 2 * attentions) << preset;
    // Training mode and fake-quant models never chain.
    c.model->train();
    c.model->forward(c.x);
    c.model->eval();
    EXPECT_EQ(int8_chain_runs() - before, 2 * chains) << preset;
  }
}

// A policy's fp32 islands anywhere in a converted pose transformer (an encoder layer's op, an
// attention product, att, the graph refinement, a whole layer's attention): the int8 path runs
// where it can and the float ops elsewhere, and the outputs equal the unchained model's bit for
// bit (nothing throws where an island breaks a hand-off).
TEST(Int8Chain, PoseIslandsFallBackToTheFloatOps) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  for (const std::string island : {"tf.layers.1.linear1", "tf.layers.0.self_attn.scores_mm", "att", "gr.g1",
                                   "tf.layers.1.self_attn", "tf.layers.0.self_attn.out_proj"}) {
    QuantPolicy policy;
    QuantRule rule;
    rule.match = island;
    rule.sets_weights = rule.sets_activations = true;  // fp32 weights and activations
    policy.rules = {rule};
    const Converted c = convert_preset("pose_tiny", 57, policy);  // 2 encoder layers, graph refinement
    // The island is really float: prepare gave it no hook (fp32 weights and activations).
    bool found = false;
    for (const auto& m : c.model->named_modules()) {
      if (m.key() != island) continue;
      const auto* q = dynamic_cast<const Quantizable*>(m.value().get());
      ASSERT_TRUE(q != nullptr) << island;
      EXPECT_FALSE(q->hook) << island;
      found = true;
    }
    ASSERT_TRUE(found) << island;
    torch::NoGradGuard g;
    const torch::Tensor chained = c.model->forward(c.x);
    set_int8_chaining(false);
    const torch::Tensor plain = c.model->forward(c.x);
    set_int8_chaining(true);
    EXPECT_TRUE(torch::equal(chained, plain)) << island << ": max diff " << (chained - plain).abs().max().item<double>();
    EXPECT_TRUE(torch::isfinite(chained).all().item<bool>()) << island;
  }
}

// csipose's own parallel loops really use threads (CMake compiles with OpenMP: ATen's parallel_for
// is a `#pragma omp parallel` template) and split work so that no result depends on the split:
// converted models give the same bits on 1 and 2 threads, with one chunk per sample (many tasks)
// and with the default chunks.
TEST(Int8Chain, OutputsDoNotDependOnTheThreadCount) {
  if (!onednn_available()) GTEST_SKIP() << "built without oneDNN";
  BackendScope s(Int8BackendKind::onednn);
  const int threads_before = at::get_num_threads();
  const int64_t default_chunk = int8_conv_chunk_bytes();
  for (const std::string preset : {"wiflow_tiny", "pose_nano", "pose_micro"}) {
    const Converted c = convert_preset(preset, 43);
    torch::NoGradGuard g;
    const torch::Tensor x = torch::cat({c.x, c.x.flip(0), c.x * 0.5}, 0);  // 24 samples
    for (const int64_t chunk : {default_chunk, int64_t{1}}) {
      set_int8_conv_chunk_bytes(chunk);
      at::set_num_threads(1);
      const torch::Tensor one = c.model->forward(x);
      at::set_num_threads(2);
      ASSERT_EQ(at::get_num_threads(), 2);
      const torch::Tensor two = c.model->forward(x);
      EXPECT_TRUE(torch::equal(one, two)) << preset << " chunk " << chunk << ": max diff "
                                          << (one - two).abs().max().item<double>();
    }
  }
  set_int8_conv_chunk_bytes(default_chunk);
  at::set_num_threads(threads_before);
#if defined(_OPENMP)
  // The parallel regions of this translation unit's ATen templates are real ones.
  int seen = 0;
  at::set_num_threads(2);
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
#pragma omp atomic
    ++seen;
  });
  at::set_num_threads(threads_before);
  EXPECT_EQ(seen, 2) << "at::parallel_for over 2 items on 2 threads ran as one task";
#endif
}

// ---- sub-byte weights ------------------------------------------------------------------------------

TEST(BitPack, HandComputedLayouts) {
  auto bytes = [](const torch::Tensor& t) {
    std::vector<int> v;
    for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t[i].item<int>());
    return v;
  };
  // int4: two values per byte, the first in the low nibble (two's complement nibbles).
  EXPECT_EQ(bytes(pack_bits(torch::tensor({1, -1, 7, -8, 3}, torch::kInt8), 4)), (std::vector<int>{0xF1, 0x87, 0x03}));
  // int2: four per byte, LSB first: 01 10 11 00 | 01.
  EXPECT_EQ(bytes(pack_bits(torch::tensor({1, -2, -1, 0, 1}, torch::kInt8), 2)), (std::vector<int>{0x39, 0x01}));
  // int3 crosses byte boundaries: 011 100 11|1 -> 0xE3, 0x01.
  EXPECT_EQ(bytes(pack_bits(torch::tensor({3, -4, -1}, torch::kInt8), 3)), (std::vector<int>{0xE3, 0x01}));
  EXPECT_EQ(packed_bytes(5, 4), 3);
  EXPECT_EQ(packed_bytes(9, 7), 8);
}

TEST(BitPack, RoundTripsEveryWidthAndRefusesBadData) {
  torch::manual_seed(3);
  for (int bits = 2; bits <= 8; ++bits) {
    for (int64_t n : {1, 3, 7, 8, 13, 1001}) {
      const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
      torch::Tensor q = torch::randint(lo, hi + 1, {n}, torch::kInt8);
      q[0] = static_cast<int8_t>(lo);  // both ends of the range
      q[n - 1] = static_cast<int8_t>(hi);
      const torch::Tensor packed = pack_bits(q.view({n, 1}), bits);
      EXPECT_EQ(packed.numel(), (n * bits + 7) / 8);
      EXPECT_TRUE(torch::equal(unpack_bits(packed, bits, {n, 1}), q.view({n, 1}))) << bits << " bits, " << n;
    }
  }
  EXPECT_NE(testing::error_of([] { pack_bits(torch::tensor({8}, torch::kInt8), 4); }).find("outside the 4-bit range"),
            std::string::npos);
  EXPECT_NE(testing::error_of([] { unpack_bits(torch::zeros({2}, torch::kUInt8), 4, {5}); }).find("bytes for 5 values"),
            std::string::npos);
  EXPECT_NE(testing::error_of([] { unpack_bits(torch::tensor({0x10}, torch::kUInt8), 4, {1}); }).find("padding"),
            std::string::npos);
}

TEST(ConvertModel, Int4WeightsArePackedInTheCsqAndRunExactly) {
  QuantPolicy int4;
  int4.defaults.weights->bits = 4;
  const Converted c4 = convert_preset("pose_nano", 23, int4);
  const Converted c8 = convert_preset("pose_nano", 23);
  TempDir tmp;
  save_int8_checkpoint(tmp.file("w4.csq"), c4.config, int4, *c4.model, {{"metric", "m"}});
  save_int8_checkpoint(tmp.file("w8.csq"), c8.config, QuantPolicy{}, *c8.model, {{"metric", "m"}});
  const SafetensorsFile f4 = load_safetensors(tmp.file("w4.csq")), f8 = load_safetensors(tmp.file("w8.csq"));
  EXPECT_EQ(f4.metadata.at("format_version"), "2");
  EXPECT_EQ(f8.metadata.at("format_version"), "1");
  int64_t packed = 0, unpacked = 0, weights4 = 0, weights8 = 0;
  for (const auto& [name, t] : f4.tensors)
    if (name.size() > 14 && name.compare(name.size() - 14, 14, ".weight_packed") == 0) {
      ++packed;
      weights4 += t.numel();
    }
  for (const auto& [name, t] : f8.tensors)
    if (name.size() > 9 && name.compare(name.size() - 9, 9, ".weight_q") == 0) {
      ++unpacked;
      weights8 += t.numel();
    }
  EXPECT_GT(packed, 0);
  EXPECT_EQ(packed, unpacked);                // every int8 op's weight is packed
  EXPECT_LE(weights4, weights8 / 2 + packed);  // two weights per byte (+ one padding byte per odd op)
  EXPECT_GE(weights4, weights8 / 2);
  // The int4 model read back runs exactly as converted, and int4 is really coarser than int8.
  torch::NoGradGuard g;
  const Int8Checkpoint back = load_int8_checkpoint(tmp.file("w4.csq"));
  EXPECT_TRUE(torch::equal(back.model->forward(c4.x), c4.int8));
  EXPECT_FALSE(torch::equal(c4.int8, c8.int8));
  for (const auto& [name, hook] : prepared_hooks(*back.model).hooks) {
    const auto* s = hook->int8_state();
    if (!s || !s->packed) continue;
    EXPECT_LE(s->packed->q.max().item<int>(), 7) << name;
    EXPECT_GE(s->packed->q.min().item<int>(), -8) << name;
  }
  EXPECT_LT(int8_checkpoint_size(tmp.file("w4.csq")).int8_weight_bytes, int8_checkpoint_size(tmp.file("w8.csq")).int8_weight_bytes);
}

TEST(ConvertModel, Int8OpsAreIdenticalOnCpuAndCuda_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::NoGradGuard g;
  // Per op: exact integer accumulation and one correctly rounded float32 step per requantization,
  // so the same int8 input gives the same int8 output bits on both devices.
  for (const std::string kind : {"conv1d", "conv2d", "linear", "matmul"}) {
    torch::manual_seed(31);
    OneOpImpl m(kind);
    randomize_batchnorms(m);
    m.eval();
    PreparedModel p = prepare(m, QuantPolicy{}, m.bn ? std::vector<std::pair<std::string, std::string>>{{"op", "bn"}}
                                                     : std::vector<std::pair<std::string, std::string>>{});
    p.set_mode(QuantMode::observe);
    m.forward(m.input(16));
    p.convert(m);
    const torch::Tensor x = m.input(16);
    const torch::Tensor cpu = m.forward(x);
    m.to(torch::kCUDA);
    const torch::Tensor gpu = m.forward(x.to(torch::kCUDA)).to(torch::kCPU);
    EXPECT_TRUE(torch::equal(cpu, gpu)) << kind << ": max diff " << (cpu - gpu).abs().max().item<double>();
  }
  // Whole models: the float islands between the int8 ops (SiLU, softmax, LayerNorm) may round
  // differently on the GPU, so a requantization can move by a step; the keypoints stay close.
  for (const char* preset : {"wiflow_tiny", "pose_nano"}) {
    const Converted c = convert_preset(preset, 23);
    c.model->to(torch::kCUDA);
    const torch::Tensor gpu = c.model->forward(c.x.to(torch::kCUDA)).to(torch::kCPU);
    EXPECT_LT((gpu - c.int8).abs().max().item<double>(), 0.02) << preset;
  }
}

TEST(ConvertModel, RefusesWhatCannotBeFrozen) {
  torch::manual_seed(3);
  OneOpImpl m("linear");
  PreparedModel p = prepare(m, QuantPolicy{});
  // Nothing observed yet: no activation qparams to freeze.
  EXPECT_NE(testing::error_of([&] { p.convert(m); }).find("observed nothing"), std::string::npos);
  p.set_dynamic(true);
  p.set_mode(QuantMode::fake_quant);
  {
    torch::NoGradGuard g;
    m.forward(m.input(4));
  }
  EXPECT_NE(testing::error_of([&] { p.convert(m); }).find("dynamic"), std::string::npos);
  // A model that was never converted cannot be written as int8.
  torch::manual_seed(4);
  auto model = make_model(model_preset("pose_nano"));
  prepare(*model, QuantPolicy{});
  TempDir tmp;
  const std::string err = testing::error_of(
      [&] { save_int8_checkpoint(tmp.file("x.csq"), model_preset("pose_nano"), QuantPolicy{}, *model, {{"metric", "m"}}); });
  EXPECT_NE(err.find("not converted"), std::string::npos) << err;
}

}  // namespace
}  // namespace csipose
