// Observers (src/quant/observers.h): exact min/max, hand-computed moving averages, per-channel
// ranges along different axes, histogram percentile / MSE clipping, state round trips, the YAML
// config and factory, and CUDA against CPU.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/config_node.h"
#include "common/json.h"
#include "common/rng.h"
#include "quant/observers.h"
#include "quant/quant_spec.h"
#include "quant/reference.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

torch::Tensor floats(const std::vector<float>& v) { return torch::tensor(v, torch::kFloat); }

QuantSpec per_tensor_spec(bool symmetric) {
  QuantSpec s = QuantSpec::activation_default();
  s.symmetric = symmetric;
  return s;
}

QuantSpec per_channel_spec(int64_t axis) {
  QuantSpec s = QuantSpec::weight_default();
  s.axis = axis;
  return s;
}

std::vector<float> normal_sample(int64_t n, uint64_t seed, double stddev = 1.0) {
  Rng rng(seed);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<float>(rng.normal(0.0, stddev));
  return v;
}

/// Mean squared error of fake-quantizing `x` with `p` (the scalar reference).
double quantization_mse(const std::vector<float>& x, const QuantParams& p) {
  const std::vector<float> y = fake_quantize_values(x, {static_cast<int64_t>(x.size())}, p, Rounding::half_even);
  double sum = 0.0;
  for (size_t i = 0; i < x.size(); ++i) sum += (static_cast<double>(y[i]) - x[i]) * (static_cast<double>(y[i]) - x[i]);
  return sum / static_cast<double>(x.size());
}

// ---- min / max -----------------------------------------------------------------------------------

TEST(MinMaxObserver, ExactRangeOverBatches) {
  MinMaxObserver obs(per_tensor_spec(false));
  EXPECT_TRUE(contains(error_of([&] { obs.range(); }), "no data observed"));
  obs.observe(floats({-1.0f, 3.0f, 2.0f}));
  obs.observe(floats({0.5f, 4.0f}).reshape({2, 1}));
  obs.observe(torch::tensor({-0.25, 1.0}, torch::kDouble));  // any floating dtype
  const ObservedRange r = obs.range();
  EXPECT_EQ(r.min_val, std::vector<float>{-1.0f});
  EXPECT_EQ(r.max_val, std::vector<float>{4.0f});
  EXPECT_EQ(obs.batches(), 3);
  EXPECT_EQ(obs.qparams(), qparams_from_range(obs.spec(), {-1.0f}, {4.0f}));
  obs.reset();
  EXPECT_EQ(obs.batches(), 0);
  EXPECT_TRUE(contains(error_of([&] { obs.range(); }), "no data observed"));
}

TEST(MinMaxObserver, RejectsBadInput) {
  MinMaxObserver obs(per_tensor_spec(true));
  EXPECT_TRUE(contains(error_of([&] { obs.observe(floats({1.0f, NAN})); }),
                       "minmax observer: observed a non-finite value (batch min "));
  EXPECT_TRUE(contains(error_of([&] { obs.observe(torch::zeros({0, 3})); }), "empty tensor of shape [0, 3]"));
  EXPECT_TRUE(contains(error_of([&] { obs.observe(torch::ones({3}, torch::kInt)); }), "expected a floating-point"));
}

TEST(MovingAverageObserver, HandComputedWithConstantHalf) {
  MovingAverageMinMaxObserver obs(per_tensor_spec(false), /*averaging_constant=*/0.5);
  // batch 1 [-2, 4]: sets min -2, max 4.
  obs.observe(floats({-2.0f, 1.0f, 4.0f}));
  EXPECT_EQ(obs.range().min_val[0], -2.0f);
  EXPECT_EQ(obs.range().max_val[0], 4.0f);
  // batch 2 [0, 8]: min = -2 + 0.5 * (0 - -2) = -1;  max = 4 + 0.5 * (8 - 4) = 6.
  obs.observe(floats({0.0f, 8.0f}));
  EXPECT_EQ(obs.range().min_val[0], -1.0f);
  EXPECT_EQ(obs.range().max_val[0], 6.0f);
  // batch 3 [-5, 2]: min = -1 + 0.5 * (-5 - -1) = -3;  max = 6 + 0.5 * (2 - 6) = 4.
  obs.observe(floats({-5.0f, 2.0f}));
  EXPECT_EQ(obs.range().min_val[0], -3.0f);
  EXPECT_EQ(obs.range().max_val[0], 4.0f);
  EXPECT_EQ(obs.qparams(), qparams_from_range(obs.spec(), {-3.0f}, {4.0f}));
  EXPECT_TRUE(contains(error_of([] { MovingAverageMinMaxObserver(QuantSpec(), 0.0); }), "averaging_constant = 0"));
}

TEST(PerChannelObserver, AlongAxisZeroAndOne) {
  // (3, 4) along axis 0: rows.
  PerChannelMinMaxObserver rows(per_channel_spec(0));
  rows.observe(floats({1, -2, 3, 0,   //
                       0, 0, 0, 0,    //
                       -7, 5, 2, 1})
                   .reshape({3, 4}));
  rows.observe(floats({9, 0, 0, 0,  //
                       0, -1, 0, 0,  //
                       0, 0, 0, 0})
                   .reshape({3, 4}));
  EXPECT_EQ(rows.range().min_val, (std::vector<float>{-2, -1, -7}));
  EXPECT_EQ(rows.range().max_val, (std::vector<float>{9, 0, 5}));
  const QuantParams p = rows.qparams();
  EXPECT_EQ(p.axis, 0);
  EXPECT_EQ(p.scale, (std::vector<float>{9.0f / 127, 1.0f / 127, 7.0f / 127}));
  EXPECT_EQ(p.zero_point, (std::vector<int32_t>{0, 0, 0}));

  // (2, 3, 2) along axis 1: x[n][c][k] = (c + 1) * (k ? 1 : -1) * (n + 1) -> channel c spans
  // [-2 (c + 1), 2 (c + 1)].
  PerChannelMinMaxObserver mid(per_channel_spec(1));
  torch::Tensor x = torch::zeros({2, 3, 2});
  for (int n = 0; n < 2; ++n)
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 2; ++k) x[n][c][k] = static_cast<float>((c + 1) * (k ? 1 : -1) * (n + 1));
  mid.observe(x);
  EXPECT_EQ(mid.range().min_val, (std::vector<float>{-2, -4, -6}));
  EXPECT_EQ(mid.range().max_val, (std::vector<float>{2, 4, 6}));
  EXPECT_EQ(error_of([&] { mid.observe(torch::zeros({2, 5})); }),
            "per_channel_minmax observer: tensor of shape [2, 5] has 5 channels along axis 1; earlier tensors had 3");
  EXPECT_TRUE(contains(error_of([&] { PerChannelMinMaxObserver(per_channel_spec(3)).observe(torch::zeros({2, 2})); }),
                       "axis 3 is out of range"));
}

// ---- histogram -----------------------------------------------------------------------------------

TEST(HistogramObserver, PercentileClipsAnOutlier) {
  std::vector<float> x = normal_sample(20000, 1);
  x.push_back(1000.0f);
  HistogramObserver obs(per_tensor_spec(false), /*bins=*/2048, HistogramMethod::percentile, /*percentile=*/99.99);
  obs.observe(floats(x));
  EXPECT_EQ(obs.observed_max(), 1000.0f);
  const ObservedRange r = obs.range();
  // 99.99% of 20001 values: the top 2 are clipped, so the range ends near the normal's +-3.9
  // (within a bin of 1004 / 2048 = 0.49), nowhere near 1000.
  EXPECT_GT(r.max_val[0], 2.5f);
  EXPECT_LT(r.max_val[0], 6.0f);
  EXPECT_LT(r.min_val[0], -2.5f);
  EXPECT_GT(r.min_val[0], -6.0f);
  // percentile 100 keeps the observed range.
  HistogramObserver all(per_tensor_spec(false), 2048, HistogramMethod::percentile, 100.0);
  all.observe(floats(x));
  EXPECT_EQ(all.range().min_val[0], obs.observed_min());
  EXPECT_EQ(all.range().max_val[0], 1000.0f);
}

TEST(HistogramObserver, MseSearchBeatsMinMaxOnHeavyTails) {
  // Student-t with 3 degrees of freedom: normal / sqrt(chi2_3 / 3); a few values reach +-30.
  Rng rng(3);
  std::vector<float> x(30000);
  for (auto& v : x) {
    double chi2 = 0.0;
    for (int k = 0; k < 3; ++k) {
      const double z = rng.normal();
      chi2 += z * z;
    }
    v = static_cast<float>(rng.normal() / std::sqrt(chi2 / 3.0));
  }
  for (const bool symmetric : {true, false}) {
    const QuantSpec spec = per_tensor_spec(symmetric);
    HistogramObserver hist(spec, 2048, HistogramMethod::mse);
    MinMaxObserver minmax(spec);
    for (int b = 0; b < 3; ++b) {  // three batches: the histogram is re-binned as the range grows
      const auto part = std::vector<float>(x.begin() + b * 10000, x.begin() + (b + 1) * 10000);
      hist.observe(floats(part));
      minmax.observe(floats(part));
    }
    const ObservedRange h = hist.range(), m = minmax.range();
    EXPECT_GE(h.min_val[0], m.min_val[0]) << spec.describe();
    EXPECT_LE(h.max_val[0], m.max_val[0]) << spec.describe();
    EXPECT_LT(h.max_val[0] - h.min_val[0], m.max_val[0] - m.min_val[0]) << spec.describe();
    const double mse_hist = quantization_mse(x, hist.qparams());
    const double mse_minmax = quantization_mse(x, minmax.qparams());
    EXPECT_LT(mse_hist, mse_minmax) << spec.describe() << ": range [" << h.min_val[0] << ", " << h.max_val[0]
                                    << "] vs [" << m.min_val[0] << ", " << m.max_val[0] << "]";
    // The objective agrees: the chosen range has lower expected error than the full range.
    EXPECT_LT(hist.expected_error(h.min_val[0], h.max_val[0]), hist.expected_error(m.min_val[0], m.max_val[0]));
    if (symmetric) {
      // Near the best of 100 clip ranges [-t, t] scored by their actual error on the sample itself.
      const double amax = std::max(-m.min_val[0], m.max_val[0]);
      double best = INFINITY;
      for (int k = 1; k <= 100; ++k) {
        const auto t = static_cast<float>(amax * k / 100.0);
        best = std::min(best, quantization_mse(x, qparams_from_range(spec, {-t}, {t})));
      }
      EXPECT_LT(mse_hist, 1.02 * best) << "best of the grid " << best;
    }
  }
}

TEST(HistogramObserver, RebinningKeepsEveryCount) {
  HistogramObserver obs(per_tensor_spec(false), 64, HistogramMethod::mse);
  obs.observe(torch::zeros({10}));  // all zeros: a point mass at 0
  EXPECT_EQ(obs.qparams().scale[0], static_cast<float>(kMinScale));
  obs.observe(torch::linspace(0.0, 1.0, 11));
  obs.observe(torch::linspace(-2.0, 3.0, 50));
  obs.observe(torch::linspace(5.0, 10.0, 29));
  double total = 0.0;
  for (double c : obs.counts()) total += c;
  EXPECT_NEAR(total, 10 + 11 + 50 + 29, 1e-9);
  EXPECT_EQ(obs.observed_min(), -2.0f);
  EXPECT_EQ(obs.observed_max(), 10.0f);
  const ObservedRange r = obs.range();
  EXPECT_GE(r.min_val[0], -2.0f);
  EXPECT_LE(r.max_val[0], 10.0f);
}

// ---- state round trips -----------------------------------------------------------------------------

TEST(Observers, StateRoundTripThenContinueIdentically) {
  struct Kind {
    ObserverConfig config;
    QuantSpec spec;
  };
  ObserverConfig ma;
  ma.type = ObserverType::moving_average;
  ma.averaging_constant = 0.3;
  ObserverConfig pc;
  pc.type = ObserverType::per_channel_minmax;
  ObserverConfig hp;
  hp.type = ObserverType::histogram;
  hp.bins = 128;
  hp.method = HistogramMethod::percentile;
  hp.percentile = 99.0;
  ObserverConfig hm = hp;
  hm.method = HistogramMethod::mse;
  const std::vector<Kind> kinds = {{ObserverConfig(), per_tensor_spec(false)},
                                   {ma, per_tensor_spec(false)},
                                   {pc, per_channel_spec(1)},
                                   {hp, per_tensor_spec(true)},
                                   {hm, per_tensor_spec(false)}};
  const std::vector<float> a = normal_sample(3 * 7 * 5, 11), b = normal_sample(3 * 7 * 5, 12, 3.0),
                           c = normal_sample(3 * 7 * 5, 13, 0.5);
  for (const Kind& k : kinds) {
    std::unique_ptr<Observer> first = make_observer(k.config, k.spec);
    first->observe(floats(a).reshape({3, 7, 5}));
    first->observe(floats(b).reshape({3, 7, 5}));
    const std::string saved = first->state().dump();
    std::unique_ptr<Observer> second = make_observer(k.config, k.spec);
    second->load_state(Json::parse(saved));
    EXPECT_EQ(second->state().dump(), saved) << to_string(k.config.type);
    EXPECT_EQ(second->batches(), 2);
    EXPECT_EQ(second->qparams(), first->qparams()) << to_string(k.config.type);
    first->observe(floats(c).reshape({3, 7, 5}));
    second->observe(floats(c).reshape({3, 7, 5}));
    EXPECT_EQ(second->range().min_val, first->range().min_val) << to_string(k.config.type);
    EXPECT_EQ(second->range().max_val, first->range().max_val) << to_string(k.config.type);
    EXPECT_EQ(second->state().dump(), first->state().dump()) << to_string(k.config.type);
  }
  // A state from another type or spec is refused with both named.
  MinMaxObserver minmax(per_tensor_spec(false));
  minmax.observe(floats(a));
  HistogramObserver hist(per_tensor_spec(false));
  EXPECT_EQ(error_of([&] { hist.load_state(minmax.state()); }),
            "histogram observer: load_state got the state of a \"minmax\" observer");
  MinMaxObserver other(per_tensor_spec(true));
  EXPECT_EQ(error_of([&] { other.load_state(minmax.state()); }),
            "minmax observer: state was saved for spec \"int8 per_tensor affine signed, round half-even\" but this "
            "observer quantizes to \"int8 per_tensor symmetric signed, round half-even\"");
}

// ---- config and factory --------------------------------------------------------------------------

TEST(ObserverConfig, FromYamlToYamlAndFactory) {
  const ConfigNode n = ConfigNode::load_string("type: histogram\nbins: 512\nmethod: percentile\npercentile: 99.9\n",
                                               "obs.yaml");
  const ObserverConfig c = ObserverConfig::from_yaml(n);
  n.finish();
  EXPECT_EQ(c.type, ObserverType::histogram);
  EXPECT_EQ(c.bins, 512);
  EXPECT_EQ(c.method, HistogramMethod::percentile);
  EXPECT_EQ(c.percentile, 99.9);
  const ConfigNode again = ConfigNode::load_string(c.to_yaml(), "<to_yaml>");
  EXPECT_EQ(ObserverConfig::from_yaml(again), c);
  again.finish();
  for (const char* type : {"minmax", "moving_average", "per_channel_minmax", "histogram"}) {
    const ConfigNode t = ConfigNode::load_string(std::string("type: ") + type + "\n", "obs.yaml");
    const ObserverConfig oc = ObserverConfig::from_yaml(t);
    t.finish();
    EXPECT_STREQ(to_string(oc.type), type);
    const QuantSpec spec = oc.type == ObserverType::per_channel_minmax ? per_channel_spec(0) : per_tensor_spec(false);
    EXPECT_EQ(make_observer(oc, spec)->type(), oc.type);
  }
}

TEST(ObserverConfig, ErrorsListNamesAndKeys) {
  const ConfigNode bad = ConfigNode::load_string("type: minmix\n", "obs.yaml");
  EXPECT_EQ(error_of([&] { ObserverConfig::from_yaml(bad); }),
            "obs.yaml:1: type: unknown value \"minmix\"; expected one of: minmax, moving_average, "
            "per_channel_minmax, histogram");
  EXPECT_EQ(error_of([] { parse_observer_type("minmix"); }),
            "observer type: unknown value \"minmix\"; expected one of: minmax, moving_average, per_channel_minmax, "
            "histogram");
  // A key of another observer type is unknown for this one.
  const ConfigNode stray = ConfigNode::load_string("type: minmax\nbins: 100\n", "obs.yaml");
  ObserverConfig::from_yaml(stray);
  EXPECT_TRUE(contains(error_of([&] { stray.finish(); }), "bins"));
  const ConfigNode zero = ConfigNode::load_string("type: moving_average\naveraging_constant: 0\n", "obs.yaml");
  EXPECT_TRUE(contains(error_of([&] { ObserverConfig::from_yaml(zero); }), "averaging_constant = 0 must be in (0, 1]"));

  ObserverConfig pc;
  pc.type = ObserverType::per_channel_minmax;
  EXPECT_EQ(error_of([&] { make_observer(pc, per_tensor_spec(false)); }),
            "make_observer: observer \"per_channel_minmax\" produces per_channel parameters but the spec is int8 "
            "per_tensor affine signed, round half-even; use a per_channel spec");
  EXPECT_TRUE(contains(error_of([&] { make_observer(ObserverConfig(), per_channel_spec(0)); }),
                       "use per_channel_minmax for per_channel specs"));
}

// ---- CUDA ------------------------------------------------------------------------------------------

TEST(Observers, CudaMatchesCpu_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device cuda(torch::kCUDA, 0);
  const torch::Tensor x = floats(normal_sample(4 * 33 * 9, 21, 2.0)).reshape({4, 33, 9});
  MinMaxObserver cpu_mm(per_tensor_spec(false)), gpu_mm(per_tensor_spec(false));
  PerChannelMinMaxObserver cpu_pc(per_channel_spec(1)), gpu_pc(per_channel_spec(1));
  HistogramObserver cpu_h(per_tensor_spec(false), 256), gpu_h(per_tensor_spec(false), 256);
  cpu_mm.observe(x);
  gpu_mm.observe(x.to(cuda));
  cpu_pc.observe(x);
  gpu_pc.observe(x.to(cuda));
  cpu_h.observe(x);
  gpu_h.observe(x.to(cuda));
  EXPECT_EQ(gpu_mm.qparams(), cpu_mm.qparams());
  EXPECT_EQ(gpu_pc.qparams(), cpu_pc.qparams());
  double cpu_total = 0.0, gpu_total = 0.0;
  for (double c : cpu_h.counts()) cpu_total += c;
  for (double c : gpu_h.counts()) gpu_total += c;
  EXPECT_EQ(gpu_total, cpu_total);
  // Bin assignment of values on a bin edge may differ between the CPU and CUDA histc.
  const double width = (cpu_h.observed_max() - cpu_h.observed_min()) / 256.0;
  EXPECT_NEAR(gpu_h.range().min_val[0], cpu_h.range().min_val[0], 2 * width);
  EXPECT_NEAR(gpu_h.range().max_val[0], cpu_h.range().max_val[0], 2 * width);
}

}  // namespace
}  // namespace csipose
