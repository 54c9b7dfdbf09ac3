// The standardized-token codes (src/quant/token_codes.h): divide_span bit for bit the IEEE
// quotient over numerators and divisors across the float32 range (the multiply-and-correct lanes,
// the vdivps fallbacks, zeros, subnormals, NaN / Inf); quantize_standardized_transposed code for
// code the float tokens quantized by quantize_span, for every column count through the byte
// transpose and past it, rounding ties, clamps, the division fallbacks and non-finite tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "quant/int8_ops.h"
#include "quant/quant_spec.h"
#include "quant/token_codes.h"

namespace csipose {
namespace {

uint32_t bits_of(float v) {
  uint32_t u = 0;
  std::memcpy(&u, &v, sizeof u);
  return u;
}

float float_of(uint32_t u) {
  float v = 0;
  std::memcpy(&v, &u, sizeof v);
  return v;
}

/// Runs f with the explicit AVX-512 kernels on, then off (the portable loops).
template <typename F>
void for_both_kernels(const F& f) {
  for (const bool on : {true, false}) {
    const bool before = set_int8_avx512_kernels(on);
    f(on);
    set_int8_avx512_kernels(before);
  }
}

/// Numerators spread over the whole float32 range: random bit patterns (every exponent, subnormals
/// and NaN / Inf included), values of a standardized magnitude, and hand-picked edges.
std::vector<float> numerators(std::mt19937& gen, int64_t count) {
  std::vector<float> a;
  std::uniform_int_distribution<uint32_t> any_bits;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int64_t i = 0; i < count; ++i) a.push_back(i % 2 == 0 ? float_of(any_bits(gen)) : normal(gen));
  for (const float e : {0.0f, -0.0f, 1.0f, -1.0f, 0x1p-90f, -0x1p-90f, 0x1p90f, 0x1.fffffep89f, 0x1p-149f,
                        std::numeric_limits<float>::min(), std::numeric_limits<float>::max(),
                        std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                        std::numeric_limits<float>::quiet_NaN(), 0x1.fffffep0f, 0x1.000002p0f})
    a.push_back(e);
  return a;
}

// Every quotient equals the IEEE division's, bit for bit (NaN: any NaN), for divisors inside the
// multiply-and-correct range (random significands, powers of two, all-ones significands, the
// standardization's 1 + 1e-6-like values) and outside it (plain division).
TEST(TokenCodes, DivideSpanIsTheIeeeQuotient) {
  std::mt19937 gen(7);
  const std::vector<float> a = numerators(gen, 200000);
  std::vector<float> divisors = {1.0f,      2.0f,       0.5f,        0x1.fffffep0f, 0x1.fffffep-1f, 1.000001f,
                                 3.0f,      0x1p-30f,   0x1p30f,     0x1.fffffep29f, 0x1.000002p-30f, 7.0e-6f,
                                 0x1p-31f,  0x1p31f,    1e-38f,      3e38f,         0x1p-140f};
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  std::uniform_int_distribution<int> expo(-30, 29);
  for (int i = 0; i < 40; ++i) divisors.push_back(std::ldexp(mant(gen), expo(gen)));
  std::vector<float> got(a.size());
  for_both_kernels([&](bool kernels) {
    for (const float b : divisors) {
      // Offsets 0..2 so that the 16-lane tails and unaligned starts are covered too.
      for (int64_t off = 0; off < 3; ++off) {
        const int64_t n = static_cast<int64_t>(a.size()) - off;
        divide_span(a.data() + off, n, b, got.data());
        int64_t wrong = 0;
        for (int64_t i = 0; i < n; ++i) {
          const float want = a[static_cast<size_t>(i + off)] / b, g = got[static_cast<size_t>(i)];
          if (std::isnan(want) ? !std::isnan(g) : bits_of(want) != bits_of(g)) {
            if (wrong++ < 3)
              ADD_FAILURE() << a[static_cast<size_t>(i + off)] << " / " << b << ": got " << g << " want " << want
                            << " kernels " << kernels;
          }
        }
        EXPECT_EQ(wrong, 0) << "b = " << b << " kernels " << kernels;
      }
    }
  });
}

/// The definition: float tokens (x - mean) / denom in the transposed order, quantized by
/// quantize_span.
std::vector<int8_t> want_codes(const std::vector<float>& x, int64_t rows, int64_t cols, float mean, float denom,
                               const QuantParams& p, Rounding r, bool* finite) {
  std::vector<float> tokens(static_cast<size_t>(rows * cols));
  for (int64_t t = 0; t < cols; ++t)
    for (int64_t i = 0; i < rows; ++i)
      tokens[static_cast<size_t>(t * rows + i)] = (x[static_cast<size_t>(i * cols + t)] - mean) / denom;
  std::vector<int8_t> codes(tokens.size());
  *finite = quantize_span(tokens.data(), rows * cols, codes.data(), p, r);
  return codes;
}

void expect_codes(const std::vector<float>& x, int64_t rows, int64_t cols, float mean, float denom,
                  const QuantParams& p, Rounding r, const char* what) {
  bool want_finite = true;
  const std::vector<int8_t> want = want_codes(x, rows, cols, mean, denom, p, r, &want_finite);
  for_both_kernels([&](bool kernels) {
    std::vector<int8_t> got(static_cast<size_t>(rows * cols) + 16, 99);  // past the end must stay 99
    const bool finite = quantize_standardized_transposed(x.data(), rows, cols, mean, denom, p, r, got.data());
    ASSERT_EQ(finite, want_finite) << what << " rows " << rows << " cols " << cols << " kernels " << kernels;
    if (!finite) return;
    for (size_t i = 0; i < want.size(); ++i)
      ASSERT_EQ(got[i], want[i]) << what << ": code " << i << " rows " << rows << " cols " << cols << " kernels "
                                 << kernels;
    for (size_t i = want.size(); i < got.size(); ++i) ASSERT_EQ(got[i], 99) << what << ": wrote past the end";
  });
}

TEST(TokenCodes, CodesAreTheQuantizedFloatTokens) {
  std::mt19937 gen(11);
  std::normal_distribution<float> normal(0.5f, 2.0f);
  const QuantParams wide = QuantParams::per_tensor(0.03f, 5, -128, 127);
  const QuantParams narrow = QuantParams::per_tensor(0.2f, -3, -8, 7);
  for (int64_t cols = 1; cols <= 14; ++cols)
    for (const int64_t rows : {1, 5, 15, 16, 17, 33, 342}) {
      std::vector<float> x(static_cast<size_t>(rows * cols));
      for (float& v : x) v = normal(gen);
      expect_codes(x, rows, cols, 0.4f, 1.7f, wide, Rounding::half_even, "wide");
      expect_codes(x, rows, cols, -0.2f, 0.9f, narrow, Rounding::half_even, "narrow");
      expect_codes(x, rows, cols, 0.4f, 1.7f, wide, Rounding::half_away, "half away");
    }
}

// Ties of the rounding (tokens at k + 1/2 steps exactly), the clamps, zero tokens of either sign,
// tokens far past 2^90 or below 2^-90 (the fallback and the small-quotient argument), divisors and
// scales outside the multiply-and-correct range, and non-finite tokens (an error).
TEST(TokenCodes, EdgesFollowTheDefinition) {
  const QuantParams unit = QuantParams::per_tensor(1.0f, 0, -128, 127);
  const int64_t rows = 20, cols = 10;
  std::vector<float> ties(static_cast<size_t>(rows * cols));
  for (size_t i = 0; i < ties.size(); ++i) ties[i] = static_cast<float>(static_cast<int64_t>(i) - 100) + 0.5f;
  expect_codes(ties, rows, cols, 0.0f, 1.0f, unit, Rounding::half_even, "ties");
  expect_codes(ties, rows, cols, 0.0f, 1.0f, unit, Rounding::half_away, "ties away");
  expect_codes(ties, rows, cols, 0.25f, 0.5f, QuantParams::per_tensor(0.5f, -1, -100, 90), Rounding::half_even,
               "ties, clamped");
  // Tokens at (or within an ulp of) k + 1/2 through divisors whose reciprocal is inexact: a
  // quotient one ulp off (the product with the reciprocal alone) rounds them the other way.
  for (const float d : {3.0f, 5.0f, 7.0f, 11.0f, 1.7f, 0.3f, 1.000001f}) {
    std::vector<float> near(static_cast<size_t>(rows * cols));
    for (size_t i = 0; i < near.size(); ++i)
      near[i] = static_cast<float>(static_cast<double>(d) * (static_cast<double>(i) - 100.0 + 0.5) / 8.0);
    expect_codes(near, rows, cols, 0.0f, d, QuantParams::per_tensor(0.125f, 0, -128, 127), Rounding::half_even,
                 "near ties");
  }
  std::vector<float> wild = ties;
  wild[3] = 0.0f;
  wild[4] = -0.0f;
  wild[5] = 0x1p100f;
  wild[6] = -0x1p95f;
  wild[7] = 0x1p-100f;
  wild[8] = -0x1p-149f;
  wild[150] = 3e38f;
  expect_codes(wild, rows, cols, 0.0f, 1.0f, unit, Rounding::half_even, "wild");
  expect_codes(wild, rows, cols, 0.0f, 0x1p-40f, unit, Rounding::half_even, "tiny divisor");
  expect_codes(wild, rows, cols, 0.0f, 0x1p40f, unit, Rounding::half_even, "huge divisor");
  expect_codes(wild, rows, cols, 0.0f, 1.0f, QuantParams::per_tensor(0x1p-60f, 0, -128, 127), Rounding::half_even,
               "tiny scale");
  expect_codes(wild, rows, cols, 0.0f, 1.0f, QuantParams::per_tensor(1e-12f, 0, -128, 127), Rounding::half_even,
               "small scale");
  for (const float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> x = ties;
    x[static_cast<size_t>(rows * cols - 1)] = bad;  // the last vector's tail lanes
    expect_codes(x, rows, cols, 0.0f, 1.0f, unit, Rounding::half_even, "non-finite");
    x = ties;
    x[17] = bad;
    expect_codes(x, rows, cols, 0.0f, 1.0f, unit, Rounding::half_even, "non-finite");
  }
  // A finite value whose token overflows (a tiny divisor) is not finite either.
  std::vector<float> big = ties;
  big[40] = 1e38f;
  expect_codes(big, rows, cols, 0.0f, 1e-6f, unit, Rounding::half_even, "overflowing token");
}

// from_stats: with the values' own mean and divisor (float32 mean, float64 sum of the float32
// squares of x - mean, unbiased, float32 sqrt + 1e-6) the range test of the division is left out;
// the codes are still the definition's, for ordinary samples, samples with outliers (large
// numerators, divisor still in range) and samples whose divisor leaves the range.
TEST(TokenCodes, CodesFromTheSamplesOwnStatistics) {
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const QuantParams p = QuantParams::per_tensor(0.02f, -4, -128, 127);
  const int64_t rows = 342, cols = 10, n = rows * cols;
  for (const float outlier : {0.0f, 1e4f, 1e8f, 1e15f}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (float& v : x) v = normal(gen) * 2.0f + 0.5f;
    if (outlier != 0.0f) {
      x[17] = outlier;
      x[static_cast<size_t>(n - 1)] = -outlier;
    }
    double sum = 0;
    for (const float v : x) sum += v;
    const auto mean = static_cast<float>(sum / static_cast<double>(n));
    double sq = 0;
    for (const float v : x) {
      const float c = v - mean;
      sq += static_cast<double>(c * c);
    }
    const float denom = std::sqrt(static_cast<float>(sq / static_cast<double>(n - 1))) + 1e-6f;
    bool want_finite = true;
    const std::vector<int8_t> want = want_codes(x, rows, cols, mean, denom, p, Rounding::half_even, &want_finite);
    ASSERT_TRUE(want_finite);
    for_both_kernels([&](bool kernels) {
      std::vector<int8_t> got(want.size());
      ASSERT_TRUE(quantize_standardized_transposed(x.data(), rows, cols, mean, denom, p, Rounding::half_even,
                                                   got.data(), /*from_stats=*/true));
      EXPECT_EQ(got, want) << "outlier " << outlier << " kernels " << kernels;
    });
  }
}

}  // namespace
}  // namespace csipose
