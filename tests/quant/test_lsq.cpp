// Learned step sizes (LSQ / LSQ+): the forward is the fake-quant contract bit for bit, the
// gradients are LSQ's (hand-computed case) and PyTorch's learnable fake-quant ops'
// (torch._fake_quantize_learnable_per_{tensor,channel}_affine, cross-checked in-process), the MSE
// init beats min / max, and a learned op trains its scales and converts exactly.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <vector>

#include "common/check.h"
#include "quant/fake_quant.h"
#include "quant/lsq.h"
#include "quant/prepare.h"

namespace csipose {
namespace {

TEST(Lsq, ForwardIsTheFakeQuantContractBitForBit) {
  torch::manual_seed(1);
  const torch::Tensor x = torch::randn({4, 6, 9}) * 3;
  for (const Rounding r : {Rounding::half_even, Rounding::half_away}) {
    // Per-tensor affine, with a non-integer learned zero point (rounded half-even to 3).
    const torch::Tensor s = torch::tensor({0.037f}), z = torch::tensor({2.6f});
    const torch::Tensor out = lsq_fake_quantize(x, s, z, -128, 127, -1, 1.0, r);
    const QuantParams p = learned_qparams(s, z, -128, 127, -1);
    EXPECT_EQ(p.zero_point[0], 3);
    EXPECT_EQ(p.scale[0], 0.037f);
    EXPECT_TRUE(torch::equal(out, fake_quantize(x, p, r)));
    // Per-channel along axis 1, zero points 0 (int4 weights), with clipping on some channels.
    const torch::Tensor sc = torch::rand({6}) * 0.5 + 0.05;
    const torch::Tensor outc = lsq_fake_quantize(x, sc, torch::Tensor(), -8, 7, 1, 1.0, r);
    const QuantParams pc = learned_qparams(sc, torch::Tensor(), -8, 7, 1);
    EXPECT_TRUE(torch::equal(outc, fake_quantize(x, pc, r)));
    EXPECT_GT(fake_quantize_mask(x, pc, r).logical_not().sum().item<int64_t>(), 0);  // some values clip
  }
  // Ties: 0.5 * s rounds to 0 (half-even) and to 1 (half-away).
  const torch::Tensor tie = torch::tensor({0.25f, -0.25f, 0.75f});
  const torch::Tensor s = torch::tensor({0.5f});
  EXPECT_TRUE(torch::equal(lsq_fake_quantize(tie, s, torch::Tensor(), -8, 7, -1, 1.0, Rounding::half_even),
                           torch::tensor({0.0f, 0.0f, 1.0f})));
  EXPECT_TRUE(torch::equal(lsq_fake_quantize(tie, s, torch::Tensor(), -8, 7, -1, 1.0, Rounding::half_away),
                           torch::tensor({0.5f, -0.5f, 1.0f})));
}

TEST(Lsq, GradientsMatchTheHandComputedEstimator) {
  // 3-bit signed [-4, 3], s = 0.5, z = 0 learned, g = 1, dout = 1:
  //   x     x/s   u    region  out    dx  ds                       dz
  //   0.2   0.4   0    in      0.0    1   (0.0 - 0.2) / 0.5 = -0.4 0
  //  -0.6  -1.2  -1    in     -0.5    1   (-0.5 + 0.6) / 0.5 = 0.2 0
  //   1.3   2.6   3    in      1.5    1   (1.5 - 1.3) / 0.5 = 0.4  0
  //   2.0   4.0   4    above   1.5    0   qmax - z = 3             -s = -0.5
  //  -2.5  -5.0  -5    below  -2.0    0   qmin - z = -4            -s = -0.5
  const torch::Tensor x = torch::tensor({0.2f, -0.6f, 1.3f, 2.0f, -2.5f}).set_requires_grad(true);
  const torch::Tensor s = torch::tensor({0.5f}).set_requires_grad(true);
  const torch::Tensor z = torch::tensor({0.0f}).set_requires_grad(true);
  const torch::Tensor out = lsq_fake_quantize(x, s, z, -4, 3, -1, 1.0);
  EXPECT_TRUE(torch::equal(out.detach(), torch::tensor({0.0f, -0.5f, 1.5f, 1.5f, -2.0f})));
  out.sum().backward();
  EXPECT_TRUE(torch::equal(x.grad(), torch::tensor({1.0f, 1.0f, 1.0f, 0.0f, 0.0f})));
  EXPECT_NEAR(s.grad().item<double>(), -0.4 + 0.2 + 0.4 + 3.0 - 4.0, 1e-6);
  EXPECT_NEAR(z.grad().item<double>(), -1.0, 1e-7);

  // The gradient scale multiplies ds and dz (not dx); z = 1 shifts the clipping bounds.
  const torch::Tensor s2 = torch::tensor({0.5f}).set_requires_grad(true);
  const torch::Tensor z2 = torch::tensor({1.0f}).set_requires_grad(true);
  const torch::Tensor x2 = torch::tensor({1.2f, -3.0f}).set_requires_grad(true);  // u = 2 + 1 = 3 (in); -6 + 1 = -5 (below)
  const double g = lsq_grad_factor(2, -4, 3);
  EXPECT_DOUBLE_EQ(g, 1.0 / std::sqrt(2.0 * 4.0));
  lsq_fake_quantize(x2, s2, z2, -4, 3, -1, g).sum().backward();
  EXPECT_TRUE(torch::equal(x2.grad(), torch::tensor({1.0f, 0.0f})));
  // in: (out - x) / s = (2 * 0.5 - 1.2) / 0.5 = -0.4; below: qmin - z = -5.
  EXPECT_NEAR(s2.grad().item<double>(), (-0.4 - 5.0) * g, 1e-6);
  EXPECT_NEAR(z2.grad().item<double>(), -0.5 * g, 1e-7);
}

TEST(Lsq, GradientsMatchPyTorchsLearnableFakeQuantize) {
  torch::manual_seed(7);
  const torch::Tensor x0 = torch::randn({8, 5, 12}) * 2;
  const torch::Tensor dout = torch::randn({8, 5, 12});
  // Per-tensor affine int8 with an integer-valued POSITIVE zero point. (PyTorch's backward takes
  // the zero point as int(z + 0.5), which is z + 1 for a negative integer z, so its gradients then
  // belong to another zero point than its forward; ours use the forward's zero point.)
  {
    const double g = lsq_grad_factor(x0.numel() / 8, -128, 127);
    auto x = x0.clone().set_requires_grad(true);
    auto s = torch::tensor({0.011f}).set_requires_grad(true);
    auto z = torch::tensor({7.0f}).set_requires_grad(true);
    const auto out = lsq_fake_quantize(x, s, z, -128, 127, -1, g);
    (out * dout).sum().backward();
    auto xr = x0.clone().set_requires_grad(true);
    auto sr = torch::tensor({0.011f}).set_requires_grad(true);
    auto zr = torch::tensor({7.0f}).set_requires_grad(true);
    const auto ref = at::_fake_quantize_learnable_per_tensor_affine(xr, sr, zr, -128, 127, g);
    (ref * dout).sum().backward();
    EXPECT_TRUE(torch::equal(out.detach(), ref.detach()));
    EXPECT_TRUE(torch::equal(x.grad(), xr.grad()));
    EXPECT_TRUE(torch::allclose(s.grad(), sr.grad(), 1e-4, 1e-6)) << s.grad() << sr.grad();
    EXPECT_TRUE(torch::allclose(z.grad(), zr.grad(), 1e-4, 1e-6)) << z.grad() << zr.grad();
    EXPECT_GT(x.grad().eq(0).sum().item<int64_t>(), 0);  // the range clips some values
  }
  // Per-channel symmetric int4 along axis 1 (weights), zero points 0.
  {
    const double g = lsq_grad_factor(x0.numel() / 5, -8, 7);
    auto x = x0.clone().set_requires_grad(true);
    const auto s0 = torch::tensor({0.1f, 0.2f, 0.3f, 0.05f, 0.4f});
    auto s = s0.clone().set_requires_grad(true);
    const auto out = lsq_fake_quantize(x, s, torch::Tensor(), -8, 7, 1, g);
    (out * dout).sum().backward();
    auto xr = x0.clone().set_requires_grad(true);
    auto sr = s0.clone().set_requires_grad(true);
    const auto ref = at::_fake_quantize_learnable_per_channel_affine(xr, sr, torch::zeros({5}), 1, -8, 7, g);
    (ref * dout).sum().backward();
    EXPECT_TRUE(torch::equal(out.detach(), ref.detach()));
    EXPECT_TRUE(torch::equal(x.grad(), xr.grad()));
    EXPECT_TRUE(torch::allclose(s.grad(), sr.grad(), 1e-4, 1e-6)) << s.grad() << sr.grad();
  }
}

TEST(Lsq, GradientOfTheScaleIsTheLossSlope) {
  // LSQ's ds is a straight-through estimate, but on average over many values it follows the true
  // slope of the quantization error E(s) = sum (fq(x; s) - x)^2 through a minimum: negative below
  // the MSE-optimal scale and positive above it.
  torch::manual_seed(3);
  const torch::Tensor x = torch::randn({20000});
  const QuantSpec spec = QuantSpec::weight_default();  // int8 symmetric, per-channel along axis 0
  QuantSpec pt = spec;
  pt.granularity = Granularity::per_tensor;
  const double s_opt = init_weight_scales(x.reshape({1, -1}), pt, LsqInit::mse).item<double>();
  for (const double f : {0.5, 2.0}) {
    auto s = torch::tensor({static_cast<float>(s_opt * f)}).set_requires_grad(true);
    const auto out = lsq_fake_quantize(x, s, torch::Tensor(), -127, 127, -1, 1.0);
    (out - x).pow(2).sum().backward();
    if (f < 1) EXPECT_LT(s.grad().item<double>(), 0.0) << f;
    else EXPECT_GT(s.grad().item<double>(), 0.0) << f;
  }
}

TEST(Lsq, MseInitBeatsMinMaxAndMinMaxIsTheObserverRange) {
  torch::manual_seed(5);
  // Two weight channels: Gaussian with one large outlier (MSE clips it), and uniform (MSE ~ min/max).
  torch::Tensor w = torch::randn({2, 400}) * 0.05;
  w[0][17] = 1.0;
  w[1] = torch::linspace(-0.3, 0.3, 400);
  QuantSpec spec = QuantSpec::weight_default();
  spec.bits = 4;
  const torch::Tensor mm = init_weight_scales(w, spec, LsqInit::minmax);
  const torch::Tensor mse = init_weight_scales(w, spec, LsqInit::mse);
  EXPECT_FLOAT_EQ(mm[0].item<float>(), 1.0f / 7);
  EXPECT_FLOAT_EQ(mm[1].item<float>(), 0.3f / 7);
  EXPECT_LT(mse[0].item<float>(), 0.75f * mm[0].item<float>());
  const auto err = [&](const torch::Tensor& s) {
    return (lsq_fake_quantize(w, s, torch::Tensor(), -8, 7, 0, 1.0) - w).pow(2).sum(1);
  };
  EXPECT_TRUE(err(mse).le(err(mm)).all().item<bool>());
  // Activations: min / max init is exactly qparams_from_range of the batch; MSE is no worse.
  const torch::Tensor a = torch::relu(torch::randn({16, 64})) + 0.01;
  const QuantSpec as = QuantSpec::activation_default();
  const float hi = a.max().item<float>();
  EXPECT_EQ(init_activation_qparams(a, as, LsqInit::minmax), qparams_from_range(as, {0.0f}, {hi}));
  const QuantParams pm = init_activation_qparams(a, as, LsqInit::mse);
  const double e_mse = (fake_quantize(a, pm) - a).pow(2).sum().item<double>();
  const double e_mm = (fake_quantize(a, qparams_from_range(as, {0.0f}, {hi})) - a).pow(2).sum().item<double>();
  EXPECT_LE(e_mse, e_mm);
}

/// One QLinear under the name "op" (prepare names the children of the module it is given).
struct OneLinearImpl : torch::nn::Module {
  OneLinearImpl() { op = register_module("op", QLinear(16, 8)); }
  torch::Tensor forward(const torch::Tensor& x) { return op(x); }
  QLinear op{nullptr};
};
TORCH_MODULE(OneLinear);

TEST(Lsq, LearnedOpTrainsItsScalesAndConvertsExactly) {
  torch::manual_seed(11);
  OneLinear lin;
  PreparedModel p = prepare(*lin.ptr(), QuantPolicy{});
  ASSERT_EQ(p.hooks.size(), 1u);
  LearnedScalesConfig c;
  c.weights = true;
  c.activations = LearnedActivations::lsq_plus;
  p.enable_learned(*lin.ptr(), c);
  p.set_mode(QuantMode::fake_quant);
  const auto params = p.learned_parameters();
  std::vector<std::string> names;
  for (const auto& kv : params) names.push_back(kv.first);
  EXPECT_EQ(names, (std::vector<std::string>{"op.weight.scale", "op.input0.scale", "op.input0.zero_point",
                                             "op.output.scale", "op.output.zero_point"}));
  EXPECT_EQ(params[0].second.numel(), 8);
  const torch::Tensor init_ws = params[0].second.detach().clone();
  // A learned point has no qparams until it has seen a batch.
  EXPECT_THROW(p.hooks[0].second->output_qparams(), Error);

  // Regress the op onto a fixed target: the loss gradient reaches every learned tensor.
  const torch::Tensor x = torch::randn({64, 16});
  const torch::Tensor target = torch::randn({64, 8});
  std::vector<torch::Tensor> all = lin->parameters();
  for (const auto& kv : params) all.push_back(kv.second);
  torch::optim::SGD opt(all, torch::optim::SGDOptions(1e-3));
  for (int step = 0; step < 5; ++step) {
    opt.zero_grad();
    const torch::Tensor loss = (lin(x) - target).pow(2).mean();
    loss.backward();
    for (const auto& kv : params) {
      ASSERT_TRUE(kv.second.grad().defined()) << kv.first;
      // A zero point only gets gradient from clipped values; every scale gets some.
      if (kv.first.find("scale") != std::string::npos) {
        EXPECT_GT(kv.second.grad().abs().sum().item<double>(), 0.0) << kv.first;
      }
    }
    opt.step();
  }
  EXPECT_FALSE(torch::equal(params[0].second.detach(), init_ws));

  // The state round-trips the learned values exactly, into a fresh prepared op.
  OneLinear lin2;
  PreparedModel p2 = prepare(*lin2.ptr(), QuantPolicy{});
  p2.enable_learned(*lin2.ptr(), c);
  p2.load_state(p.state());
  for (size_t i = 0; i < params.size(); ++i)
    EXPECT_TRUE(torch::equal(p2.learned_parameters()[i].second, params[i].second)) << params[i].first;
  // ... and a state without learned values is refused by a learned op (and vice versa).
  OneLinear lin3;
  PreparedModel p3 = prepare(*lin3.ptr(), QuantPolicy{});
  EXPECT_THROW(p3.load_state(p.state()), Error);

  // Convert: the int8 op computes the learned fake-quant op (same qparams, to one output step).
  torch::NoGradGuard g;
  const torch::Tensor fq = lin(x);
  const QuantParams out_qp = p.hooks[0].second->output_qparams();
  const QuantParams w_qp = p.hooks[0].second->weight_qparams(lin->op->weight);
  p.convert(*lin.ptr());
  const auto* s = p.hooks[0].second->int8_state();
  ASSERT_TRUE(s && s->packed);
  EXPECT_EQ(s->packed->params, w_qp);
  EXPECT_EQ(*s->output, out_qp);
  const torch::Tensor i8 = lin(x);
  const double step = out_qp.scale[0];
  EXPECT_LE((i8 - fq).abs().max().item<double>(), step * 1.0001);
  EXPECT_LT((i8 - fq).abs().gt(0).to(torch::kFloat).mean().item<double>(), 0.02);
}

}  // namespace
}  // namespace csipose
