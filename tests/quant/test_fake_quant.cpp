// fake_quantize (torch ops) against the scalar reference, bit for bit, over bits x granularity x
// symmetric x signed x odd channel counts x rounding; the STE gradient; CUDA against CPU; and
// PyTorch's own torch.fake_quantize_per_{tensor,channel}_affine through Debian's /usr/bin/python3.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/json.h"
#include "common/rng.h"
#include "data/npy_torch.h"
#include "quant/fake_quant.h"
#include "quant/quant_spec.h"
#include "quant/reference.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

constexpr Rounding kEven = Rounding::half_even;
constexpr Rounding kAway = Rounding::half_away;

std::vector<float> values_of(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).to(torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

std::vector<uint8_t> mask_of(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).to(torch::kUInt8).contiguous();
  return std::vector<uint8_t>(c.data_ptr<uint8_t>(), c.data_ptr<uint8_t>() + c.numel());
}

/// Index of the first element whose bit pattern differs, or -1 (so -0.0 != 0.0 and NaNs compare).
int64_t first_bit_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return static_cast<int64_t>(i);
  return -1;
}

torch::Tensor to_tensor(const std::vector<float>& v, const std::vector<int64_t>& shape) {
  return torch::tensor(v, torch::kFloat).reshape(shape);
}

/// One combination of the sweep: a spec, its params from random per-channel ranges, and inputs that
/// overshoot the range (saturation) and sit on or next to rounding ties.
struct Case {
  std::string name;
  std::vector<int64_t> shape;
  QuantParams params;
  Rounding rounding;
  std::vector<float> x;
};

std::vector<Case> sweep_cases() {
  std::vector<Case> cases;
  Rng rng(77);
  int index = 0;
  for (int bits = 2; bits <= 8; ++bits)
    for (const Granularity g : {Granularity::per_tensor, Granularity::per_channel})
      for (const bool symmetric : {true, false})
        for (const bool is_signed : {true, false})
          for (const int64_t channels : {1, 7, 33})
            for (const Rounding r : {kEven, kAway}) {
              const int64_t axis = index++ % 3;
              std::vector<int64_t> shape = {3, 2, 5};
              shape[static_cast<size_t>(axis)] = channels;
              QuantSpec spec;
              spec.bits = bits;
              spec.is_signed = is_signed;
              spec.symmetric = symmetric;
              spec.granularity = g;
              spec.axis = axis;
              spec.rounding = r;
              const size_t nranges = g == Granularity::per_channel ? static_cast<size_t>(channels) : 1;
              std::vector<float> lo(nranges), hi(nranges);
              for (size_t c = 0; c < nranges; ++c) {
                const double a = rng.uniform(-3.0, 3.0), b = rng.uniform(-3.0, 3.0);
                lo[c] = static_cast<float>(std::min(a, b));
                hi[c] = static_cast<float>(std::max(a, b));
              }
              Case k;
              k.name = spec.describe() + ", " + std::to_string(channels) + " channels along axis " +
                       std::to_string(axis);
              k.shape = shape;
              k.params = qparams_from_range(spec, lo, hi);
              k.rounding = r;
              const int64_t n = shape[0] * shape[1] * shape[2];
              for (int64_t i = 0; i < n; ++i) {
                const auto c = static_cast<size_t>(channel_of(i, shape, k.params));
                const float s = k.params.scale[c];
                const int32_t zp = k.params.zero_point[c];
                if (i % 3 == 0) {
                  // On a tie (k + 0.5) * scale, or one float step either side, k spanning past both ends.
                  const auto span = static_cast<uint64_t>(k.params.qmax - k.params.qmin + 4);
                  const auto q = static_cast<double>(k.params.qmin - zp - 2) + static_cast<double>(rng.below(span));
                  float x = static_cast<float>(q + 0.5) * s;
                  const uint64_t nudge = rng.below(3);
                  if (nudge == 1) x = std::nextafter(x, INFINITY);
                  if (nudge == 2) x = std::nextafter(x, -INFINITY);
                  k.x.push_back(x);
                } else {
                  const double l = std::min(lo[c], 0.0f), h = std::max(hi[c], 0.0f);
                  k.x.push_back(static_cast<float>(rng.uniform(1.3 * l - 0.1, 1.3 * h + 0.1)));
                }
              }
              cases.push_back(std::move(k));
            }
  return cases;
}

// ---- CPU against the scalar reference ----------------------------------------------------------

TEST(FakeQuantize, BitIdenticalToReferenceSweep) {
  const std::vector<Case> cases = sweep_cases();
  ASSERT_EQ(cases.size(), 7u * 2 * 2 * 2 * 3 * 2);
  int64_t saturated = 0, in_range = 0;
  for (const Case& k : cases) {
    const torch::Tensor x = to_tensor(k.x, k.shape);
    const std::vector<float> got = values_of(fake_quantize(x, k.params, k.rounding));
    const std::vector<float> want = fake_quantize_values(k.x, k.shape, k.params, k.rounding);
    const int64_t bad = first_bit_difference(got, want);
    ASSERT_EQ(bad, -1) << k.name << ": x = " << k.x[static_cast<size_t>(std::max<int64_t>(bad, 0))] << " gives "
                       << got[static_cast<size_t>(std::max<int64_t>(bad, 0))] << ", reference "
                       << want[static_cast<size_t>(std::max<int64_t>(bad, 0))];
    const std::vector<uint8_t> mask = mask_of(fake_quantize_mask(x, k.params, k.rounding));
    ASSERT_EQ(mask, ste_mask_values(k.x, k.shape, k.params, k.rounding)) << k.name;
    for (uint8_t m : mask) (m ? in_range : saturated) += 1;
  }
  // The inputs exercise both sides of the clamp.
  EXPECT_GT(saturated, 500);
  EXPECT_GT(in_range, 5000);
}

TEST(FakeQuantize, HalfAwayRoundingMatchesStdRound) {
  const std::vector<float> y = {0.5f,        1.5f,  2.5f,        -0.5f,      -1.5f,       -2.5f,      0.49999997f,
                                -0.49999997f, 0.0f,  -0.0f,       8388609.0f, -8388609.0f, 2.4999998f, 1e30f,
                                -7.5f,       6.75f, 0.50000006f, 4194304.5f};
  const std::vector<float> away = values_of(round_tensor(torch::tensor(y, torch::kFloat), kAway));
  const std::vector<float> even = values_of(round_tensor(torch::tensor(y, torch::kFloat), kEven));
  for (size_t i = 0; i < y.size(); ++i) {
    EXPECT_EQ(away[i], std::round(y[i])) << y[i];
    EXPECT_EQ(even[i], std::nearbyint(y[i])) << y[i];
  }
  // floor(|y| + 0.5) would get these wrong: 0.49999997 + 0.5 rounds up to 1.0 in float.
  EXPECT_EQ(away[6], 0.0f);
  EXPECT_EQ(away[10], 8388609.0f);
}

TEST(FakeQuantize, RejectsWrongDtypeAndShape) {
  const QuantParams p = QuantParams::per_tensor(0.1f, 0, -128, 127);
  EXPECT_EQ(error_of([&] { fake_quantize(torch::zeros({3}, torch::kDouble), p); }),
            "fake_quantize: tensor of dtype Double; expected float32 (the contract is float32 arithmetic)");
  QuantParams pc;
  pc.scale = {0.1f, 0.2f};
  pc.zero_point = {0, 0};
  pc.axis = 1;
  EXPECT_EQ(error_of([&] { fake_quantize(torch::zeros({2, 3}), pc); }),
            "fake_quantize: tensor of shape [2, 3] has 3 channels along axis 1 but the params hold 2");
  EXPECT_EQ(error_of([&] { fake_quantize(torch::zeros({2}), pc); }),
            "fake_quantize: per-channel axis 1 is out of range for a tensor of shape [2]");
}

// ---- STE gradient --------------------------------------------------------------------------------

TEST(FakeQuantize, SteGradientIsExactlyTheMask) {
  // int8, scale 0.1, zp 0: x * 10 rounds to -128..127 inside. Values on both sides of each end:
  //   12.74 -> 127.4 -> 127 in (grad 1)    12.76 -> 127.6 -> 128 out (grad 0)
  //  -12.84 -> -128.4 -> -128 in           -12.86 -> -128.6 -> -129 out
  const std::vector<float> xs = {12.74f, 12.76f, -12.84f, -12.86f, 0.0f, 3.3f, 100.0f, -100.0f, 12.7f, -12.8f};
  const std::vector<float> expect = {1, 0, 1, 0, 1, 1, 0, 0, 1, 1};
  const QuantParams p = QuantParams::per_tensor(0.1f, 0, -128, 127);
  torch::Tensor x = torch::tensor(xs, torch::kFloat).requires_grad_(true);
  const torch::Tensor y = fake_quantize(x, p);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_EQ(values_of(x.grad()), expect);
  // Forward value is unchanged by the autograd path.
  EXPECT_EQ(first_bit_difference(values_of(y), fake_quantize_values(xs, {10}, p, kEven)), -1);

  // An upstream gradient w passes as w * mask; per-channel with a zero point shift.
  QuantParams pc;
  pc.scale = {1.0f, 0.5f};
  pc.zero_point = {-43, 10};
  pc.axis = 0;
  // channel 0: q = x - 43 in [-128, 127] <=> x in [-85, 170];  channel 1: q = 2x + 10 <=> x in [-69, 58.5]
  const std::vector<float> xc = {170.0f, 171.0f, -85.0f, -86.0f, 58.5f, 58.75f, -69.0f, -69.5f};
  // 58.5 -> 117 + 10 = 127 in; 58.75 -> 117.5 -> 118 (even) + 10 = 128 out; -69.5 -> -139 + 10 = -129 out.
  torch::Tensor x2 = torch::tensor(xc, torch::kFloat).reshape({2, 4}).requires_grad_(true);
  const torch::Tensor w = torch::arange(1, 9, torch::kFloat).reshape({2, 4});
  (fake_quantize(x2, pc) * w).sum().backward();
  EXPECT_EQ(values_of(x2.grad()), (std::vector<float>{1, 0, 3, 0, 5, 0, 7, 0}));
  EXPECT_EQ(mask_of(fake_quantize_mask(x2, pc)), ste_mask_values(xc, {2, 4}, pc, kEven));
}

TEST(FakeQuantize, NoGradModeAndDetachedInputs) {
  const QuantParams p = QuantParams::per_tensor(0.25f, 3, -128, 127);
  torch::Tensor x = torch::randn({17});
  EXPECT_FALSE(fake_quantize(x, p).requires_grad());
  torch::Tensor xg = x.clone().requires_grad_(true);
  {
    torch::NoGradGuard no_grad;
    EXPECT_FALSE(fake_quantize(xg, p).requires_grad());
  }
  EXPECT_EQ(first_bit_difference(values_of(fake_quantize(xg, p)), values_of(fake_quantize(x, p))), -1);
}

// ---- CUDA against CPU ----------------------------------------------------------------------------

TEST(FakeQuantize, CudaMatchesCpuBitExactly_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  for (const Case& k : sweep_cases()) {
    const torch::Tensor x = to_tensor(k.x, k.shape);
    torch::Tensor xc = x.to(cuda).requires_grad_(true);
    const torch::Tensor yc = fake_quantize(xc, k.params, k.rounding);
    ASSERT_TRUE(yc.is_cuda());
    yc.sum().backward();
    const std::vector<float> cpu = values_of(fake_quantize(x, k.params, k.rounding));
    ASSERT_EQ(first_bit_difference(values_of(yc), cpu), -1) << k.name;
    const std::vector<uint8_t> mask = ste_mask_values(k.x, k.shape, k.params, k.rounding);
    ASSERT_EQ(mask_of(fake_quantize_mask(xc.detach(), k.params, k.rounding)), mask) << k.name;
    ASSERT_EQ(mask_of(xc.grad()), mask) << k.name;
  }
}

// ---- PyTorch's own fake_quantize ---------------------------------------------------------------

using testing::kSystemPython;

/// Inputs near every tie (k + 0.5) * scale of channel c, exact and one or two float steps away, and
/// values past both ends: where x * (1.0f / scale) and x / scale disagree.
std::vector<float> tie_heavy_inputs(const std::vector<int64_t>& shape, const QuantParams& p, uint64_t seed) {
  Rng rng(seed);
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  std::vector<float> x(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const auto c = static_cast<size_t>(channel_of(i, shape, p));
    const auto q = static_cast<double>(p.qmin - p.zero_point[c] - 3) +
                   static_cast<double>(rng.below(static_cast<uint64_t>(p.qmax - p.qmin + 6)));
    float v = static_cast<float>(q + 0.5) * p.scale[c];
    for (uint64_t step = rng.below(5); step > 0; --step) v = std::nextafter(v, step % 2 ? INFINITY : -INFINITY);
    x[static_cast<size_t>(i)] = i % 5 == 4 ? static_cast<float>(rng.normal(0.0, 40.0 * p.scale[c])) : v;
  }
  return x;
}

TEST(FakeQuantize, MatchesPyTorchFakeQuantizeBitExactly) {
  if (!testing::system_python_has_torch()) GTEST_SKIP() << kSystemPython << " cannot import torch; PyTorch cross-check skipped";
  struct PyCase {
    std::string name;
    std::vector<int64_t> shape;
    QuantParams params;
  };
  QuantParams pc_sym;
  pc_sym.axis = 0;
  QuantParams pc_u8;
  pc_u8.axis = 1;
  pc_u8.qmin = 0;
  pc_u8.qmax = 255;
  {
    Rng rng(5);
    for (int c = 0; c < 7; ++c) {
      pc_sym.scale.push_back(static_cast<float>(rng.uniform(0.001, 0.2)));
      pc_sym.zero_point.push_back(0);
    }
    for (int c = 0; c < 7; ++c) {
      pc_u8.scale.push_back(static_cast<float>(rng.uniform(0.001, 0.2)));
      pc_u8.zero_point.push_back(static_cast<int32_t>(rng.below(256)));
    }
  }
  const std::vector<PyCase> cases = {
      {"int8 per-tensor symmetric, scale 0.1", {40, 33}, QuantParams::per_tensor(0.1f, 0, -128, 127)},
      {"int8 per-tensor affine", {7, 33}, qparams_from_range(QuantSpec::activation_default(), {-1.0f}, {2.0f})},
      {"uint8 per-tensor affine", {33, 5}, QuantParams::per_tensor(0.0173f, 77, 0, 255)},
      {"int8 per-channel symmetric axis 0", {7, 33}, pc_sym},
      {"uint8 per-channel affine axis 1", {5, 7, 3}, pc_u8},
  };
  testing::TempDir dir;
  std::string command = kSystemPython + std::string(" ") + testing::source_path("tests/quant/python/fake_quant_ref.py");
  std::vector<std::vector<float>> inputs;
  for (size_t i = 0; i < cases.size(); ++i) {
    const PyCase& k = cases[i];
    inputs.push_back(tie_heavy_inputs(k.shape, k.params, 100 + i));
    const std::string stem = dir.file("case" + std::to_string(i));
    save_npy(stem + "_x.npy", to_tensor(inputs.back(), k.shape));
    Json j = k.params.to_json();
    j.set("input", stem + "_x.npy").set("output", stem + "_y.npy").set("grad", stem + "_g.npy");
    testing::write_file(stem + ".json", j.dump());
    command += " " + stem + ".json";
  }
  const testing::RunResult run = testing::run_command(command);
  ASSERT_EQ(run.exit_code, 0) << run.output;

  int64_t division_would_differ = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const PyCase& k = cases[i];
    const std::string stem = dir.file("case" + std::to_string(i));
    const std::vector<float>& x = inputs[i];
    const std::vector<float> torch_y = values_of(load_npy(stem + "_y.npy"));
    const std::vector<float> torch_g = values_of(load_npy(stem + "_g.npy"));
    const std::vector<float> ours = values_of(fake_quantize(to_tensor(x, k.shape), k.params));
    const std::vector<float> reference = fake_quantize_values(x, k.shape, k.params, kEven);
    const int64_t bad = first_bit_difference(ours, torch_y);
    EXPECT_EQ(bad, -1) << k.name << ": x = " << x[static_cast<size_t>(std::max<int64_t>(bad, 0))];
    EXPECT_EQ(first_bit_difference(reference, torch_y), -1) << k.name;
    // PyTorch's gradient of sum(y) is its STE mask.
    const std::vector<uint8_t> mask = ste_mask_values(x, k.shape, k.params, kEven);
    ASSERT_EQ(torch_g.size(), mask.size());
    for (size_t e = 0; e < mask.size(); ++e)
      ASSERT_EQ(torch_g[e], static_cast<float>(mask[e])) << k.name << " x " << x[e];
    // The inputs do discriminate "x * (1 / scale)" from "x / scale".
    for (size_t e = 0; e < x.size(); ++e) {
      const auto c = static_cast<size_t>(channel_of(static_cast<int64_t>(e), k.shape, k.params));
      if (std::nearbyint(x[e] / k.params.scale[c]) != std::nearbyint(x[e] * (1.0f / k.params.scale[c])))
        ++division_would_differ;
    }
  }
  EXPECT_GT(division_would_differ, 0);
}

}  // namespace
}  // namespace csipose
