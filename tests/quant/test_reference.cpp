// The numeric contract of src/quant/: QuantSpec / QuantParams value types, qparams_from_range and
// the scalar reference (quantize, dequantize, requantize) against hand-computed values, with a
// sweep over bits x granularity x symmetric x signed x odd channel counts.
#include <gtest/gtest.h>

#include <cfenv>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/config_node.h"
#include "common/json.h"
#include "common/rng.h"
#include "quant/quant_spec.h"
#include "quant/reference.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

constexpr Rounding kEven = Rounding::half_even;
constexpr Rounding kAway = Rounding::half_away;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

QuantSpec make_spec(int bits, bool is_signed, bool symmetric, Granularity g, int64_t axis = 0) {
  QuantSpec s;
  s.bits = bits;
  s.is_signed = is_signed;
  s.symmetric = symmetric;
  s.granularity = g;
  s.axis = axis;
  return s;
}

// ---- QuantSpec ---------------------------------------------------------------------------------

TEST(QuantSpec, IntegerRanges) {
  for (int bits = 2; bits <= 8; ++bits) {
    const QuantSpec s = make_spec(bits, true, true, Granularity::per_tensor);
    EXPECT_EQ(s.qmin(), -(int64_t{1} << (bits - 1))) << bits;
    EXPECT_EQ(s.qmax(), (int64_t{1} << (bits - 1)) - 1) << bits;
    const QuantSpec u = make_spec(bits, false, true, Granularity::per_tensor);
    EXPECT_EQ(u.qmin(), 0) << bits;
    EXPECT_EQ(u.qmax(), (int64_t{1} << bits) - 1) << bits;
  }
  EXPECT_EQ(make_spec(8, true, true, Granularity::per_tensor).qmin(), -128);
  EXPECT_EQ(make_spec(8, false, true, Granularity::per_tensor).qmax(), 255);
  EXPECT_EQ(make_spec(2, true, true, Granularity::per_tensor).qmin(), -2);
  EXPECT_EQ(make_spec(2, true, true, Granularity::per_tensor).qmax(), 1);
}

TEST(QuantSpec, NamedDefaults) {
  const QuantSpec w = QuantSpec::weight_default();
  EXPECT_EQ(w.describe(), "int8 per_channel(axis 0) symmetric signed, round half-even");
  const QuantSpec a = QuantSpec::activation_default();
  EXPECT_EQ(a.describe(), "int8 per_tensor affine signed, round half-even");
  EXPECT_EQ(a.qmin(), -128);
  EXPECT_EQ(a.qmax(), 127);
  QuantSpec u = make_spec(4, false, false, Granularity::per_tensor);
  u.rounding = kAway;
  EXPECT_EQ(u.describe(), "uint4 per_tensor affine unsigned, round half-away");
}

TEST(QuantSpec, EnumNames) {
  EXPECT_EQ(parse_granularity("per_channel"), Granularity::per_channel);
  EXPECT_STREQ(to_string(Granularity::per_tensor), "per_tensor");
  EXPECT_EQ(parse_rounding("half_away"), kAway);
  EXPECT_STREQ(to_string(kEven), "half_even");
  EXPECT_EQ(error_of([] { parse_granularity("per_chanel"); }),
            "granularity: unknown value \"per_chanel\"; expected one of: per_tensor, per_channel");
  EXPECT_EQ(error_of([] { parse_rounding("nearest"); }),
            "rounding: unknown value \"nearest\"; expected one of: half_even, half_away");
}

TEST(QuantSpec, FromYamlDefaultsAndRoundTrip) {
  const ConfigNode empty = ConfigNode::load_string("{}", "<test>");
  EXPECT_EQ(QuantSpec::from_yaml(empty), QuantSpec());
  empty.finish();

  const ConfigNode n = ConfigNode::load_string(
      "bits: 4\nsigned: false\nsymmetric: false\ngranularity: per_channel\naxis: 1\nrounding: half_away\n", "<test>");
  const QuantSpec s = QuantSpec::from_yaml(n);
  n.finish();
  EXPECT_EQ(s.bits, 4);
  EXPECT_FALSE(s.is_signed);
  EXPECT_FALSE(s.symmetric);
  EXPECT_EQ(s.granularity, Granularity::per_channel);
  EXPECT_EQ(s.axis, 1);
  EXPECT_EQ(s.rounding, kAway);
  const ConfigNode again = ConfigNode::load_string(s.to_yaml(), "<to_yaml>");
  EXPECT_EQ(QuantSpec::from_yaml(again), s);
  again.finish();
  EXPECT_NE(s, QuantSpec());
}

TEST(QuantSpec, FromYamlErrorsNameKeyAndValue) {
  const ConfigNode bad_bits = ConfigNode::load_string("bits: 9\n", "q.yaml");
  EXPECT_TRUE(contains(error_of([&] { QuantSpec::from_yaml(bad_bits); }), "q.yaml:1: bits:"));
  EXPECT_TRUE(contains(error_of([&] { QuantSpec::from_yaml(bad_bits); }), "9"));
  const ConfigNode bad_gran = ConfigNode::load_string("granularity: per_chanel\n", "q.yaml");
  EXPECT_EQ(error_of([&] { QuantSpec::from_yaml(bad_gran); }),
            "q.yaml:1: granularity: unknown value \"per_chanel\"; expected one of: per_tensor, per_channel");
  const ConfigNode typo = ConfigNode::load_string("bitz: 8\n", "q.yaml");
  QuantSpec::from_yaml(typo);
  EXPECT_TRUE(contains(error_of([&] { typo.finish(); }), "bitz"));
  QuantSpec s;
  s.bits = 1;
  EXPECT_EQ(error_of([&] { s.validate(); }), "QuantSpec: bits = 1 is out of range; expected 2..8");
}

// ---- QuantParams -------------------------------------------------------------------------------

TEST(QuantParams, JsonRoundTripIsExact) {
  QuantParams p;
  p.scale = {0.1f, 3.0f / 255.0f, 1.1920928955078125e-07f};
  p.zero_point = {0, -43, 127};
  p.qmin = -128;
  p.qmax = 127;
  p.axis = 2;
  const QuantParams q = QuantParams::from_json(Json::parse(p.to_json().dump()));
  EXPECT_EQ(q, p);
  EXPECT_TRUE(q.per_channel());
  EXPECT_EQ(q.size(), 3);
}

TEST(QuantParams, ValidateNamesTheBadValue) {
  QuantParams p = QuantParams::per_tensor(0.5f, 3, -128, 127);
  EXPECT_FALSE(p.per_channel());
  p.zero_point = {200};
  EXPECT_EQ(error_of([&] { p.validate(); }), "QuantParams: zero_point[0] = 200 is outside [-128, 127]");
  p.zero_point = {0};
  p.scale = {0.0f};
  EXPECT_EQ(error_of([&] { p.validate(); }), "QuantParams: scale[0] = 0; expected a finite value > 0");
  p.scale = {1.0f, 2.0f};
  p.zero_point = {0, 0};
  EXPECT_TRUE(contains(error_of([&] { p.validate(); }), "per-tensor (axis -1) with 2 scales"));
}

// ---- qparams_from_range: hand-computed ---------------------------------------------------------

TEST(QparamsFromRange, HandComputed) {
  const QuantSpec sym = make_spec(8, true, true, Granularity::per_tensor);
  // int8 symmetric [-1, 2]: amax = 2, scale = 2 / 127, zp = 0; +2 -> 127, -1 -> -63.5 -> -64.
  QuantParams p = qparams_from_range(sym, {-1.0f}, {2.0f});
  EXPECT_EQ(p.scale[0], static_cast<float>(2.0 / 127.0));
  EXPECT_EQ(p.zero_point[0], 0);
  EXPECT_EQ(p.axis, -1);
  EXPECT_EQ(quantize(2.0f, p.scale[0], 0, -128, 127, kEven), 127);

  // uint8 symmetric [-1, 2]: zp = (0 + 255 + 1) / 2 = 128, scale = 2 / (255 - 128) = 2 / 127.
  p = qparams_from_range(make_spec(8, false, true, Granularity::per_tensor), {-1.0f}, {2.0f});
  EXPECT_EQ(p.scale[0], static_cast<float>(2.0 / 127.0));
  EXPECT_EQ(p.zero_point[0], 128);

  // int8 affine [-1, 2]: scale = 3 / 255 = 0.0117647..; -1 / scale = -85.0000 -> -85;
  // zp = -128 - (-85) = -43.
  const QuantSpec aff = make_spec(8, true, false, Granularity::per_tensor);
  p = qparams_from_range(aff, {-1.0f}, {2.0f});
  EXPECT_EQ(p.scale[0], static_cast<float>(3.0 / 255.0));
  EXPECT_EQ(p.zero_point[0], -43);

  // uint8 affine [0.5, 2] -> widened to [0, 2]: scale = 2 / 255, zp = 0 - round(0) = 0.
  p = qparams_from_range(make_spec(8, false, false, Granularity::per_tensor), {0.5f}, {2.0f});
  EXPECT_EQ(p.scale[0], static_cast<float>(2.0 / 255.0));
  EXPECT_EQ(p.zero_point[0], 0);

  // int8 affine [-3, -1] -> widened to [-3, 0]: scale = 3 / 255, zp = -128 - round(-255) = 127.
  p = qparams_from_range(aff, {-3.0f}, {-1.0f});
  EXPECT_EQ(p.scale[0], static_cast<float>(3.0 / 255.0));
  EXPECT_EQ(p.zero_point[0], 127);

  // 4-bit signed symmetric [-0.7, 0.35]: amax 0.7, scale = 0.7 / 7 = 0.1.
  p = qparams_from_range(make_spec(4, true, true, Granularity::per_tensor), {-0.7f}, {0.35f});
  EXPECT_EQ(p.scale[0], static_cast<float>(static_cast<double>(0.7f) / 7.0));
  EXPECT_EQ(p.qmin, -8);
  EXPECT_EQ(p.qmax, 7);

  // per-channel: one entry per channel, axis from the spec.
  p = qparams_from_range(make_spec(8, true, true, Granularity::per_channel, 1), {-1.0f, -0.5f, 0.0f},
                         {1.0f, 0.25f, 0.0f});
  EXPECT_EQ(p.axis, 1);
  ASSERT_EQ(p.size(), 3);
  EXPECT_EQ(p.scale[0], static_cast<float>(1.0 / 127.0));
  EXPECT_EQ(p.scale[1], static_cast<float>(0.5 / 127.0));
  EXPECT_EQ(p.scale[2], static_cast<float>(kMinScale));
}

TEST(QparamsFromRange, AllZeroGivesFiniteScaleAndExactZero) {
  for (const bool symmetric : {true, false})
    for (const bool is_signed : {true, false}) {
      const QuantSpec s = make_spec(8, is_signed, symmetric, Granularity::per_tensor);
      const QuantParams p = qparams_from_range(s, {0.0f}, {0.0f});
      EXPECT_EQ(p.scale[0], static_cast<float>(kMinScale)) << s.describe();
      EXPECT_TRUE(std::isfinite(1.0f / p.scale[0]));
      // Affine all-zero: zp = qmin - round(0) = qmin.
      const int64_t zp = symmetric ? (is_signed ? 0 : 128) : s.qmin();
      EXPECT_EQ(p.zero_point[0], zp) << s.describe();
      EXPECT_EQ(quantize(0.0f, p.scale[0], p.zero_point[0], p.qmin, p.qmax, kEven), zp);
      EXPECT_EQ(dequantize(p.zero_point[0], p.scale[0], p.zero_point[0]), 0.0f);
    }
}

TEST(QparamsFromRange, RejectsBadRanges) {
  const QuantSpec s = make_spec(8, true, false, Granularity::per_tensor);
  EXPECT_EQ(error_of([&] { qparams_from_range(s, {1.0f}, {-1.0f}); }),
            "qparams_from_range: range[0] = [1, -1] has min > max");
  EXPECT_TRUE(contains(error_of([&] { qparams_from_range(s, {std::nanf("")}, {1.0f}); }), "is not finite"));
  EXPECT_TRUE(contains(error_of([&] { qparams_from_range(s, {0.0f, 0.0f}, {1.0f, 1.0f}); }),
                       "with 2 ranges; expected exactly one"));
  EXPECT_TRUE(contains(error_of([&] { qparams_from_range(s, {0.0f}, {1.0f, 1.0f}); }), "1 minima but 2 maxima"));
}

// ---- qparams + reference: the sweep ------------------------------------------------------------

// Properties every (spec, range) must satisfy, for bits 2..8 x per_tensor / per_channel x symmetric /
// affine x signed / unsigned x 1, 7, 33 channels with random (also one-sided and tiny) ranges.
TEST(QuantReference, SweepInvariants) {
  Rng rng(20240611);
  int checked = 0;
  for (int bits = 2; bits <= 8; ++bits)
    for (const Granularity g : {Granularity::per_tensor, Granularity::per_channel})
      for (const bool symmetric : {true, false})
        for (const bool is_signed : {true, false})
          for (const int64_t channels : {1, 7, 33}) {
            if (g == Granularity::per_tensor && channels != 1) continue;
            const QuantSpec s = make_spec(bits, is_signed, symmetric, g);
            std::vector<float> lo(static_cast<size_t>(channels)), hi(static_cast<size_t>(channels));
            for (size_t c = 0; c < lo.size(); ++c) {
              const double kind = rng.uniform();
              const double a = rng.uniform(-5.0, 5.0), b = rng.uniform(-5.0, 5.0);
              lo[c] = static_cast<float>(std::min(a, b));
              hi[c] = static_cast<float>(std::max(a, b));
              if (kind < 0.2) lo[c] = std::fabs(lo[c]) * 0.1f, hi[c] = lo[c] + 3.0f;      // positive only
              else if (kind < 0.3) hi[c] = -std::fabs(hi[c]) * 0.1f, lo[c] = hi[c] - 2.0f;  // negative only
              else if (kind < 0.35) lo[c] = -1e-12f, hi[c] = 1e-12f;                       // tiny
            }
            const QuantParams p = qparams_from_range(s, lo, hi);
            ASSERT_EQ(p.size(), channels);
            EXPECT_EQ(p.qmin, s.qmin());
            EXPECT_EQ(p.qmax, s.qmax());
            for (size_t c = 0; c < lo.size(); ++c) {
              const std::string what = s.describe() + " channel " + std::to_string(c);
              const float sc = p.scale[c];
              const int32_t zp = p.zero_point[c];
              ASSERT_TRUE(std::isfinite(sc) && sc >= static_cast<float>(kMinScale)) << what;
              ASSERT_TRUE(zp >= p.qmin && zp <= p.qmax) << what;
              if (symmetric) {
                EXPECT_EQ(zp, is_signed ? 0 : (p.qmin + p.qmax + 1) / 2) << what;
              }
              // Zero is exactly representable, in both roundings.
              for (const Rounding r : {kEven, kAway}) {
                EXPECT_EQ(quantize(0.0f, sc, zp, p.qmin, p.qmax, r), zp) << what;
                EXPECT_EQ(fake_quantize_value(0.0f, sc, zp, p.qmin, p.qmax, r), 0.0f) << what;
              }
              const double l = std::min(lo[c], 0.0f), h = std::max(hi[c], 0.0f);
              if (h - l < 1e-6) continue;  // scale clamped to kMinScale: the range ends are not mapped
              if (symmetric) {
                // +amax lands exactly on qmax (within the last bit of the float scale: no clamping).
                const double amax = std::max(-l, h);
                EXPECT_NEAR(quantize_unclamped(static_cast<float>(amax), sc, zp, kEven), p.qmax, 0.0) << what;
              } else {
                // The range ends land on qmin / qmax up to the rounding of the zero point.
                EXPECT_LE(std::fabs(quantize_unclamped(static_cast<float>(l), sc, zp, kEven) - p.qmin), 1.0) << what;
                EXPECT_LE(std::fabs(quantize_unclamped(static_cast<float>(h), sc, zp, kEven) - p.qmax), 1.0) << what;
              }
              // Inside the representable range the error is at most half a step.
              const double r0 = sc * static_cast<double>(p.qmin - zp), r1 = sc * static_cast<double>(p.qmax - zp);
              for (int k = 0; k < 20; ++k) {
                const float x = static_cast<float>(rng.uniform(r0, r1));
                const float y = fake_quantize_value(x, sc, zp, p.qmin, p.qmax, kEven);
                EXPECT_LE(std::fabs(static_cast<double>(y) - x), 0.5 * sc * (1.0 + 1e-5)) << what << " x " << x;
                ++checked;
              }
              // Beyond the range: saturation at qmin / qmax.
              EXPECT_EQ(quantize(static_cast<float>(r1 + 10.0 * sc), sc, zp, p.qmin, p.qmax, kEven), p.qmax) << what;
              EXPECT_EQ(quantize(static_cast<float>(r0 - 10.0 * sc), sc, zp, p.qmin, p.qmax, kAway), p.qmin) << what;
            }
          }
  EXPECT_GT(checked, 1000);
}

// quantize_values walks a row-major tensor; each element must use its own channel's parameters.
TEST(QuantReference, TensorHelpersUseTheRightChannel) {
  for (const int64_t channels : {1, 7, 33})
    for (const int64_t axis : {0, 1, 2}) {
      std::vector<int64_t> shape = {2, 3, 5};
      shape[static_cast<size_t>(axis)] = channels;
      QuantParams p;
      p.axis = axis;
      p.qmin = -128;
      p.qmax = 127;
      for (int64_t c = 0; c < channels; ++c) {
        p.scale.push_back(0.01f * static_cast<float>(c + 1));
        p.zero_point.push_back(static_cast<int32_t>(c % 5) - 2);
      }
      const int64_t n = shape[0] * shape[1] * shape[2];
      std::vector<float> x(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) x[static_cast<size_t>(i)] = 0.037f * static_cast<float>(i % 17 - 8);
      const std::vector<int32_t> q = quantize_values(x, shape, p, kEven);
      const std::vector<float> fq = fake_quantize_values(x, shape, p, kEven);
      for (int64_t i0 = 0; i0 < shape[0]; ++i0)
        for (int64_t i1 = 0; i1 < shape[1]; ++i1)
          for (int64_t i2 = 0; i2 < shape[2]; ++i2) {
            const int64_t i = (i0 * shape[1] + i1) * shape[2] + i2;
            const int64_t idx[3] = {i0, i1, i2};
            const auto c = static_cast<size_t>(idx[axis]);
            EXPECT_EQ(channel_of(i, shape, p), idx[axis]);
            const auto k = static_cast<size_t>(i);
            EXPECT_EQ(q[k], quantize(x[k], p.scale[c], p.zero_point[c], -128, 127, kEven));
            EXPECT_EQ(fq[k], dequantize(q[k], p.scale[c], p.zero_point[c]));
          }
    }
  // (1, 2, 3) of a (2, 3, 4) tensor is element 1*12 + 2*4 + 3 = 23, channel 2 along axis 1.
  QuantParams p3;
  p3.axis = 1;
  p3.scale = {1.0f, 1.0f, 1.0f};
  p3.zero_point = {0, 0, 0};
  EXPECT_EQ(channel_of(23, {2, 3, 4}, p3), 2);
  EXPECT_TRUE(contains(error_of([&] { channel_of(0, {2, 4, 4}, p3); }), "4 channels along axis 1"));
}

// ---- quantize / dequantize: ties, saturation, the multiply-by-reciprocal choice ----------------

TEST(QuantReference, HalfTiesUnderBothRoundings) {
  // scale 1 (inv 1) and scale 0.5 (inv 2) are exact, so these are exact ties.
  struct Tie {
    float x;
    int32_t even, away;
  };
  const Tie ties[] = {{0.5f, 0, 1},   {1.5f, 2, 2},   {2.5f, 2, 3},   {-0.5f, 0, -1},
                      {-1.5f, -2, -2}, {-2.5f, -2, -3}, {3.5f, 4, 4},   {-3.5f, -4, -4}};
  for (const Tie& t : ties) {
    EXPECT_EQ(quantize(t.x, 1.0f, 0, -128, 127, kEven), t.even) << t.x;
    EXPECT_EQ(quantize(t.x, 1.0f, 0, -128, 127, kAway), t.away) << t.x;
    EXPECT_EQ(quantize(t.x * 0.5f, 0.5f, 0, -128, 127, kEven), t.even) << t.x;
    // The zero point is added after rounding: the tie is decided on x / scale, not on x / scale + zp.
    EXPECT_EQ(quantize(t.x, 1.0f, 3, -128, 127, kEven), t.even + 3) << t.x;
    EXPECT_EQ(quantize(t.x, 1.0f, 3, -128, 127, kAway), t.away + 3) << t.x;
  }
  // Just below a tie is not a tie: 0.49999997 (the float below 0.5) rounds to 0 in both modes.
  EXPECT_EQ(quantize(0.49999997f, 1.0f, 0, -128, 127, kAway), 0);
  EXPECT_EQ(quantize(-0.49999997f, 1.0f, 0, -128, 127, kAway), 0);
  EXPECT_EQ(round_value(0.5, kEven), 0.0);
  EXPECT_EQ(round_value(-2.5, kAway), -3.0);
}

TEST(QuantReference, MultipliesByTheFloatReciprocal) {
  // scale 0.1f: inv_scale = 1.0f / 0.1f = 10.0f (rounded). x = 1.55f = 1.5499999523f:
  //   x * inv_scale = 15.4999995 -> rounds to float 15.5 exactly -> tie -> even 16 (PyTorch: 16);
  //   x / scale would be 15.499999f -> 15. We follow PyTorch's x * (1.0f / scale).
  EXPECT_EQ(inv_scale_of(0.1f), 10.0f);
  EXPECT_EQ(quantize(1.55f, 0.1f, 0, -128, 127, kEven), 16);
  EXPECT_EQ(std::nearbyint(1.55f / 0.1f), 15.0f);  // the division would disagree
  EXPECT_EQ(quantize(1.9499999f, 0.1f, 0, -128, 127, kEven), 20);
}

TEST(QuantReference, SaturationAndTheSteMask) {
  // int8, scale 0.1, zp 0: representable [-12.8, 12.7].
  EXPECT_EQ(quantize(1000.0f, 0.1f, 0, -128, 127, kEven), 127);
  EXPECT_EQ(quantize(-1000.0f, 0.1f, 0, -128, 127, kEven), -128);
  EXPECT_EQ(quantize(1e30f, 0.1f, 0, -128, 127, kAway), 127);
  // 12.74 * 10 = 127.4 -> 127: in range. 12.76 -> 127.6 -> 128: clamped, out of range.
  EXPECT_TRUE(quantize_in_range(12.74f, 0.1f, 0, -128, 127, kEven));
  EXPECT_FALSE(quantize_in_range(12.76f, 0.1f, 0, -128, 127, kEven));
  EXPECT_EQ(quantize(12.76f, 0.1f, 0, -128, 127, kEven), 127);
  // -12.84 -> -128.4 -> -128 in; -12.86 -> -128.6 -> -129 out.
  EXPECT_TRUE(quantize_in_range(-12.84f, 0.1f, 0, -128, 127, kEven));
  EXPECT_FALSE(quantize_in_range(-12.86f, 0.1f, 0, -128, 127, kEven));
  // With a zero point the clamp is on q: zp -43, scale 1: x = 170 -> 127 in, 171 -> 128 out.
  EXPECT_TRUE(quantize_in_range(170.0f, 1.0f, -43, -128, 127, kEven));
  EXPECT_FALSE(quantize_in_range(171.0f, 1.0f, -43, -128, 127, kEven));
  EXPECT_EQ(quantize(171.0f, 1.0f, -43, -128, 127, kEven), 127);
  EXPECT_EQ(quantize(-86.0f, 1.0f, -43, -128, 127, kEven), -128);  // -86 - 43 = -129 -> -128
  // A tie at the end of the range: 127.5 rounds to 128 (even) -> clamped, out; 126.5 -> 126 in.
  EXPECT_FALSE(quantize_in_range(127.5f, 1.0f, 0, -128, 127, kEven));
  EXPECT_TRUE(quantize_in_range(126.5f, 1.0f, 0, -128, 127, kAway));  // 127 under half-away
  // uint4 [0, 15]: negative values clamp to 0.
  EXPECT_EQ(quantize(-0.3f, 0.1f, 0, 0, 15, kEven), 0);
  EXPECT_EQ(quantize(2.0f, 0.1f, 0, 0, 15, kEven), 15);
}

TEST(QuantReference, Dequantize) {
  // real = scale * (q - zp): 0.5 * (-128 - 3) = -65.5; 0.25 * (127 - (-43)) = 42.5.
  EXPECT_EQ(dequantize(-128, 0.5f, 3), -65.5f);
  EXPECT_EQ(dequantize(127, 0.25f, -43), 42.5f);
  EXPECT_EQ(dequantize(7, 0.1f, 7), 0.0f);
  EXPECT_EQ(dequantize(255, 0.1f, 0), 255.0f * 0.1f);  // one float32 multiply
}

TEST(QuantReference, RejectsNonFiniteInputAndBadScale) {
  EXPECT_EQ(error_of([] { quantize(std::numeric_limits<float>::infinity(), 0.1f, 0, -128, 127, kEven); }),
            "quantize: x = inf is not finite");
  EXPECT_TRUE(contains(error_of([] { quantize(std::nanf(""), 0.1f, 0, -128, 127, kEven); }), "is not finite"));
  EXPECT_EQ(error_of([] { quantize(1.0f, 0.0f, 0, -128, 127, kEven); }),
            "quantize: scale = 0; expected a finite value > 0");
  EXPECT_EQ(error_of([] { quantize(1.0f, 1.0f, 0, 5, 5, kEven); }),
            "quantize: [qmin, qmax] = [5, 5]; expected qmin < qmax within int32");
  EXPECT_EQ(to_int8({-128, 0, 127}), (std::vector<int8_t>{-128, 0, 127}));
  EXPECT_EQ(error_of([] { to_int8({0, 128}); }), "to_int8: value[1] = 128 is outside [-128, 127]");
}

TEST(QuantReference, RoundingModeIsChecked) {
  ASSERT_EQ(std::fesetround(FE_UPWARD), 0);
  const std::string err = error_of([] { round_value(0.5, kEven); });
  std::fesetround(FE_TONEAREST);
  EXPECT_TRUE(contains(err, "not FE_TONEAREST")) << err;
  EXPECT_EQ(round_value(0.5, kEven), 0.0);
}

// ---- requantize: worked examples ---------------------------------------------------------------

TEST(Requantize, WorkedExamples) {
  // acc 1000 + bias 24 = 1024; 1024 * 0.25 = 256 -> clamp 127 (int8); in a wide range 256 + 5.
  EXPECT_EQ(requantize(1000, 24, 0.25f, 0, -128, 127, kEven), 127);
  EXPECT_EQ(requantize(1000, 24, 0.25f, 5, -100000, 100000, kEven), 261);
  // -10 * 0.25 = -2.5: half-even -2, half-away -3; then + zp 5 -> 3 / 2.
  EXPECT_EQ(requantize(-10, 0, 0.25f, 5, -128, 127, kEven), 3);
  EXPECT_EQ(requantize(-10, 0, 0.25f, 5, -128, 127, kAway), 2);
  // -4 + -2 = -6; -6 * 0.25 = -1.5 -> -2 in both modes; + zp -43 -> -45.
  EXPECT_EQ(requantize(-4, -2, 0.25f, -43, -128, 127, kEven), -45);
  EXPECT_EQ(requantize(-4, -2, 0.25f, -43, -128, 127, kAway), -45);
  // 100 * 0.01f = 0.99999998 (float 1.0 after the multiply rounds) -> 1.
  EXPECT_EQ(requantize(100, 0, 0.01f, 0, -128, 127, kEven), 1);
  // Saturation with negative accumulators: -100000 * 0.25 = -25000 -> -128; uint8: -3 * 1 -> 0.
  EXPECT_EQ(requantize(-100000, 0, 0.25f, 0, -128, 127, kEven), -128);
  EXPECT_EQ(requantize(-3, 0, 1.0f, 0, 0, 255, kEven), 0);
  // int32 -> float32 rounds above 2^24: 16777217 becomes 16777216.0f before the multiply.
  EXPECT_EQ(requantize(16777217, 0, 1.0f, 0, INT32_MIN, INT32_MAX, kEven), 16777216);
  // The multiplier is s_in * s_w / s_out in double, rounded to float once: 0.02 * 0.005 / 0.1 = 0.001.
  EXPECT_EQ(requantize_multiplier(0.02, 0.005, 0.1), static_cast<float>(0.02 * 0.005 / 0.1));
  EXPECT_EQ(requantize_multiplier(0.5, 0.25, 2.0), 0.0625f);
}

TEST(Requantize, Errors) {
  EXPECT_EQ(error_of([] { requantize(INT32_MAX, 1, 1.0f, 0, -128, 127, kEven); }),
            "requantize: acc + bias = 2147483647 + 1 = 2147483648 overflows int32");
  EXPECT_EQ(error_of([] { requantize(1, 1, 0.0f, 0, -128, 127, kEven); }),
            "requantize: multiplier = 0; expected a finite value > 0");
  EXPECT_TRUE(contains(error_of([] { requantize_multiplier(0.1, -1.0, 0.1); }), "must be finite and > 0"));
}

}  // namespace
}  // namespace csipose
