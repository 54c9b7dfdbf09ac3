// Int8 ops (src/quant/int8_ops.h): every op bit for bit against a slow nested-loop reference built
// on the scalar `requantize`, and within one output step of the fake-quant float path (exactly equal
// where the float arithmetic is exact); quantize / dequantize against the reference; saturation,
// zero-point padding, the overflow checks; CUDA against CPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/rng.h"
#include "quant/fake_quant.h"
#include "quant/int8_ops.h"
#include "quant/quant_spec.h"
#include "quant/reference.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

constexpr Rounding kEven = Rounding::half_even;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

torch::Tensor uniform_tensor(const std::vector<int64_t>& shape, uint64_t seed, double lo, double hi) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(numel_of(shape)));
  for (float& x : v) x = static_cast<float>(rng.uniform(lo, hi));
  return torch::tensor(v, torch::kFloat).reshape(shape);
}

/// Normal weights whose magnitude differs by output channel, so per-channel scales differ.
torch::Tensor weight_tensor(const std::vector<int64_t>& shape, uint64_t seed) {
  Rng rng(seed);
  const int64_t inner = numel_of(shape) / shape[0];
  std::vector<float> v(static_cast<size_t>(numel_of(shape)));
  for (size_t i = 0; i < v.size(); ++i) {
    const auto c = static_cast<int64_t>(i) / inner;
    v[i] = static_cast<float>(rng.normal(0.0, 0.1 + 0.15 * static_cast<double>(c % 5)));
  }
  return torch::tensor(v, torch::kFloat).reshape(shape);
}

std::vector<int32_t> ints_of(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).to(torch::kInt).contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}

std::vector<float> floats_of(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).to(torch::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

QuantParams act_qp(float lo, float hi) { return qparams_from_range(QuantSpec::activation_default(), {lo}, {hi}); }

/// Output params from the float output's range, shrunk a little so that both ends saturate.
QuantParams out_qp_for(const torch::Tensor& y) {
  return act_qp(0.9f * y.min().item<float>(), 0.9f * y.max().item<float>());
}

// ---- the slow reference ------------------------------------------------------------------------

/// requantize() of an exact int64 accumulator of output channel c with the scalar reference.
int32_t ref_requantize(int64_t acc, const PackedWeight& w, int64_t c, const QuantParams& in_qp,
                       const QuantParams& out_qp) {
  EXPECT_TRUE(acc >= INT32_MIN && acc <= INT32_MAX) << acc;
  const std::vector<int32_t> bias = w.bias_q.defined() ? ints_of(w.bias_q) : std::vector<int32_t>();
  const float s_w = w.params.scale[static_cast<size_t>(w.params.per_channel() ? c : 0)];
  const float m = requantize_multiplier(in_qp.scale[0], s_w, out_qp.scale[0]);
  return requantize(static_cast<int32_t>(acc), bias.empty() ? 0 : bias[static_cast<size_t>(c)], m, out_qp.zero_point[0],
                    out_qp.qmin, out_qp.qmax, kEven);
}

/// x (rows, in) times w (out, in)^T.
std::vector<int32_t> ref_linear(const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                                const QuantParams& out_qp) {
  const std::vector<int32_t> x = ints_of(x_q), wq = ints_of(w.q);
  const int64_t in = w.q.size(1), out = w.q.size(0), rows = x_q.numel() / in;
  const int32_t zp = in_qp.zero_point[0];
  std::vector<int32_t> y;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      int64_t acc = 0;
      for (int64_t k = 0; k < in; ++k) acc += int64_t{x[r * in + k] - zp} * wq[o * in + k];
      y.push_back(ref_requantize(acc, w, o, in_qp, out_qp));
    }
  return y;
}

struct Conv1dCase {
  int64_t n, c_in, length, c_out, kernel, stride, padding, dilation, groups;
  bool bias;
};

std::vector<int32_t> ref_conv1d(const Conv1dCase& k, const torch::Tensor& x_q, const QuantParams& in_qp,
                                const PackedWeight& w, const QuantParams& out_qp) {
  const std::vector<int32_t> x = ints_of(x_q), wq = ints_of(w.q);
  const int64_t cg = k.c_in / k.groups, og = k.c_out / k.groups;
  const int64_t l_out = (k.length + 2 * k.padding - k.dilation * (k.kernel - 1) - 1) / k.stride + 1;
  const int32_t zp = in_qp.zero_point[0];
  std::vector<int32_t> y;
  for (int64_t n = 0; n < k.n; ++n)
    for (int64_t o = 0; o < k.c_out; ++o)
      for (int64_t t = 0; t < l_out; ++t) {
        int64_t acc = 0;
        const int64_t g = o / og;
        for (int64_t ci = 0; ci < cg; ++ci)
          for (int64_t j = 0; j < k.kernel; ++j) {
            const int64_t pos = t * k.stride - k.padding + j * k.dilation;
            if (pos < 0 || pos >= k.length) continue;  // padding: the zero point, i.e. x - zp = 0
            const int32_t xv = x[(n * k.c_in + g * cg + ci) * k.length + pos];
            acc += int64_t{xv - zp} * wq[(o * cg + ci) * k.kernel + j];
          }
        y.push_back(ref_requantize(acc, w, o, in_qp, out_qp));
      }
  return y;
}

struct Conv2dCase {
  int64_t n, c_in, h, w, c_out, kh, kw;
  std::array<int64_t, 2> stride, padding, dilation;
  int64_t groups;
  bool bias;
};

std::vector<int32_t> ref_conv2d(const Conv2dCase& k, const torch::Tensor& x_q, const QuantParams& in_qp,
                                const PackedWeight& w, const QuantParams& out_qp) {
  const std::vector<int32_t> x = ints_of(x_q), wq = ints_of(w.q);
  const int64_t cg = k.c_in / k.groups, og = k.c_out / k.groups;
  const int64_t h_out = (k.h + 2 * k.padding[0] - k.dilation[0] * (k.kh - 1) - 1) / k.stride[0] + 1;
  const int64_t w_out = (k.w + 2 * k.padding[1] - k.dilation[1] * (k.kw - 1) - 1) / k.stride[1] + 1;
  const int32_t zp = in_qp.zero_point[0];
  std::vector<int32_t> y;
  for (int64_t n = 0; n < k.n; ++n)
    for (int64_t o = 0; o < k.c_out; ++o)
      for (int64_t i = 0; i < h_out; ++i)
        for (int64_t j = 0; j < w_out; ++j) {
          int64_t acc = 0;
          const int64_t g = o / og;
          for (int64_t ci = 0; ci < cg; ++ci)
            for (int64_t a = 0; a < k.kh; ++a)
              for (int64_t b = 0; b < k.kw; ++b) {
                const int64_t r = i * k.stride[0] - k.padding[0] + a * k.dilation[0];
                const int64_t s = j * k.stride[1] - k.padding[1] + b * k.dilation[1];
                if (r < 0 || r >= k.h || s < 0 || s >= k.w) continue;
                const int32_t xv = x[((n * k.c_in + g * cg + ci) * k.h + r) * k.w + s];
                acc += int64_t{xv - zp} * wq[((o * cg + ci) * k.kh + a) * k.kw + b];
              }
          y.push_back(ref_requantize(acc, w, o, in_qp, out_qp));
        }
  return y;
}

/// a (batch, m, k) times b (batch, k, n), batch dims already broadcast.
std::vector<int32_t> ref_matmul(const torch::Tensor& a_q, const QuantParams& a_qp, const torch::Tensor& b_q,
                                const QuantParams& b_qp, const QuantParams& out_qp) {
  const std::vector<int32_t> a = ints_of(a_q), b = ints_of(b_q);
  const int64_t m = a_q.size(-2), kk = a_q.size(-1), n = b_q.size(-1), batch = a_q.numel() / (m * kk);
  const float mult = requantize_multiplier(a_qp.scale[0], b_qp.scale[0], out_qp.scale[0]);
  std::vector<int32_t> y;
  for (int64_t t = 0; t < batch; ++t)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        int64_t acc = 0;
        for (int64_t k = 0; k < kk; ++k)
          acc += int64_t{a[(t * m + i) * kk + k] - a_qp.zero_point[0]} * (b[(t * kk + k) * n + j] - b_qp.zero_point[0]);
        EXPECT_TRUE(acc >= INT32_MIN && acc <= INT32_MAX);
        y.push_back(
            requantize(static_cast<int32_t>(acc), 0, mult, out_qp.zero_point[0], out_qp.qmin, out_qp.qmax, kEven));
      }
  return y;
}

// ---- agreement bookkeeping -----------------------------------------------------------------------

/// Compares the int8 output with the fake-quant float output on the output grid: |q_int - q_fq|
/// must be <= 1 everywhere; returns the number of one-step disagreements.
int64_t one_step_disagreements(const torch::Tensor& y_int8, const torch::Tensor& y_fq, const QuantParams& out_qp,
                               const std::string& what) {
  const std::vector<int32_t> a = ints_of(y_int8), b = ints_of(quantize_tensor(y_fq, out_qp));
  EXPECT_EQ(a.size(), b.size()) << what;
  // The fake-quant output lies on the grid: quantizing it back is exact.
  EXPECT_EQ(floats_of(dequantize_tensor(quantize_tensor(y_fq, out_qp), out_qp)), floats_of(y_fq)) << what;
  int64_t off = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_LE(std::abs(a[i] - b[i]), 1) << what << " element " << i;
    off += a[i] != b[i];
  }
  return off;
}

struct Agreement {
  int64_t elements = 0, off = 0;
  void add(int64_t n, int64_t o) { elements += n, off += o; }
  void report(const char* op) const {
    std::printf("[ int8 vs fake-quant ] %s: %lld of %lld outputs one step apart (%.4f%%)\n", op,
                static_cast<long long>(off), static_cast<long long>(elements),
                elements ? 100.0 * static_cast<double>(off) / static_cast<double>(elements) : 0.0);
  }
};

// ---- the cases -------------------------------------------------------------------------------------

const QuantParams kInQp = act_qp(-1.5f, 2.5f);  // affine, zero point != 0

/// WiFlow's TCN convs (20 channels, groups 20 and 4, kernel 3, dilation 1/2/4, padding (k-1) d for
/// the causal chomp), its grouped pointwise convs, and an odd strided plain conv without bias.
std::vector<Conv1dCase> conv1d_cases() {
  std::vector<Conv1dCase> cases;
  for (int64_t groups : {20, 4})
    for (int64_t d : {1, 2, 4}) cases.push_back({3, 20, 23, 20, 3, 1, 2 * d, d, groups, true});
  cases.push_back({3, 20, 23, 40, 1, 1, 0, 1, 4, true});
  cases.push_back({2, 7, 31, 13, 3, 2, 1, 1, 1, false});
  cases.push_back({2, 20, 9, 20, 3, 1, 0, 4, 20, true});  // padded length exactly the dilated kernel
  return cases;
}

/// WiFlow's (1, 3) stride (1, 2) convs along W, 3x3, and a grouped, dilated, strided one.
std::vector<Conv2dCase> conv2d_cases() {
  return {{2, 6, 5, 17, 10, 1, 3, {1, 2}, {0, 1}, {1, 1}, 1, true},
          {2, 6, 5, 17, 7, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, true},
          {2, 6, 9, 11, 8, 3, 3, {2, 2}, {2, 1}, {2, 1}, 2, false}};
}

struct Prepared {
  torch::Tensor x, w, b, x_q;
  PackedWeight pw;
  QuantParams out_qp;
};

Prepared prepare(const std::vector<int64_t>& x_shape, const std::vector<int64_t>& w_shape, bool bias, uint64_t seed) {
  Prepared p;
  p.x = uniform_tensor(x_shape, seed, -1.5, 2.5);
  p.w = weight_tensor(w_shape, seed + 1);
  if (bias) p.b = uniform_tensor({w_shape[0]}, seed + 2, -0.7, 0.7);
  p.x_q = quantize_tensor(p.x, kInQp);
  p.pw = pack_weight(p.w, p.b, QuantSpec::weight_default(), kInQp);
  return p;
}

Prepared prepare_conv1d(const Conv1dCase& k, uint64_t seed) {
  Prepared p = prepare({k.n, k.c_in, k.length}, {k.c_out, k.c_in / k.groups, k.kernel}, k.bias, seed);
  p.out_qp = out_qp_for(torch::conv1d(fake_quantize(p.x, kInQp), fake_quantize(p.w, p.pw.params), p.b, k.stride,
                                      k.padding, k.dilation, k.groups));
  return p;
}

Prepared prepare_conv2d(const Conv2dCase& k, uint64_t seed) {
  Prepared p = prepare({k.n, k.c_in, k.h, k.w}, {k.c_out, k.c_in / k.groups, k.kh, k.kw}, k.bias, seed);
  p.out_qp = out_qp_for(torch::conv2d(fake_quantize(p.x, kInQp), fake_quantize(p.w, p.pw.params), p.b,
                                      {k.stride[0], k.stride[1]}, {k.padding[0], k.padding[1]},
                                      {k.dilation[0], k.dilation[1]}, k.groups));
  return p;
}

Prepared prepare_linear(bool bias, uint64_t seed) {
  Prepared p = prepare({4, 9, 37}, {13, 37}, bias, seed);
  p.out_qp = out_qp_for(torch::linear(fake_quantize(p.x, kInQp), fake_quantize(p.w, p.pw.params), p.b));
  return p;
}

std::string describe(const Conv1dCase& k) {
  return str_cat("conv1d C ", k.c_in, "->", k.c_out, " k ", k.kernel, " stride ", k.stride, " pad ", k.padding, " dil ",
                 k.dilation, " groups ", k.groups);
}

std::string describe(const Conv2dCase& k) {
  return str_cat("conv2d C ", k.c_in, "->", k.c_out, " k ", k.kh, "x", k.kw, " stride ", k.stride[0], ",", k.stride[1],
                 " groups ", k.groups);
}

// ---- quantize / dequantize ---------------------------------------------------------------------

TEST(Int8Ops, QuantizeDequantizeTensorMatchReferenceBitExactly) {
  QuantParams pc = qparams_from_range(QuantSpec::weight_default(), {-0.3f, -2.0f, 0.0f, -1.1f, -0.01f},
                                      {0.5f, 1.0f, 0.0f, 0.7f, 0.02f});
  pc.axis = 1;
  QuantSpec four = QuantSpec::activation_default();
  four.bits = 4;
  const std::vector<std::pair<std::string, QuantParams>> cases = {
      {"per-tensor affine", kInQp},
      {"per-channel symmetric axis 1", pc},
      {"int4 affine", qparams_from_range(four, {-1.0f}, {0.4f})}};
  for (const auto& [name, p] : cases)
    for (Rounding r : {Rounding::half_even, Rounding::half_away}) {
      const std::vector<int64_t> shape = {3, 5, 7};
      torch::Tensor x = uniform_tensor(shape, 11, -4.0, 4.0);  // past both ends of every range
      // Put every third value exactly on a tie of its channel.
      std::vector<float> v = floats_of(x);
      for (size_t i = 0; i < v.size(); i += 3) {
        const auto c = static_cast<size_t>(channel_of(static_cast<int64_t>(i), shape, p));
        v[i] = (static_cast<float>(static_cast<int64_t>(i % 19) - 9) + 0.5f) * p.scale[c];
      }
      x = torch::tensor(v, torch::kFloat).reshape(shape);
      const torch::Tensor q = quantize_tensor(x, p, r);
      ASSERT_EQ(q.scalar_type(), torch::kInt8);
      EXPECT_EQ(ints_of(q), quantize_values(v, shape, p, r)) << name;
      const std::vector<int32_t> qi = ints_of(q);
      EXPECT_EQ(floats_of(dequantize_tensor(q, p)), dequantize_values(qi, shape, p)) << name;
    }
  EXPECT_TRUE(contains(error_of([] { quantize_tensor(torch::full({2}, NAN), kInQp); }), "non-finite"));
  EXPECT_TRUE(contains(error_of([] { quantize_tensor(torch::zeros({2}), QuantParams::per_tensor(0.1f, 0, 0, 255)); }),
                       "does not fit int8"));
}

// ---- each op against the slow reference and the fake-quant path ------------------------------

TEST(Int8Ops, LinearMatchesReferenceAndFakeQuant) {
  Agreement agree;
  for (bool bias : {true, false}) {
    const Prepared p = prepare_linear(bias, bias ? 100 : 200);
    const torch::Tensor y = int8_linear(p.x_q, kInQp, p.pw, p.out_qp);
    ASSERT_EQ(y.sizes(), torch::IntArrayRef({4, 9, 13}));
    ASSERT_EQ(y.scalar_type(), torch::kInt8);
    EXPECT_EQ(ints_of(y), ref_linear(p.x_q, kInQp, p.pw, p.out_qp)) << "bias " << bias;
    const torch::Tensor fq = fq_linear(p.x, p.w, p.b, kInQp, p.pw.params, p.out_qp);
    agree.add(y.numel(), one_step_disagreements(y, fq, p.out_qp, "linear"));
  }
  agree.report("linear");
  EXPECT_LE(agree.off * 100, agree.elements);  // <= 1%
}

TEST(Int8Ops, Conv1dGroupedDilatedMatchesReferenceAndFakeQuant) {
  Agreement agree;
  uint64_t seed = 300;
  for (const Conv1dCase& k : conv1d_cases()) {
    const Prepared p = prepare_conv1d(k, seed += 10);
    const torch::Tensor y = int8_conv1d(p.x_q, kInQp, p.pw, p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    const torch::Tensor fq =
        fq_conv1d(p.x, p.w, p.b, kInQp, p.pw.params, p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    ASSERT_EQ(y.sizes(), fq.sizes()) << describe(k);
    EXPECT_EQ(ints_of(y), ref_conv1d(k, p.x_q, kInQp, p.pw, p.out_qp)) << describe(k);
    agree.add(y.numel(), one_step_disagreements(y, fq, p.out_qp, describe(k)));
  }
  agree.report("conv1d");
  EXPECT_LE(agree.off * 100, agree.elements);
}

TEST(Int8Ops, Conv2dMatchesReferenceAndFakeQuant) {
  Agreement agree;
  uint64_t seed = 500;
  for (const Conv2dCase& k : conv2d_cases()) {
    const Prepared p = prepare_conv2d(k, seed += 10);
    const torch::Tensor y = int8_conv2d(p.x_q, kInQp, p.pw, p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    const torch::Tensor fq =
        fq_conv2d(p.x, p.w, p.b, kInQp, p.pw.params, p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    ASSERT_EQ(y.sizes(), fq.sizes()) << describe(k);
    EXPECT_EQ(ints_of(y), ref_conv2d(k, p.x_q, kInQp, p.pw, p.out_qp)) << describe(k);
    agree.add(y.numel(), one_step_disagreements(y, fq, p.out_qp, describe(k)));
  }
  agree.report("conv2d");
  EXPECT_LE(agree.off * 100, agree.elements);
}

struct MatmulCase {
  torch::Tensor a, b, a_q, b_q;
  QuantParams a_qp, b_qp, out_qp;
};

/// Attention-shaped products: (2, 3, 7, 16) x (2, 3, 16, 9), and a broadcast (2, 3, 7, 16) x (16, 9).
MatmulCase matmul_case(bool broadcast) {
  MatmulCase m;
  m.a = uniform_tensor({2, 3, 7, 16}, broadcast ? 61 : 71, -2.0, 1.0);
  m.b = broadcast ? uniform_tensor({16, 9}, 62, -0.5, 3.0) : uniform_tensor({2, 3, 16, 9}, 72, -0.5, 3.0);
  m.a_qp = act_qp(-2.0f, 1.0f);
  m.b_qp = act_qp(-0.5f, 3.0f);
  m.a_q = quantize_tensor(m.a, m.a_qp);
  m.b_q = quantize_tensor(m.b, m.b_qp);
  m.out_qp = out_qp_for(torch::matmul(fake_quantize(m.a, m.a_qp), fake_quantize(m.b, m.b_qp)));
  return m;
}

TEST(Int8Ops, BatchedMatmulMatchesReferenceAndFakeQuant) {
  Agreement agree;
  for (bool broadcast : {false, true}) {
    const MatmulCase m = matmul_case(broadcast);
    const torch::Tensor y = int8_matmul(m.a_q, m.a_qp, m.b_q, m.b_qp, m.out_qp);
    ASSERT_EQ(y.sizes(), torch::IntArrayRef({2, 3, 7, 9}));
    const torch::Tensor b_full = m.b_q.expand({2, 3, 16, 9});
    EXPECT_EQ(ints_of(y), ref_matmul(m.a_q, m.a_qp, b_full, m.b_qp, m.out_qp)) << "broadcast " << broadcast;
    const torch::Tensor fq = fq_matmul(m.a, m.a_qp, m.b, m.b_qp, m.out_qp);
    agree.add(y.numel(), one_step_disagreements(y, fq, m.out_qp, "matmul"));
  }
  agree.report("matmul");
  EXPECT_LE(agree.off * 100, agree.elements);
}

/// The same agreement at realistic sizes (~0.1 s), where the float sums are long enough to land
/// near a rounding tie now and then. Measured with LibTorch 1.13 on CPU: conv2d 2 of 270336
/// outputs one step apart (0.0007%), linear 0 of 393216; the small cases above: 0 of 936 (linear),
/// 0 of 13176 (conv1d), 0 of 2570 (conv2d), 0 of 756 (matmul).
TEST(Int8Ops, AgreementAtScale) {
  Agreement conv, lin;
  for (uint64_t seed = 2000; seed < 2040; seed += 10) {
    const Conv2dCase k{4, 64, 8, 33, 64, 3, 3, {1, 1}, {1, 1}, {1, 1}, 1, true};
    const Prepared p = prepare_conv2d(k, seed);
    const torch::Tensor y = int8_conv2d(p.x_q, kInQp, p.pw, p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    const torch::Tensor fq =
        fq_conv2d(p.x, p.w, p.b, kInQp, p.pw.params, p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    conv.add(y.numel(), one_step_disagreements(y, fq, p.out_qp, describe(k)));
    Prepared l = prepare({256, 512}, {384, 512}, true, seed + 5);
    l.out_qp = out_qp_for(torch::linear(fake_quantize(l.x, kInQp), fake_quantize(l.w, l.pw.params), l.b));
    const torch::Tensor yl = int8_linear(l.x_q, kInQp, l.pw, l.out_qp);
    lin.add(yl.numel(), one_step_disagreements(yl, fq_linear(l.x, l.w, l.b, kInQp, l.pw.params, l.out_qp), l.out_qp,
                                               "linear 512 -> 384"));
  }
  conv.report("conv2d 64 -> 64, 3x3 (K = 576)");
  lin.report("linear 512 -> 384 (K = 512)");
  EXPECT_LE(conv.off * 100, conv.elements);
  EXPECT_LE(lin.off * 100, lin.elements);
}

// ---- exactness, padding, saturation --------------------------------------------------------------

TEST(Int8Ops, EqualsFakeQuantExactlyWhereFloatMathIsExact) {
  // Power-of-two scales: every dequantized value, product, partial sum (< 2^24 units of 2^-11)
  // and the bias are exact in float32, and M = 2^-4 * 2^-k / 2^-1 is exact, so the float path
  // computes the same real number and both round it identically: no disagreement at all.
  const QuantParams in_qp = QuantParams::per_tensor(0.0625f, 5, -128, 127);
  const QuantParams out_qp = QuantParams::per_tensor(0.5f, -3, -128, 127);
  const Conv1dCase k{2, 20, 17, 20, 3, 1, 4, 2, 4, true};
  torch::Tensor x = uniform_tensor({k.n, k.c_in, k.length}, 900, -8.0, 7.5);
  std::vector<float> wv = floats_of(weight_tensor({k.c_out, k.c_in / k.groups, k.kernel}, 901));
  // Channel c's largest |w| is 127 * 2^-(5 + c % 3), so its scale is exactly 2^-(5 + c % 3).
  const int64_t inner = (k.c_in / k.groups) * k.kernel;
  for (int64_t c = 0; c < k.c_out; ++c) {
    const float s = std::ldexp(1.0f, -5 - static_cast<int>(c % 3));
    for (int64_t i = 0; i < inner; ++i) {
      float& v = wv[static_cast<size_t>(c * inner + i)];
      v = std::max(-127.0f, std::min(127.0f, std::nearbyint(v / s))) * s;
    }
    wv[static_cast<size_t>(c * inner)] = 127.0f * s;
  }
  const torch::Tensor w = torch::tensor(wv, torch::kFloat).reshape({k.c_out, k.c_in / k.groups, k.kernel});
  const torch::Tensor b = uniform_tensor({k.c_out}, 902, -3.0, 3.0);
  const PackedWeight pw = pack_weight(w, b, QuantSpec::weight_default(), in_qp);
  for (int64_t c = 0; c < k.c_out; ++c) ASSERT_EQ(pw.weight_scale(c), std::ldexp(1.0f, -5 - static_cast<int>(c % 3)));
  const torch::Tensor y =
      int8_conv1d(quantize_tensor(x, in_qp), in_qp, pw, out_qp, k.stride, k.padding, k.dilation, k.groups);
  const torch::Tensor fq = fq_conv1d(x, w, b, in_qp, pw.params, out_qp, k.stride, k.padding, k.dilation, k.groups);
  EXPECT_EQ(ints_of(y), ints_of(quantize_tensor(fq, out_qp)));
  EXPECT_EQ(floats_of(dequantize_tensor(y, out_qp)), floats_of(fq));
}

TEST(Int8Ops, PaddingIsTheInputZeroPoint) {
  // An input of real zeros (q = zp_in = kInQp's zero point) gives quantize(bias) at every position,
  // the padded borders included, exactly like the fp32 conv with zero padding.
  ASSERT_NE(kInQp.zero_point[0], 0);
  const Conv1dCase k{1, 20, 5, 20, 3, 1, 8, 4, 4, true};
  const Prepared p = prepare_conv1d(k, 1000);
  const torch::Tensor zeros_q = quantize_tensor(torch::zeros({1, 20, 5}), kInQp);
  EXPECT_EQ(ints_of(zeros_q), std::vector<int32_t>(100, kInQp.zero_point[0]));
  const torch::Tensor y = int8_conv1d(zeros_q, kInQp, p.pw, p.out_qp, 1, 8, 4, 4);
  const std::vector<int32_t> got = ints_of(y);
  const int64_t l_out = y.size(2);
  for (int64_t o = 0; o < 20; ++o)
    for (int64_t t = 0; t < l_out; ++t)
      ASSERT_EQ(got[static_cast<size_t>(o * l_out + t)], ref_requantize(0, p.pw, o, kInQp, p.out_qp)) << o << " " << t;
  const torch::Tensor fq = fq_conv1d(torch::zeros({1, 20, 5}), p.w, p.b, kInQp, p.pw.params, p.out_qp, 1, 8, 4, 4);
  EXPECT_EQ(got, ints_of(quantize_tensor(fq, p.out_qp)));
}

TEST(Int8Ops, SaturatesAtBothEnds) {
  // Output range far narrower than the values: most outputs clamp to -128 or 127.
  const Prepared p = prepare_linear(true, 1100);
  const QuantParams narrow = QuantParams::per_tensor(0.002f, 7, -128, 127);
  const torch::Tensor y = int8_linear(p.x_q, kInQp, p.pw, narrow);
  const std::vector<int32_t> got = ints_of(y);
  EXPECT_EQ(got, ref_linear(p.x_q, kInQp, p.pw, narrow));
  int64_t low = 0, high = 0;
  for (int32_t v : got) low += v == -128, high += v == 127;
  EXPECT_GT(low, static_cast<int64_t>(got.size()) / 4);
  EXPECT_GT(high, static_cast<int64_t>(got.size()) / 4);
  const int64_t off =
      one_step_disagreements(y, fq_linear(p.x, p.w, p.b, kInQp, p.pw.params, narrow), narrow, "saturated");
  EXPECT_LE(off * 100, y.numel());
  // A narrower integer range (int4 activations stored in int8) clamps at its own ends.
  const QuantParams int4 = QuantParams::per_tensor(0.05f, 0, -8, 7);
  const std::vector<int32_t> got4 = ints_of(int8_linear(p.x_q, kInQp, p.pw, int4));
  EXPECT_EQ(got4, ref_linear(p.x_q, kInQp, p.pw, int4));
  EXPECT_EQ(*std::min_element(got4.begin(), got4.end()), -8);
  EXPECT_EQ(*std::max_element(got4.begin(), got4.end()), 7);
}

// ---- packing and errors --------------------------------------------------------------------------

TEST(Int8Ops, PackWeightParamsAndBias) {
  const Prepared p = prepare_linear(true, 1200);
  const QuantParams expect =
      qparams_from_range(QuantSpec::weight_default(), floats_of(p.w.amin(1)), floats_of(p.w.amax(1)));
  EXPECT_EQ(p.pw.params, expect);
  EXPECT_EQ(ints_of(p.pw.q), quantize_values(floats_of(p.w), {13, 37}, expect, kEven));
  ASSERT_EQ(p.pw.bias_q.scalar_type(), torch::kInt);
  const std::vector<float> b = floats_of(p.b);
  const std::vector<int32_t> bq = ints_of(p.pw.bias_q);
  for (size_t c = 0; c < b.size(); ++c) {
    const double scale = static_cast<double>(kInQp.scale[0]) * static_cast<double>(expect.scale[c]);
    EXPECT_EQ(bq[c], static_cast<int32_t>(std::nearbyint(static_cast<double>(b[c]) / scale)));
  }
  // Per-tensor weights: one scale for every channel.
  QuantSpec per_tensor = QuantSpec::weight_default();
  per_tensor.granularity = Granularity::per_tensor;
  const PackedWeight pt = pack_weight(p.w, p.b, per_tensor, kInQp);
  EXPECT_FALSE(pt.params.per_channel());
  EXPECT_EQ(ints_of(int8_linear(p.x_q, kInQp, pt, p.out_qp)), ref_linear(p.x_q, kInQp, pt, p.out_qp));
  // Half-even bias rounding: b / (s_in s_w) = 2.5 -> 2, 3.5 -> 4, -2.5 -> -2.
  const QuantParams wq = QuantParams::per_tensor(0.25f, 0, -127, 127);
  EXPECT_EQ(ints_of(quantize_bias(torch::tensor({0.3125f, 0.4375f, -0.3125f}), 0.5f, wq)),
            (std::vector<int32_t>{2, 4, -2}));
}

TEST(Int8Ops, BiasAndAccumulatorOverflowAreErrors) {
  // s_w = 2^-10 (largest |w| = 127 * 2^-10), s_in = 2^-6, zp 0: bias scale 2^-16, and the largest
  // |acc| of 4 taps of 127 against |x - zp| <= 128 is 4 * 127 * 128 = 65024.
  const QuantParams in_qp = QuantParams::per_tensor(0.015625f, 0, -128, 127);
  const torch::Tensor w = torch::full({1, 4}, 127.0f / 1024.0f);
  // bias_q = 32767.0078125 * 2^16 = 2^31 - 65024; + 65024 = 2^31: one too many.
  EXPECT_EQ(error_of([&] { pack_weight(w, torch::tensor({32767.0078125f}), QuantSpec::weight_default(), in_qp); }),
            "pack_weight: output channel 0 can overflow the int32 accumulator: max |acc| = 65024 (sum |w_q| * 128) "
            "+ |bias_q| = 2147418624 exceeds 2^31 - 1");
  // bias_q = -32767 * 2^16 = -(2^31 - 65536) still fits with the largest accumulator.
  const PackedWeight ok = pack_weight(w, torch::tensor({-32767.0f}), QuantSpec::weight_default(), in_qp);
  EXPECT_EQ(ints_of(ok.bias_q)[0], -2147418112);
  // Extreme inputs then stay exact: all x - zp = -128 against w_q = 127, plus the bias.
  const torch::Tensor x_min = torch::full({1, 4}, -128, torch::kInt8);
  // (-2^31 + 512) * 2^-16 / 400 = -81.9: q = -82.
  const QuantParams out_qp = QuantParams::per_tensor(400.0f, 0, -128, 127);
  EXPECT_EQ(ints_of(int8_linear(x_min, in_qp, ok, out_qp)), std::vector<int32_t>{-82});
  EXPECT_EQ(ints_of(int8_linear(x_min, in_qp, ok, out_qp)), ref_linear(x_min, in_qp, ok, out_qp));
  // A bias beyond int32 on its own.
  EXPECT_TRUE(contains(error_of([&] { pack_weight(w, torch::tensor({40000.0f}), QuantSpec::weight_default(), in_qp); }),
                       "quantize_bias: bias[0] = 40000 at scale s_in * s_w = "));
  // Too long a dot product for int32, even without bias.
  EXPECT_TRUE(contains(error_of([] {
                         pack_weight(torch::ones({1, 120000}), torch::Tensor(), QuantSpec::weight_default(), kInQp);
                       }),
                       "can overflow the int32 accumulator"));
  // kInQp has zero point -32, so |x - zp| <= 159: 100000 * 159 * 159 > 2^31.
  ASSERT_EQ(kInQp.zero_point[0], -32);
  const torch::Tensor a = torch::zeros({1, 100000}, torch::kInt8), b = torch::zeros({100000, 1}, torch::kInt8);
  EXPECT_EQ(error_of([&] { int8_matmul(a, kInQp, b, kInQp, kInQp); }),
            "int8_matmul: inner dimension 100000 can overflow the int32 accumulator (max |acc| = 2528100000 exceeds "
            "2^31 - 1)");
}

TEST(Int8Ops, RejectsWhatTheKernelsCannotRun) {
  const Prepared p = prepare_linear(true, 1300);
  QuantSpec affine = QuantSpec::weight_default();
  affine.symmetric = false;
  EXPECT_TRUE(contains(error_of([&] { pack_weight(p.w, p.b, affine, kInQp); }), "need signed symmetric weights"));
  QuantSpec axis1 = QuantSpec::weight_default();
  axis1.axis = 1;
  EXPECT_TRUE(contains(error_of([&] { pack_weight(p.w, p.b, axis1, kInQp); }), "must use axis 0"));
  EXPECT_TRUE(contains(error_of([&] { int8_linear(p.x, kInQp, p.pw, p.out_qp); }), "expected int8"));
  const QuantParams other = act_qp(-1.0f, 1.0f);
  EXPECT_TRUE(contains(error_of([&] { int8_linear(p.x_q, other, p.pw, p.out_qp); }),
                       "differ from those the weight was packed for"));
  QuantParams per_channel_out = p.pw.params;
  EXPECT_TRUE(contains(error_of([&] { int8_linear(p.x_q, kInQp, p.pw, per_channel_out); }), "must be per-tensor"));
  const Prepared c = prepare(std::vector<int64_t>{1, 20, 5}, {20, 5, 3}, true, 1301);
  EXPECT_TRUE(contains(error_of([&] { int8_conv1d(c.x_q, kInQp, c.pw, kInQp, 1, 0, 4, 4); }),
                       "smaller than the dilated kernel (9)"));
  EXPECT_TRUE(
      contains(error_of([&] { int8_conv1d(c.x_q, kInQp, c.pw, kInQp, 1, 0, 1, 5); }), "with 5 groups does not fit"));
}

// ---- CUDA against CPU ----------------------------------------------------------------------------

TEST(Int8Ops, CudaMatchesCpuBitExactly_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  {
    const torch::Tensor x = uniform_tensor({5, 7, 11}, 1400, -4.0, 4.0);
    const torch::Tensor q = quantize_tensor(x.to(cuda), kInQp);
    ASSERT_TRUE(q.is_cuda());
    EXPECT_EQ(ints_of(q), ints_of(quantize_tensor(x, kInQp)));
    EXPECT_EQ(floats_of(dequantize_tensor(q, kInQp)), floats_of(dequantize_tensor(q.cpu(), kInQp)));
  }
  for (bool bias : {true, false}) {
    const Prepared p = prepare_linear(bias, 1500);
    const torch::Tensor y = int8_linear(p.x_q.to(cuda), kInQp, p.pw.to(cuda), p.out_qp);
    ASSERT_TRUE(y.is_cuda());
    EXPECT_EQ(ints_of(y), ints_of(int8_linear(p.x_q, kInQp, p.pw, p.out_qp)));
  }
  uint64_t seed = 1600;
  for (const Conv1dCase& k : conv1d_cases()) {
    const Prepared p = prepare_conv1d(k, seed += 10);
    const torch::Tensor y =
        int8_conv1d(p.x_q.to(cuda), kInQp, p.pw.to(cuda), p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    EXPECT_EQ(ints_of(y), ints_of(int8_conv1d(p.x_q, kInQp, p.pw, p.out_qp, k.stride, k.padding, k.dilation, k.groups)))
        << describe(k);
  }
  for (const Conv2dCase& k : conv2d_cases()) {
    const Prepared p = prepare_conv2d(k, seed += 10);
    const torch::Tensor y =
        int8_conv2d(p.x_q.to(cuda), kInQp, p.pw.to(cuda), p.out_qp, k.stride, k.padding, k.dilation, k.groups);
    EXPECT_EQ(ints_of(y), ints_of(int8_conv2d(p.x_q, kInQp, p.pw, p.out_qp, k.stride, k.padding, k.dilation, k.groups)))
        << describe(k);
  }
  for (bool broadcast : {false, true}) {
    const MatmulCase m = matmul_case(broadcast);
    const torch::Tensor y = int8_matmul(m.a_q.to(cuda), m.a_qp, m.b_q.to(cuda), m.b_qp, m.out_qp);
    EXPECT_EQ(ints_of(y), ints_of(int8_matmul(m.a_q, m.a_qp, m.b_q, m.b_qp, m.out_qp)));
  }
}

TEST(Int8Ops, PackWeightOnCudaMatchesCpu_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  const torch::Tensor w = weight_tensor({20, 5, 3}, 1700), b = uniform_tensor({20}, 1701, -1.0, 1.0);
  const PackedWeight cpu = pack_weight(w, b, QuantSpec::weight_default(), kInQp);
  const PackedWeight gpu = pack_weight(w.to(cuda), b.to(cuda), QuantSpec::weight_default(), kInQp);
  ASSERT_TRUE(gpu.q.is_cuda() && gpu.bias_q.is_cuda());
  EXPECT_EQ(gpu.params, cpu.params);
  EXPECT_EQ(ints_of(gpu.q), ints_of(cpu.q));
  EXPECT_EQ(ints_of(gpu.bias_q), ints_of(cpu.bias_q));
}

}  // namespace
}  // namespace csipose

namespace csipose {
namespace {

// The attention products' zero-point terms (row sums of a, column sums of b, in a vectorized form
// for rows up to 64 values): the requantized float products equal the integer reference's for
// depths around that limit, b row- and column-major, with the explicit kernels on and off.
TEST(Int8Ops, MatmulZeroPointTermsAtEveryDepth) {
  const QuantParams a_qp = QuantParams::per_tensor(0.02f, -7, -128, 127);
  const QuantParams b_qp = QuantParams::per_tensor(0.03f, 5, -128, 127);
  const QuantParams out_qp = QuantParams::per_tensor(0.5f, 3, -128, 127);
  torch::manual_seed(3);
  for (const int64_t k : {1, 10, 24, 63, 64, 65, 130}) {
    const torch::Tensor a = torch::randint(-128, 128, {2, 3, 5, k}).to(torch::kInt8);
    const torch::Tensor b = torch::randint(-128, 128, {2, 3, k, 7}).to(torch::kInt8);
    const torch::Tensor bt = torch::randint(-128, 128, {2, 3, 7, k}).to(torch::kInt8);  // b^T in memory
    for (const torch::Tensor& rhs : {b, bt.transpose(2, 3)}) {
      const torch::Tensor want = dequantize_tensor(int8_matmul(a, a_qp, rhs.contiguous(), b_qp, out_qp), out_qp);
      for (const bool kernels : {true, false}) {
        const bool before = set_int8_avx512_kernels(kernels);
        const torch::Tensor got = int8_matmul_float(a, a_qp, rhs, b_qp, out_qp);
        set_int8_avx512_kernels(before);
        EXPECT_TRUE(torch::equal(got, want)) << "k " << k << " kernels " << kernels << " b contiguous "
                                             << rhs.is_contiguous();
      }
    }
  }
}

}  // namespace
}  // namespace csipose
