#pragma once
// Observers: accumulate the range of the tensors they see (activations during calibration / QAT,
// weights at every step) and turn it into QuantParams with qparams_from_range. Reductions run on
// the tensor's device (CPU or CUDA); only a few scalars, or one histogram, come to the host.
//
//   minmax              running min / max                                   per-tensor
//   moving_average      min += c * (batch_min - min), same for max          per-tensor (QAT activations)
//   per_channel_minmax  running min / max per slice along spec.axis         per-channel (weights)
//   histogram           2048-bin histogram; clip range by percentile or by  per-tensor (PTQ)
//                       minimizing the expected quantization error (mse)
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "quant/quant_spec.h"

namespace csipose {
class ConfigNode;

enum class ObserverType { minmax, moving_average, per_channel_minmax, histogram };
const char* to_string(ObserverType t);
/// "minmax" | "moving_average" | "per_channel_minmax" | "histogram"; throws listing the names.
ObserverType parse_observer_type(const std::string& text);

/// How the histogram observer picks its clip range.
///   percentile: the (100 - p)th and pth percentiles of the observed values;
///   mse:        the range minimizing the expected squared error of quantizing the histogram,
///               rounding noise (scale^2 / 12 per value inside) plus clipping error (outside).
enum class HistogramMethod { percentile, mse };
const char* to_string(HistogramMethod m);
HistogramMethod parse_histogram_method(const std::string& text);

/// Which observer and its knobs. The granularity and channel axis come from the QuantSpec the
/// observer is made with, so the two cannot disagree.
struct ObserverConfig {
  ObserverType type = ObserverType::minmax;
  /// moving_average: weight of the newest batch's range, in (0, 1] (PyTorch's default 0.01).
  double averaging_constant = 0.01;
  /// histogram: number of bins over the observed range, >= 16.
  int64_t bins = 2048;
  /// histogram: clip-range method.
  HistogramMethod method = HistogramMethod::mse;
  /// histogram, percentile method: the upper percentile in (50, 100]; the lower is 100 - p.
  double percentile = 99.99;

  /// Reads `type` and only that type's keys (so `bins:` under `type: minmax` is an unknown key at
  /// node.finish()). Does NOT call node.finish().
  static ObserverConfig from_yaml(const ConfigNode& node);
  /// `type:` and that type's keys, readable by from_yaml.
  std::string to_yaml() const;
  /// Throws csipose::Error naming the field and value for an impossible setting.
  void validate() const;
  bool operator==(const ObserverConfig& o) const;
  bool operator!=(const ObserverConfig& o) const { return !(*this == o); }
};

/// The range an observer hands to qparams_from_range: one entry per tensor or per channel.
struct ObservedRange {
  std::vector<float> min_val;
  std::vector<float> max_val;
};

class Observer {
 public:
  explicit Observer(const QuantSpec& spec);
  virtual ~Observer() = default;
  Observer(const Observer&) = delete;
  Observer& operator=(const Observer&) = delete;

  /// Accumulates x (any floating dtype and device, at least one element, no autograd). Throws for
  /// non-finite values, naming the observer.
  virtual void observe(const torch::Tensor& x) = 0;
  /// The range to quantize; throws when nothing has been observed.
  virtual ObservedRange range() const = 0;
  /// qparams_from_range(spec(), range()).
  virtual QuantParams qparams() const;
  /// Everything observed so far, for checkpoints: {"type", "spec", "batches", ...}.
  virtual Json state() const = 0;
  /// Restores state(); throws when it was saved by another observer type or spec.
  virtual void load_state(const Json& state) = 0;
  /// Forgets everything observed.
  virtual void reset() = 0;
  virtual ObserverType type() const = 0;

  const QuantSpec& spec() const { return spec_; }
  /// Number of observe() calls since construction or reset().
  int64_t batches() const { return batches_; }

 protected:
  /// {"type", "spec", "batches"}: the common part of state().
  Json state_header() const;
  /// Checks type and spec of a saved state and restores `batches`.
  void load_state_header(const Json& state);
  [[noreturn]] void fail_empty() const;

  QuantSpec spec_;
  int64_t batches_ = 0;
};

/// Running min / max over everything observed.
class MinMaxObserver : public Observer {
 public:
  explicit MinMaxObserver(const QuantSpec& spec);
  void observe(const torch::Tensor& x) override;
  ObservedRange range() const override;
  Json state() const override;
  void load_state(const Json& state) override;
  void reset() override;
  ObserverType type() const override { return ObserverType::minmax; }

 private:
  float min_ = 0.0f, max_ = 0.0f;
};

/// Exponential moving average of each batch's min and max; the first batch sets them. The update
/// is float32, as PyTorch's: min = min + c * (batch_min - min).
class MovingAverageMinMaxObserver : public Observer {
 public:
  MovingAverageMinMaxObserver(const QuantSpec& spec, double averaging_constant = 0.01);
  void observe(const torch::Tensor& x) override;
  ObservedRange range() const override;
  Json state() const override;
  void load_state(const Json& state) override;
  void reset() override;
  ObserverType type() const override { return ObserverType::moving_average; }
  double averaging_constant() const { return averaging_constant_; }

 private:
  double averaging_constant_;
  float min_ = 0.0f, max_ = 0.0f;
};

/// Running min / max of every slice along spec.axis (spec must be per_channel); the channel count
/// is fixed by the first tensor.
class PerChannelMinMaxObserver : public Observer {
 public:
  explicit PerChannelMinMaxObserver(const QuantSpec& spec);
  void observe(const torch::Tensor& x) override;
  ObservedRange range() const override;
  Json state() const override;
  void load_state(const Json& state) override;
  void reset() override;
  ObserverType type() const override { return ObserverType::per_channel_minmax; }
  int64_t axis() const { return spec_.axis; }

 private:
  std::vector<float> min_, max_;
};

/// A histogram over [lo, hi], the observed range widened to include 0 (the quantized range always
/// contains 0, so no clip range can exclude it). Batches are binned on their device with
/// torch::histc; when a batch widens the range, the old counts are spread over the new bins in
/// proportion to overlap (uniform density within a bin). An all-zero history is a point mass at 0.
class HistogramObserver : public Observer {
 public:
  HistogramObserver(const QuantSpec& spec, int64_t bins = 2048, HistogramMethod method = HistogramMethod::mse,
                    double percentile = 99.99);
  void observe(const torch::Tensor& x) override;
  /// The clip range chosen by the method, always inside the observed [min, max].
  ObservedRange range() const override;
  Json state() const override;
  void load_state(const Json& state) override;
  void reset() override;
  ObserverType type() const override { return ObserverType::histogram; }

  /// The expected squared quantization error per value of the histogram when quantizing with the
  /// clip range [lo, hi] under spec() (the mse method's objective; public for tests).
  double expected_error(double lo, double hi) const;
  /// The observed min and max (not clipped).
  float observed_min() const { return min_; }
  float observed_max() const { return max_; }
  const std::vector<double>& counts() const { return counts_; }

 private:
  void rebin(double new_lo, double new_hi);
  ObservedRange percentile_range() const;
  ObservedRange mse_range() const;
  double edge(int64_t i) const { return lo_ + (hi_ - lo_) * static_cast<double>(i) / static_cast<double>(bins_); }

  int64_t bins_;
  HistogramMethod method_;
  double percentile_;
  float min_ = 0.0f, max_ = 0.0f;  // observed
  double lo_ = 0.0, hi_ = 0.0;     // histogram range, lo_ <= 0 <= hi_
  // range() of the current histogram: the mse search is O(bins^2), and a frozen observer is asked
  // for its qparams on every forward. Cleared by observe, reset and load_state.
  mutable std::optional<ObservedRange> range_cache_;
  std::vector<double> counts_;
};

/// The observer for `config` quantizing to `spec`, from one explicit table. per_channel_minmax
/// needs a per_channel spec and the others a per_tensor spec (csipose::Error otherwise).
std::unique_ptr<Observer> make_observer(const ObserverConfig& config, const QuantSpec& spec);

}  // namespace csipose
