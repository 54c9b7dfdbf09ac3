// Quantizable modules: without a hook (or with mode off) they are bit-for-bit the LibTorch module
// they derive from, with the same parameter names; with a hook they compute exactly
// fq_out(op(fq_in(x), fq_w(w)) + b) with qparams from the observers and the weight's own range.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "quant/fake_quant.h"
#include "quant/int8_ops.h"
#include "quant/qmodules.h"
#include "quant/row_layer_norm.h"
#include "quant/row_softmax.h"
#include "quant/small_matmul.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

QuantParams range_qparams(const QuantSpec& s, const torch::Tensor& x) {
  return qparams_from_range(s, {x.min().item<float>()}, {x.max().item<float>()});
}

std::shared_ptr<QuantHook> default_hook(const std::string& name, int inputs = 1) {
  return std::make_shared<QuantHook>(name, QuantSpec::activation_default(), QuantSpec::weight_default(),
                                     ObserverConfig{}, inputs);
}

TEST(QModules, WithoutAHookTheyAreTheLibTorchModules) {
  torch::manual_seed(1);
  QConv1d q(torch::nn::Conv1dOptions(20, 8, 3).groups(4).dilation(2).padding(2).bias(false));
  torch::nn::Conv1d ref(torch::nn::Conv1dOptions(20, 8, 3).groups(4).dilation(2).padding(2).bias(false));
  {
    torch::NoGradGuard g;
    ref->weight.copy_(q->weight);
  }
  const auto x = torch::randn({3, 20, 11});
  EXPECT_TRUE(torch::equal(q(x), ref(x)));
  // Same parameter names as the plain module: the checkpoint layout does not change.
  EXPECT_EQ(q->named_parameters().keys(), ref->named_parameters().keys());
  q->hook = default_hook("c");  // mode off: still plain fp32
  EXPECT_TRUE(torch::equal(q(x), ref(x)));
}

TEST(QModules, FakeQuantLinearIsTheComposition) {
  torch::manual_seed(2);
  QLinear q(torch::nn::LinearOptions(7, 5));
  q->hook = default_hook("lin");
  q->hook->set_mode(QuantMode::fake_quant);
  const auto x = torch::randn({4, 7}) * 3;
  const auto y = q(x);
  // By hand: input qparams from x's range (min-max observer, first batch), weight per output
  // channel from w's rows, output qparams from the float result's range.
  const QuantSpec a = QuantSpec::activation_default();
  const auto xq = fake_quantize(x, range_qparams(a, x));
  const auto wq = fake_quantize(q->weight, q->hook->weight_qparams(q->weight));
  const auto pre = torch::linear(xq, wq, q->bias);
  const auto want = fake_quantize(pre.detach(), range_qparams(a, pre.detach()));
  EXPECT_TRUE(torch::equal(y.detach(), want));
  // Per-channel weight qparams: one scale per output row, zero points 0 (symmetric).
  const QuantParams wp = q->hook->weight_qparams(q->weight);
  EXPECT_EQ(wp.size(), 5);
  EXPECT_EQ(wp.axis, 0);
  for (int32_t zp : wp.zero_point) EXPECT_EQ(zp, 0);
  EXPECT_EQ(q->hook->input_qparams(), range_qparams(a, x));
}

TEST(QModules, ObserveModeIsFp32AndFreezingFixesTheQparams) {
  torch::manual_seed(3);
  QConv2d q(torch::nn::Conv2dOptions(2, 4, {1, 3}).stride({1, 2}).padding({0, 1}));
  const auto x = torch::rand({2, 2, 5, 9});
  const auto fp32 = q(x);
  q->hook = default_hook("conv");
  q->hook->set_mode(QuantMode::observe);
  EXPECT_TRUE(torch::equal(q(x), fp32));
  const QuantParams before = q->hook->input_qparams();
  q->hook->freeze_observers(true);
  q(x * 10);  // outside the observed range: ignored while frozen
  EXPECT_EQ(q->hook->input_qparams(), before);
  q->hook->freeze_observers(false);
  q(x * 10);
  EXPECT_NE(q->hook->input_qparams(), before);
}

TEST(QModules, StraightThroughGradientsReachInputAndWeight) {
  torch::manual_seed(4);
  QConv1d q(torch::nn::Conv1dOptions(6, 6, 3).groups(6).padding(1));
  q->hook = default_hook("dw");
  q->hook->set_mode(QuantMode::fake_quant);
  const auto x = torch::randn({2, 6, 10}, torch::requires_grad());
  q(x).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  ASSERT_TRUE(q->weight.grad().defined());
  EXPECT_GT(x.grad().abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(torch::isfinite(q->weight.grad()).all().item<bool>());
}

TEST(QModules, FloatIslandsAndMatmulOperands) {
  torch::manual_seed(5);
  // Activations float, weights int8: the input passes through untouched.
  QLinear q(torch::nn::LinearOptions(3, 2).bias(false));
  q->hook = std::make_shared<QuantHook>("w_only", std::nullopt, QuantSpec::weight_default(), ObserverConfig{});
  q->hook->set_mode(QuantMode::fake_quant);
  const auto x = torch::randn({5, 3});
  EXPECT_TRUE(torch::equal(q(x), torch::linear(x, fake_quantize(q->weight, q->hook->weight_qparams(q->weight)))));
  EXPECT_NE(error_of([&] { q->hook->input_qparams(); }).find("float in the policy"), std::string::npos);

  // A matmul's two operands have their own observers.
  QMatmul mm;
  mm->hook = default_hook("scores", /*inputs=*/2);
  mm->hook->set_mode(QuantMode::fake_quant);
  // a spans [-1, 1], b spans [-10, 10]: affine int8 scales 2/255 and 20/255.
  const auto a = torch::linspace(-1, 1, 24).view({2, 4, 3}), b = torch::linspace(-10, 10, 24).view({2, 3, 4});
  const auto y = mm(a, b);
  EXPECT_NEAR(mm->hook->input_qparams(0).scale[0], 2.0 / 255.0, 1e-7);
  EXPECT_NEAR(mm->hook->input_qparams(1).scale[0], 20.0 / 255.0, 1e-6);
  const QuantSpec act = QuantSpec::activation_default();
  const auto want = torch::matmul(fake_quantize(a, range_qparams(act, a)), fake_quantize(b, range_qparams(act, b)));
  EXPECT_TRUE(torch::equal(y, fake_quantize(want, range_qparams(act, want))));
}

TEST(QModules, ObserverStateRoundTrips) {
  auto h = default_hook("x");
  h->set_mode(QuantMode::observe);
  h->input(torch::linspace(-1, 3, 50));
  h->output(torch::linspace(0, 2, 50));
  auto g = default_hook("x");
  g->load_state(h->state());
  EXPECT_EQ(g->input_qparams(), h->input_qparams());
  EXPECT_EQ(g->output_qparams(), h->output_qparams());
  auto other = default_hook("y");
  EXPECT_NE(error_of([&] { other->load_state(h->state()); }).find("given to y"), std::string::npos);
  EXPECT_NE(error_of([&] { default_hook("z")->output_qparams(); }).find("observed nothing"), std::string::npos);
}

// small_matmul: the products of every layout the models use (broadcast batch dimensions, a 2-D
// adjacency over a batch, transposed attention operands, a b that is not contiguous along n) are
// exact on integer-valued matrices (every partial sum is an integer below 2^24) and within float
// rounding of torch::matmul on random ones; autograd, big matrices and other dtypes go to
// torch::matmul itself.
TEST(SmallMatmul, ExactProductsForEveryLayoutAndTorchMatmulElsewhere) {
  torch::manual_seed(4);
  torch::NoGradGuard no_grad;
  const auto ints = [](std::vector<int64_t> shape) { return torch::randint(-9, 10, shape).to(torch::kFloat); };
  const auto exact = [](const torch::Tensor& a, const torch::Tensor& b) {
    return torch::matmul(a.to(torch::kDouble), b.to(torch::kDouble)).to(torch::kFloat);
  };
  struct Case {
    const char* what;
    torch::Tensor a, b;
  };
  const torch::Tensor qkv = ints({6, 96, 20});
  const torch::Tensor q = qkv.narrow(1, 0, 32).reshape({6, 4, 8, 20}), k = qkv.narrow(1, 32, 32).reshape({6, 4, 8, 20});
  const torch::Tensor heads = ints({3, 2, 10, 32}), keys = ints({3, 2, 10, 32});
  const std::vector<Case> cases = {
      {"adjacency (17, 17) @ (5, 17, 64)", ints({17, 17}), ints({5, 17, 64})},
      {"axial scores q^T k", q.transpose(2, 3), k},
      {"axial context v s^T", k, ints({6, 4, 20, 20}).transpose(2, 3)},
      {"pose scores q k^T (b not contiguous along n)", heads, keys.transpose(-2, -1)},
      {"broadcast (2, 1, 3, 4) @ (5, 4, 2)", ints({2, 1, 3, 4}), ints({5, 4, 2})},
      {"n = 1", ints({4, 7, 3}), ints({4, 3, 1})},
  };
  for (const Case& c : cases) {
    const torch::Tensor y = small_matmul(c.a, c.b);
    EXPECT_TRUE(torch::equal(y, exact(c.a, c.b))) << c.what;
    const torch::Tensor ra = torch::randn(c.a.sizes()), rb = torch::randn(c.b.sizes());
    EXPECT_TRUE(torch::allclose(small_matmul(ra, rb), torch::matmul(ra, rb), 1e-5, 1e-5)) << c.what;
  }
  // Hand-computed: [[1, 2], [3, 4]] @ [[5, 6], [7, 8]] = [[19, 22], [43, 50]], twice in a batch.
  const torch::Tensor a = torch::tensor({1.0f, 2.0f, 3.0f, 4.0f}).reshape({1, 2, 2}).expand({2, 2, 2});
  const torch::Tensor b = torch::tensor({5.0f, 6.0f, 7.0f, 8.0f}).reshape({2, 2});
  EXPECT_TRUE(torch::equal(small_matmul(a, b), torch::tensor({19.0f, 22.0f, 43.0f, 50.0f}).reshape({1, 2, 2}).expand({2, 2, 2})));
  // Empty batches and shape errors behave as torch::matmul.
  EXPECT_EQ(small_matmul(torch::zeros({0, 3, 4}), torch::zeros({4, 5})).sizes(), (std::vector<int64_t>{0, 3, 5}));
  EXPECT_THROW(small_matmul(torch::zeros({2, 3, 4}), torch::zeros({5, 2})), c10::Error);
  // Big matrices and float64 are torch::matmul's own results.
  const torch::Tensor big_a = torch::randn({2, 64, 64}), big_b = torch::randn({64, 64});
  EXPECT_TRUE(torch::equal(small_matmul(big_a, big_b), torch::matmul(big_a, big_b)));
  const torch::Tensor da = torch::randn({3, 4, 5}, torch::kDouble), db = torch::randn({5, 2}, torch::kDouble);
  EXPECT_TRUE(torch::equal(small_matmul(da, db), torch::matmul(da, db)));
}

TEST(SmallMatmul, AutogradGoesThroughTorchMatmul) {
  const torch::Tensor a = torch::randn({4, 3, 5}, torch::requires_grad()), b = torch::randn({4, 5, 2});
  const torch::Tensor y = small_matmul(a, b);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  // d(sum(a @ b)) / da[i, r, k] = sum_j b[i, k, j]
  EXPECT_TRUE(torch::allclose(a.grad(), b.sum(-1).unsqueeze(1).expand({4, 3, 5}), 1e-5, 1e-6));
}

// small_matmul_int8 = quantize(small_matmul(a, dequantize(q))) bit for bit: it skips the zero
// coefficients of a, which must not change a single sum (signed zeros included: codes at the
// zero point dequantize to +0, negative coefficients make -0 products).
TEST(SmallMatmul, Int8CodesGiveTheComposedOpsCodes) {
  torch::manual_seed(12);
  torch::NoGradGuard no_grad;
  const QuantParams from = QuantParams::per_tensor(0.037f, -7, -128, 127);
  const QuantParams to = QuantParams::per_tensor(0.021f, 4, -128, 127);
  // A row-normalized skeleton-like adjacency (the model's), a sparse one with negative and -0
  // entries, and a dense one.
  torch::Tensor adjacency = torch::eye(17);
  for (int64_t i = 0; i + 1 < 17; ++i) adjacency[i][i + 1] = adjacency[i + 1][i] = 1.0f;
  adjacency = adjacency / adjacency.sum(1, true);
  torch::Tensor signed_sparse = torch::randn({17, 17}) * (torch::rand({17, 17}) < 0.3).to(torch::kFloat);
  signed_sparse[3][5] = -0.0f;
  for (const torch::Tensor& a : {adjacency, signed_sparse, torch::randn({6, 17})}) {
    for (const std::vector<int64_t>& shape : std::vector<std::vector<int64_t>>{{5, 17, 64}, {2, 3, 17, 9}, {17, 1}}) {
      const torch::Tensor q = torch::randint(-128, 128, shape).to(torch::kChar);
      const torch::Tensor want =
          quantize_tensor(small_matmul(a, dequantize_tensor(q, from)).contiguous(), to, Rounding::half_even);
      EXPECT_TRUE(torch::equal(small_matmul_int8(a, q, from, to, Rounding::half_even), want)) << c10::IntArrayRef(shape);
      const torch::Tensor want_away =
          quantize_tensor(small_matmul(a, dequantize_tensor(q, from)).contiguous(), to, Rounding::half_away);
      EXPECT_TRUE(torch::equal(small_matmul_int8(a, q, from, to, Rounding::half_away), want_away)) << c10::IntArrayRef(shape);
    }
  }
  // By hand: a = [[0.5, 0.5], [0, 1]], codes [[2], [6]] at scale 1 zero point 0 -> [[4], [6]];
  // at scale 2 zero point 1 -> [[3], [4]] (4 / 2 + 1, 6 / 2 + 1).
  const torch::Tensor a = torch::tensor({0.5f, 0.5f, 0.0f, 1.0f}).reshape({2, 2});
  const torch::Tensor q = torch::tensor({2, 6}, torch::kChar).reshape({1, 2, 1});
  const torch::Tensor y = small_matmul_int8(a, q, QuantParams::per_tensor(1.0f, 0, -128, 127),
                                            QuantParams::per_tensor(2.0f, 1, -128, 127), Rounding::half_even);
  EXPECT_TRUE(torch::equal(y, torch::tensor({3, 4}, torch::kChar).reshape({1, 2, 1})));
  // Bad input: a non-finite matrix, a shape mismatch, float codes, per-channel points.
  const QuantParams unit = QuantParams::per_tensor(1.0f, 0, -128, 127);
  EXPECT_THROW(small_matmul_int8(torch::full({2, 2}, NAN), q, unit, unit, Rounding::half_even), Error);
  EXPECT_THROW(small_matmul_int8(torch::ones({2, 3}), q, unit, unit, Rounding::half_even), Error);
  EXPECT_THROW(small_matmul_int8(a, q.to(torch::kFloat), unit, unit, Rounding::half_even), Error);
  QuantParams channels = unit;
  channels.axis = 0;
  EXPECT_THROW(small_matmul_int8(a, q, channels, unit, Rounding::half_even), Error);
}


TEST(RowSoftmax, HandComputedRowsWithAndWithoutTheAffineMap) {
  torch::NoGradGuard no_grad;
  // softmax(0, ln 2, ln 3) = (1, 2, 3) / 6; with scale 2 and shift 5 on the halved logits, the same.
  const float l2 = std::log(2.0f), l3 = std::log(3.0f);
  const torch::Tensor x = torch::tensor({0.0f, l2, l3}).reshape({1, 1, 3});
  const torch::Tensor want = torch::tensor({1.0f / 6, 2.0f / 6, 3.0f / 6}).reshape({1, 1, 3});
  EXPECT_TRUE(torch::allclose(row_softmax(x), want, 0, 2e-7));
  EXPECT_TRUE(torch::allclose(row_softmax(x / 2, torch::tensor({2.0f}), torch::tensor({5.0f})), want, 0, 2e-7));
  // Per-channel (dim 1) parameters: channel 1 scaled by 0 gives the uniform row.
  const torch::Tensor two = torch::cat({x, x}, 1);  // (1, 2, 3)
  const torch::Tensor y = row_softmax(two, torch::tensor({1.0f, 0.0f}), torch::tensor({0.0f, -3.0f}));
  EXPECT_TRUE(torch::allclose(y[0][0], want[0][0], 0, 2e-7));
  EXPECT_TRUE(torch::allclose(y[0][1], torch::full({3}, 1.0f / 3), 0, 2e-7));
}

TEST(RowSoftmax, MatchesTheFloat64SoftmaxOnEveryRowLengthAndLayout) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(7);
  for (const int64_t n : {1, 3, 10, 16, 20, 33, 100}) {
    for (const std::vector<int64_t>& lead : std::vector<std::vector<int64_t>>{{5, 4, 20}, {3, 2}, {2, 3, 4, 5}}) {
      std::vector<int64_t> shape = lead;
      shape.push_back(n);
      const torch::Tensor x = torch::randn(shape) * 6;
      const torch::Tensor a = torch::rand({shape[1]}) * 2 - 0.5, b = torch::randn({shape[1]});
      std::vector<int64_t> bshape(shape.size(), 1);
      bshape[1] = shape[1];
      const torch::Tensor want =
          torch::softmax(x.to(torch::kDouble) * a.to(torch::kDouble).view(bshape) + b.to(torch::kDouble).view(bshape), -1);
      const torch::Tensor y = row_softmax(x, a, b);
      ASSERT_EQ(y.sizes(), x.sizes());
      // As accurate as ATen's float32 softmax of the same float32 logits: the largest relative
      // error against the float64 softmax is at most twice ATen's (both are dominated by the
      // rounding of the logits and of the row sums), and never above 2e-5.
      const auto rel_err = [](const torch::Tensor& got, const torch::Tensor& ref) {
        return ((got.to(torch::kDouble) - ref).abs() / ref.abs().clamp_min(1e-30)).max().item<double>();
      };
      const torch::Tensor aten = torch::softmax(x * a.view(bshape) + b.view(bshape), -1);
      EXPECT_LE(rel_err(y, want), std::max(2 * rel_err(aten, want), 1e-6)) << "n " << n;
      EXPECT_LE(rel_err(y, want), 2e-5) << "n " << n;
      const torch::Tensor plain = torch::softmax(x.to(torch::kDouble), -1);
      EXPECT_LE(rel_err(row_softmax(x), plain), std::max(2 * rel_err(torch::softmax(x, -1), plain), 1e-6)) << "n " << n;
      EXPECT_TRUE(torch::allclose(row_softmax(x).sum(-1), torch::ones(lead), 0, 1e-5)) << "n " << n;
    }
  }
  // The exponential over its whole clamped range: softmax(0, t) = (1, e^t) / (1 + e^t).
  const torch::Tensor t = torch::linspace(-87.0, 0.0, 4001, torch::kDouble);
  const torch::Tensor pair = torch::stack({torch::zeros_like(t), t}, 1).to(torch::kFloat).unsqueeze(0);  // (1, 4001, 2)
  const torch::Tensor e = t.to(torch::kFloat).to(torch::kDouble).exp();
  const torch::Tensor got = row_softmax(pair).to(torch::kDouble)[0];
  EXPECT_TRUE(torch::allclose(got.select(1, 1), e / (1 + e), 3e-7, 0));
  EXPECT_TRUE(torch::allclose(got.select(1, 0), 1 / (1 + e), 3e-7, 0));
}

TEST(RowSoftmax, NanRowsAndFallbacks) {
  torch::manual_seed(8);
  {
    torch::NoGradGuard no_grad;
    torch::Tensor x = torch::randn({2, 3, 20});
    x[1][2][5] = std::numeric_limits<float>::quiet_NaN();
    const torch::Tensor y = row_softmax(x);
    EXPECT_TRUE(torch::isnan(y[1][2]).all().item<bool>());
    EXPECT_EQ(torch::isnan(y).sum().item<int64_t>(), 20);
    // Strided views and float64 are torch::softmax's own results.
    const torch::Tensor s = torch::randn({4, 20, 6}).transpose(1, 2);
    EXPECT_TRUE(torch::equal(row_softmax(s), torch::softmax(s, -1)));
    const torch::Tensor d = torch::randn({3, 4, 5}, torch::kDouble);
    EXPECT_TRUE(torch::equal(row_softmax(d), torch::softmax(d, -1)));
    EXPECT_THROW(row_softmax(torch::randn({3, 4, 2}), torch::ones({3})), Error);
    EXPECT_THROW(row_softmax(torch::randn({3, 4}), torch::ones({4})), Error);  // 2-D: no channel dimension
    // 2-D: plain rows.
    const torch::Tensor m = torch::randn({7, 20});
    EXPECT_TRUE(torch::allclose(row_softmax(m), torch::softmax(m, -1), 2e-6, 1e-9));
  }
  // Under autograd: torch ops, gradients to the input and the affine parameters.
  const torch::Tensor x = torch::randn({2, 3, 5}, torch::requires_grad());
  const torch::Tensor a = torch::rand({3}, torch::requires_grad());
  const torch::Tensor y = row_softmax(x, a);
  ASSERT_TRUE(y.requires_grad());
  (y * torch::arange(5.0)).sum().backward();
  ASSERT_TRUE(x.grad().defined() && a.grad().defined());
  const torch::Tensor x2 = x.detach().clone().requires_grad_(), a2 = a.detach().clone().requires_grad_();
  (torch::softmax(x2 * a2.view({1, 3, 1}), -1) * torch::arange(5.0)).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x2.grad()));
  EXPECT_TRUE(torch::allclose(a.grad(), a2.grad()));
}

// The attention probabilities' codes: softmax_rows then quantize_span, code for code, for every
// row length through the lane-per-row blocks (n <= 32, one or two 256-byte column tables) and past
// them, row counts with and without a partial block, with and without per-row affine maps, wide
// scores (exponentials clamped at -87), -inf entries, rows of equal scores and both roundings; a
// NaN row is refused (false), wherever it sits.
TEST(RowSoftmax, Int8CodesAreTheQuantizedProbabilities) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(9);
  const QuantParams p = QuantParams::per_tensor(1.0f / 255.0f, -128, -128, 127);
  const QuantParams coarse = QuantParams::per_tensor(0.0625f, -3, -100, 100);
  for (const int64_t n : {1, 2, 7, 10, 15, 16, 17, 20, 24, 31, 32, 33}) {
    for (const int64_t rows : {1, 15, 16, 33, 160}) {
      torch::Tensor x = torch::randn({rows, n}) * 4;
      if (rows > 20) {
        x[3] = torch::randn({n}) * 200;  // far below the row maximum: exponentials clamped
        x[17] = torch::full({n}, 0.5f);  // equal scores
        if (n > 1) x[18][0] = -std::numeric_limits<float>::infinity();  // (a row of -inf alone is NaN)
      }
      x = x.contiguous();
      for (const QuantParams& q : {p, coarse})
        for (const Rounding r : {Rounding::half_even, Rounding::half_away}) {
          std::vector<float> probs(static_cast<size_t>(rows * n));
          softmax_rows(x.data_ptr<float>(), probs.data(), rows, n, 1.0f, 0.0f, false);
          std::vector<int8_t> want(probs.size()), got(probs.size() + 8, 42);
          ASSERT_TRUE(quantize_span(probs.data(), rows * n, want.data(), q, r));
          for (const bool kernels : {true, false}) {
            const bool before = set_int8_avx512_kernels(kernels);
            const bool ok = softmax_rows_int8(x.data_ptr<float>(), rows, n, q, r, got.data());
            set_int8_avx512_kernels(before);
            ASSERT_TRUE(ok);
            for (size_t i = 0; i < want.size(); ++i)
              ASSERT_EQ(got[i], want[i]) << "n " << n << " rows " << rows << " element " << i << " kernels " << kernels;
            for (size_t i = want.size(); i < got.size(); ++i) ASSERT_EQ(got[i], 42) << "wrote past the end";
          }
          // Per-row affine maps (WiFlow's bn_similarity before the softmax): row i is
          // softmax(x * a[i] + b[i]), as softmax_rows' affine form.
          const torch::Tensor a = torch::rand({rows}) * 1.5 + 0.25, b = torch::randn({rows});  // a > 0: -inf stays -inf
          std::vector<float> aff(static_cast<size_t>(rows * n));
          for (int64_t i = 0; i < rows; ++i)
            softmax_rows(x.data_ptr<float>() + i * n, aff.data() + i * n, 1, n, a[i].item<float>(), b[i].item<float>(),
                         true);
          ASSERT_TRUE(quantize_span(aff.data(), rows * n, want.data(), q, r));
          for (const bool kernels : {true, false}) {
            const bool before = set_int8_avx512_kernels(kernels);
            const bool ok = softmax_rows_int8(x.data_ptr<float>(), rows, n, q, r, got.data(), a.data_ptr<float>(),
                                              b.data_ptr<float>());
            set_int8_avx512_kernels(before);
            ASSERT_TRUE(ok);
            for (size_t i = 0; i < want.size(); ++i)
              ASSERT_EQ(got[i], want[i]) << "affine, n " << n << " rows " << rows << " element " << i << " kernels "
                                         << kernels;
          }
        }
      for (const int64_t bad_row : {int64_t{0}, rows - 1}) {
        torch::Tensor y = x.clone();
        y[bad_row][n / 2] = std::numeric_limits<float>::quiet_NaN();
        std::vector<int8_t> codes(static_cast<size_t>(rows * n));
        for (const bool kernels : {true, false}) {
          const bool before = set_int8_avx512_kernels(kernels);
          EXPECT_FALSE(softmax_rows_int8(y.data_ptr<float>(), rows, n, p, Rounding::half_even, codes.data()))
              << "n " << n << " rows " << rows << " NaN row " << bad_row;
          set_int8_avx512_kernels(before);
        }
      }
    }
  }
  // Many rows of a pose head's length (a probability far enough off to change a code somewhere).
  const torch::Tensor big = (torch::randn({20000, 10}) * 3).contiguous();
  std::vector<float> probs(200000);
  softmax_rows(big.data_ptr<float>(), probs.data(), 20000, 10, 1.0f, 0.0f, false);
  std::vector<int8_t> want(probs.size()), got(probs.size());
  ASSERT_TRUE(quantize_span(probs.data(), 200000, want.data(), p, Rounding::half_even));
  ASSERT_TRUE(softmax_rows_int8(big.data_ptr<float>(), 20000, 10, p, Rounding::half_even, got.data()));
  EXPECT_EQ(got, want);
}

// ---- row_layer_norm -------------------------------------------------------------------------------

TEST(RowLayerNorm, HandComputedRow) {
  torch::NoGradGuard no_grad;
  // x + residual = (1, 2, 3, 4): mean 2.5, biased variance 1.25, rstd = 1 / sqrt(1.25 + eps);
  // gamma (1, 2, 1, 1), beta (0, 0, 0, 10).
  const torch::Tensor x = torch::tensor({0.5f, 1.0f, 1.5f, 2.0f}).reshape({1, 4});
  const torch::Tensor res = torch::tensor({0.5f, 1.0f, 1.5f, 2.0f}).reshape({1, 4});
  const torch::Tensor gamma = torch::tensor({1.0f, 2.0f, 1.0f, 1.0f}), beta = torch::tensor({0.0f, 0.0f, 0.0f, 10.0f});
  const double rstd = 1.0 / std::sqrt(1.25 + 1e-5);
  const torch::Tensor want =
      torch::tensor({-1.5 * rstd, -0.5 * rstd * 2, 0.5 * rstd, 1.5 * rstd + 10}, torch::kDouble).reshape({1, 4});
  EXPECT_TRUE(torch::allclose(row_layer_norm(x, res, gamma, beta, 1e-5).to(torch::kDouble), want, 0, 1e-6));
  EXPECT_TRUE(torch::allclose(row_layer_norm(x * 2, {}, gamma, beta, 1e-5).to(torch::kDouble), want, 0, 1e-6));
}

// As accurate as ATen's float32 layer_norm: against the float64 form, the largest error is at most
// twice ATen's (or 1e-6) for row lengths 1..100, rows near a constant and rows with large offsets.
TEST(RowLayerNorm, MatchesTheFloat64LayerNormOnEveryRowLength) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(21);
  for (const int64_t d : {1, 2, 7, 16, 17, 48, 64, 100}) {
    for (const double offset : {0.0, 30.0}) {
      const torch::Tensor x = torch::randn({3, 10, d}) * 3 + offset, res = torch::randn({3, 10, d});
      const torch::Tensor gamma = torch::randn({d}), beta = torch::randn({d});
      // The float64 form of the same float32 sum (ATen adds in float32 first too).
      const torch::Tensor want = torch::layer_norm((x + res).to(torch::kDouble), {d}, gamma.to(torch::kDouble),
                                                   beta.to(torch::kDouble), 1e-5);
      const torch::Tensor aten = torch::layer_norm(x + res, {d}, gamma, beta, 1e-5);
      const torch::Tensor y = row_layer_norm(x, res, gamma, beta, 1e-5);
      ASSERT_EQ(y.sizes(), x.sizes());
      const double err = (y.to(torch::kDouble) - want).abs().max().item<double>();
      const double aten_err = (aten.to(torch::kDouble) - want).abs().max().item<double>();
      EXPECT_LE(err, std::max(2 * aten_err, 1e-6)) << "d " << d << " offset " << offset;
    }
  }
  // The explicit AVX-512 row kernel (where the CPU has it) and the portable loops: the same bits,
  // every row length 1..70, with and without the residual, NaN rows included (7 rows: a block of
  // four interleaved rows, then single rows).
  for (int64_t d = 1; d <= 70; ++d) {
    torch::Tensor x = torch::randn({7, d}) * 4 + 1, res = torch::randn({7, d});
    x[2][d / 2] = NAN;
    x[5][0] = NAN;
    const torch::Tensor gamma = torch::randn({d}), beta = torch::randn({d});
    const torch::Tensor fast = row_layer_norm(x, res, gamma, beta, 1e-5), fast_plain = row_layer_norm(x, {}, gamma, beta, 1e-5);
    const bool kernels = set_int8_avx512_kernels(false);
    const torch::Tensor loops = row_layer_norm(x, res, gamma, beta, 1e-5), loops_plain = row_layer_norm(x, {}, gamma, beta, 1e-5);
    set_int8_avx512_kernels(kernels);
    EXPECT_TRUE(torch::equal(fast.nan_to_num(7.0), loops.nan_to_num(7.0))) << "d " << d;
    EXPECT_TRUE(torch::equal(fast_plain.nan_to_num(7.0), loops_plain.nan_to_num(7.0))) << "d " << d;
    EXPECT_TRUE(torch::isnan(fast[2]).all().item<bool>()) << "d " << d;
    EXPECT_TRUE(torch::isnan(fast[5]).all().item<bool>()) << "d " << d;
    EXPECT_FALSE(torch::isnan(fast[3]).any().item<bool>()) << "d " << d;
  }
  // Constant rows: zero variance, y = beta exactly ((v - mean) = 0).
  const torch::Tensor c = torch::full({2, 5}, 3.25f), beta = torch::randn({5});
  EXPECT_TRUE(torch::equal(row_layer_norm(c, {}, torch::randn({5}), beta, 1e-5), beta.expand({2, 5})));
}

TEST(RowLayerNorm, Int8CodesNanRowsAndFallbacks) {
  torch::manual_seed(22);
  {
    torch::NoGradGuard no_grad;
    const torch::Tensor x = torch::randn({4, 10, 64}), res = torch::randn({4, 10, 64});
    const torch::Tensor gamma = torch::randn({64}), beta = torch::randn({64});
    const QuantParams point = QuantParams::per_tensor(0.031f, -3, -128, 127);
    const torch::Tensor y = row_layer_norm(x, res, gamma, beta, 1e-5);
    for (const Rounding r : {Rounding::half_even, Rounding::half_away}) {
      const auto [yf, q] = row_layer_norm_int8(x, res, gamma, beta, 1e-5, point, r);
      EXPECT_TRUE(torch::equal(yf, y));
      EXPECT_TRUE(torch::equal(q, quantize_tensor(y, point, r)));
    }
    // A NaN makes its row NaN (the float form) and is refused by the int8 form.
    torch::Tensor bad = x.clone();
    bad[1][2][7] = NAN;
    const torch::Tensor yn = row_layer_norm(bad, res, gamma, beta, 1e-5);
    EXPECT_TRUE(torch::isnan(yn[1][2]).all().item<bool>());
    EXPECT_EQ(torch::isnan(yn).sum().item<int64_t>(), 64);
    EXPECT_THROW(row_layer_norm_int8(bad, res, gamma, beta, 1e-5, point, Rounding::half_even), Error);
    EXPECT_THROW(row_layer_norm_int8(x.to(torch::kDouble), {}, gamma, beta, 1e-5, point, Rounding::half_even), Error);
    // Strided inputs are read as they are; float64 goes to torch::layer_norm itself.
    const torch::Tensor t = torch::randn({64, 10}).t();
    EXPECT_TRUE(torch::equal(row_layer_norm(t, {}, gamma, beta, 1e-5), row_layer_norm(t.contiguous(), {}, gamma, beta, 1e-5)));
    const torch::Tensor d = torch::randn({3, 64}, torch::kDouble);
    EXPECT_TRUE(torch::equal(row_layer_norm(d, {}, gamma.to(torch::kDouble), beta.to(torch::kDouble), 1e-5),
                             torch::layer_norm(d, {64}, gamma.to(torch::kDouble), beta.to(torch::kDouble), 1e-5)));
  }
  // Under autograd: torch ops, gradients to the input, the residual and the affine parameters.
  const torch::Tensor x = torch::randn({2, 3, 8}, torch::requires_grad()), res = torch::randn({2, 3, 8}, torch::requires_grad());
  const torch::Tensor gamma = torch::rand({8}, torch::requires_grad()), beta = torch::rand({8}, torch::requires_grad());
  const torch::Tensor y = row_layer_norm(x, res, gamma, beta, 1e-5);
  ASSERT_TRUE(y.requires_grad());
  (y * torch::arange(8.0)).sum().backward();
  ASSERT_TRUE(x.grad().defined() && res.grad().defined() && gamma.grad().defined() && beta.grad().defined());
  const torch::Tensor x2 = x.detach().clone().requires_grad_();
  (torch::layer_norm(x2 + res.detach(), {8}, gamma.detach(), beta.detach(), 1e-5) * torch::arange(8.0)).sum().backward();
  EXPECT_TRUE(torch::allclose(x.grad(), x2.grad()));
}

}  // namespace
}  // namespace csipose
