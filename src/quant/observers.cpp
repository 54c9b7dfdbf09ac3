#include "quant/observers.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <utility>

#include "common/check.h"
#include "common/config_node.h"

namespace csipose {
namespace {

// ---- the one table of observer types -----------------------------------------------------------

struct ObserverEntry {
  const char* name;
  ObserverType type;
  Granularity granularity;  // the spec granularity this observer produces
  std::unique_ptr<Observer> (*make)(const ObserverConfig&, const QuantSpec&);
};

const ObserverEntry kObservers[] = {
    {"minmax", ObserverType::minmax, Granularity::per_tensor,
     [](const ObserverConfig&, const QuantSpec& s) -> std::unique_ptr<Observer> {
       return std::make_unique<MinMaxObserver>(s);
     }},
    {"moving_average", ObserverType::moving_average, Granularity::per_tensor,
     [](const ObserverConfig& c, const QuantSpec& s) -> std::unique_ptr<Observer> {
       return std::make_unique<MovingAverageMinMaxObserver>(s, c.averaging_constant);
     }},
    {"per_channel_minmax", ObserverType::per_channel_minmax, Granularity::per_channel,
     [](const ObserverConfig&, const QuantSpec& s) -> std::unique_ptr<Observer> {
       return std::make_unique<PerChannelMinMaxObserver>(s);
     }},
    {"histogram", ObserverType::histogram, Granularity::per_tensor,
     [](const ObserverConfig& c, const QuantSpec& s) -> std::unique_ptr<Observer> {
       return std::make_unique<HistogramObserver>(s, c.bins, c.method, c.percentile);
     }},
};

std::string observer_names() {
  std::string names;
  for (const auto& e : kObservers) names += (names.empty() ? "" : ", ") + std::string(e.name);
  return names;
}

const ObserverEntry& entry_of(ObserverType t) {
  for (const auto& e : kObservers)
    if (e.type == t) return e;
  fail("observer: unknown type ", static_cast<int>(t));
}

constexpr std::initializer_list<std::pair<const char*, HistogramMethod>> kMethodNames = {
    {"percentile", HistogramMethod::percentile}, {"mse", HistogramMethod::mse}};

// ---- device reductions -------------------------------------------------------------------------

/// x detached, checked to be a non-empty floating tensor.
torch::Tensor checked_input(const torch::Tensor& x, const char* who) {
  CSIPOSE_CHECK(x.defined(), who, ": observe() got an undefined tensor");
  CSIPOSE_CHECK(x.is_floating_point(), who, ": observe() got a tensor of dtype ", x.scalar_type(),
                "; expected a floating-point tensor");
  CSIPOSE_CHECK(x.numel() > 0, who, ": observe() got an empty tensor of shape ", x.sizes());
  return x.detach();
}

/// min and max of x, reduced on its device; two floats come to the host in one copy.
std::pair<float, float> device_minmax(const torch::Tensor& x, const char* who) {
  const torch::Tensor mm = torch::stack({x.min(), x.max()}).to(torch::kFloat).to(torch::kCPU);
  const float lo = mm[0].item<float>();
  const float hi = mm[1].item<float>();
  CSIPOSE_CHECK(std::isfinite(lo) && std::isfinite(hi), who, ": observed a non-finite value (batch min ", lo,
                ", max ", hi, ")");
  return {lo, hi};
}

std::vector<float> float_list(const Json& j) {
  std::vector<float> v;
  for (const Json& e : j.elements()) v.push_back(static_cast<float>(e.as_double()));
  return v;
}

}  // namespace

const char* to_string(ObserverType t) { return entry_of(t).name; }

ObserverType parse_observer_type(const std::string& text) {
  for (const auto& e : kObservers)
    if (text == e.name) return e.type;
  fail("observer type: unknown value \"", text, "\"; expected one of: ", observer_names());
}

const char* to_string(HistogramMethod m) {
  switch (m) {
    case HistogramMethod::percentile: return "percentile";
    case HistogramMethod::mse: return "mse";
  }
  return "?";
}

HistogramMethod parse_histogram_method(const std::string& text) {
  return parse_enum<HistogramMethod>("method", text, kMethodNames);
}

// ---- ObserverConfig ----------------------------------------------------------------------------

ObserverConfig ObserverConfig::from_yaml(const ConfigNode& n) {
  ObserverConfig c;
  const std::string type = n.get<std::string>("type");
  bool known = false;
  for (const auto& e : kObservers)
    if (type == e.name) c.type = e.type, known = true;
  if (!known) n.error("type", "unknown value \"" + type + "\"; expected one of: " + observer_names());
  switch (c.type) {
    case ObserverType::moving_average:
      c.averaging_constant = n.get_double("averaging_constant", c.averaging_constant, 0.0, 1.0);
      if (c.averaging_constant <= 0.0)
        n.error("averaging_constant", str_cat("averaging_constant = ", c.averaging_constant, " must be in (0, 1]"));
      break;
    case ObserverType::histogram:
      c.bins = n.get_int("bins", c.bins, 16, int64_t{1} << 20);
      c.method = n.get_enum<HistogramMethod>("method", c.method, kMethodNames);
      c.percentile = n.get_double("percentile", c.percentile, 50.0, 100.0);
      if (c.percentile <= 50.0) n.error("percentile", str_cat("percentile = ", c.percentile, " must be in (50, 100]"));
      break;
    case ObserverType::minmax:
    case ObserverType::per_channel_minmax:
      break;
  }
  return c;
}

std::string ObserverConfig::to_yaml() const {
  std::ostringstream o;
  o.precision(17);
  o << "type: " << to_string(type) << "\n";
  if (type == ObserverType::moving_average) o << "averaging_constant: " << averaging_constant << "\n";
  if (type == ObserverType::histogram)
    o << "bins: " << bins << "\n"
      << "method: " << to_string(method) << "\n"
      << "percentile: " << percentile << "\n";
  return o.str();
}

void ObserverConfig::validate() const {
  entry_of(type);
  CSIPOSE_CHECK(averaging_constant > 0.0 && averaging_constant <= 1.0, "ObserverConfig: averaging_constant = ",
                averaging_constant, "; expected a value in (0, 1]");
  CSIPOSE_CHECK(bins >= 16, "ObserverConfig: bins = ", bins, "; expected >= 16");
  CSIPOSE_CHECK(percentile > 50.0 && percentile <= 100.0, "ObserverConfig: percentile = ", percentile,
                "; expected a value in (50, 100]");
}

bool ObserverConfig::operator==(const ObserverConfig& o) const {
  return type == o.type && averaging_constant == o.averaging_constant && bins == o.bins && method == o.method &&
         percentile == o.percentile;
}

std::unique_ptr<Observer> make_observer(const ObserverConfig& config, const QuantSpec& spec) {
  config.validate();
  spec.validate();
  const ObserverEntry& e = entry_of(config.type);
  CSIPOSE_CHECK(spec.granularity == e.granularity, "make_observer: observer \"", e.name, "\" produces ",
                to_string(e.granularity), " parameters but the spec is ", spec.describe(),
                e.granularity == Granularity::per_channel ? "; use a per_channel spec"
                                                          : "; use per_channel_minmax for per_channel specs");
  return e.make(config, spec);
}

// ---- Observer ----------------------------------------------------------------------------------

Observer::Observer(const QuantSpec& spec) : spec_(spec) { spec_.validate(); }

QuantParams Observer::qparams() const {
  const ObservedRange r = range();
  return qparams_from_range(spec_, r.min_val, r.max_val);
}

Json Observer::state_header() const {
  Json j = Json::object();
  j.set("type", to_string(type()));
  j.set("spec", spec_.describe());
  j.set("batches", batches_);
  return j;
}

void Observer::load_state_header(const Json& state) {
  CSIPOSE_CHECK(state.is_object(), to_string(type()), " observer: load_state expected a JSON object");
  const std::string& t = state.at("type").as_string();
  CSIPOSE_CHECK(t == to_string(type()), to_string(type()), " observer: load_state got the state of a \"", t,
                "\" observer");
  const std::string& s = state.at("spec").as_string();
  CSIPOSE_CHECK(s == spec_.describe(), to_string(type()), " observer: state was saved for spec \"", s,
                "\" but this observer quantizes to \"", spec_.describe(), "\"");
  const int64_t b = state.at("batches").as_int();
  CSIPOSE_CHECK(b >= 0, to_string(type()), " observer: batches = ", b, " in the saved state; expected >= 0");
  batches_ = b;
}

void Observer::fail_empty() const {
  fail(to_string(type()), " observer (", spec_.describe(), "): no data observed; run calibration first");
}

// ---- MinMaxObserver ----------------------------------------------------------------------------

MinMaxObserver::MinMaxObserver(const QuantSpec& spec) : Observer(spec) {}

void MinMaxObserver::observe(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  const auto [lo, hi] = device_minmax(checked_input(x, "minmax observer"), "minmax observer");
  min_ = batches_ == 0 ? lo : std::min(min_, lo);
  max_ = batches_ == 0 ? hi : std::max(max_, hi);
  ++batches_;
}

ObservedRange MinMaxObserver::range() const {
  if (batches_ == 0) fail_empty();
  return {{min_}, {max_}};
}

Json MinMaxObserver::state() const {
  Json j = state_header();
  j.set("min", min_);
  j.set("max", max_);
  return j;
}

void MinMaxObserver::load_state(const Json& state) {
  load_state_header(state);
  min_ = static_cast<float>(state.at("min").as_double());
  max_ = static_cast<float>(state.at("max").as_double());
}

void MinMaxObserver::reset() {
  batches_ = 0;
  min_ = max_ = 0.0f;
}

// ---- MovingAverageMinMaxObserver ---------------------------------------------------------------

MovingAverageMinMaxObserver::MovingAverageMinMaxObserver(const QuantSpec& spec, double averaging_constant)
    : Observer(spec), averaging_constant_(averaging_constant) {
  CSIPOSE_CHECK(averaging_constant > 0.0 && averaging_constant <= 1.0,
                "moving_average observer: averaging_constant = ", averaging_constant, "; expected a value in (0, 1]");
}

void MovingAverageMinMaxObserver::observe(const torch::Tensor& x) {
  torch::NoGradGuard no_grad;
  const auto [lo, hi] = device_minmax(checked_input(x, "moving_average observer"), "moving_average observer");
  if (batches_ == 0) {
    min_ = lo;
    max_ = hi;
  } else {
    const auto c = static_cast<float>(averaging_constant_);
    min_ = min_ + c * (lo - min_);  // float32, as PyTorch's MovingAverageMinMaxObserver
    max_ = max_ + c * (hi - max_);
  }
  ++batches_;
}

ObservedRange MovingAverageMinMaxObserver::range() const {
  if (batches_ == 0) fail_empty();
  return {{min_}, {max_}};
}

Json MovingAverageMinMaxObserver::state() const {
  Json j = state_header();
  j.set("averaging_constant", averaging_constant_);
  j.set("min", min_);
  j.set("max", max_);
  return j;
}

void MovingAverageMinMaxObserver::load_state(const Json& state) {
  load_state_header(state);
  const double c = state.at("averaging_constant").as_double();
  CSIPOSE_CHECK(c == averaging_constant_, "moving_average observer: state has averaging_constant ", c,
                " but this observer uses ", averaging_constant_);
  min_ = static_cast<float>(state.at("min").as_double());
  max_ = static_cast<float>(state.at("max").as_double());
}

void MovingAverageMinMaxObserver::reset() {
  batches_ = 0;
  min_ = max_ = 0.0f;
}

// ---- PerChannelMinMaxObserver ------------------------------------------------------------------

PerChannelMinMaxObserver::PerChannelMinMaxObserver(const QuantSpec& spec) : Observer(spec) {
  CSIPOSE_CHECK(spec.granularity == Granularity::per_channel,
                "per_channel_minmax observer: needs a per_channel spec, got ", spec.describe());
}

void PerChannelMinMaxObserver::observe(const torch::Tensor& x_in) {
  torch::NoGradGuard no_grad;
  const torch::Tensor x = checked_input(x_in, "per_channel_minmax observer");
  const int64_t axis = spec_.axis;
  CSIPOSE_CHECK(axis < x.dim(), "per_channel_minmax observer: axis ", axis, " is out of range for a tensor of shape ",
                x.sizes());
  const int64_t channels = x.size(axis);
  CSIPOSE_CHECK(batches_ == 0 || channels == static_cast<int64_t>(min_.size()),
                "per_channel_minmax observer: tensor of shape ", x.sizes(), " has ", channels, " channels along axis ",
                axis, "; earlier tensors had ", min_.size());
  // (C, rest) on the device, per-row min and max, one (2, C) copy to the host.
  const torch::Tensor rows = x.transpose(0, axis).reshape({channels, -1});
  const torch::Tensor mm =
      torch::stack({torch::amin(rows, 1), torch::amax(rows, 1)}).to(torch::kFloat).to(torch::kCPU).contiguous();
  const float* lo = mm.data_ptr<float>();
  const float* hi = lo + channels;
  if (batches_ == 0) {
    min_.assign(static_cast<size_t>(channels), 0.0f);
    max_.assign(static_cast<size_t>(channels), 0.0f);
  }
  for (int64_t c = 0; c < channels; ++c) {
    CSIPOSE_CHECK(std::isfinite(lo[c]) && std::isfinite(hi[c]), "per_channel_minmax observer: channel ", c,
                  " holds a non-finite value (min ", lo[c], ", max ", hi[c], ")");
    const auto i = static_cast<size_t>(c);
    min_[i] = batches_ == 0 ? lo[c] : std::min(min_[i], lo[c]);
    max_[i] = batches_ == 0 ? hi[c] : std::max(max_[i], hi[c]);
  }
  ++batches_;
}

ObservedRange PerChannelMinMaxObserver::range() const {
  if (batches_ == 0) fail_empty();
  return {min_, max_};
}

Json PerChannelMinMaxObserver::state() const {
  Json j = state_header();
  j.set("min", min_);
  j.set("max", max_);
  return j;
}

void PerChannelMinMaxObserver::load_state(const Json& state) {
  load_state_header(state);
  min_ = float_list(state.at("min"));
  max_ = float_list(state.at("max"));
  CSIPOSE_CHECK(min_.size() == max_.size(), "per_channel_minmax observer: state has ", min_.size(), " minima and ",
                max_.size(), " maxima");
  CSIPOSE_CHECK(batches_ == 0 || !min_.empty(), "per_channel_minmax observer: state has batches but no channels");
}

void PerChannelMinMaxObserver::reset() {
  batches_ = 0;
  min_.clear();
  max_.clear();
}

// ---- HistogramObserver -------------------------------------------------------------------------

HistogramObserver::HistogramObserver(const QuantSpec& spec, int64_t bins, HistogramMethod method, double percentile)
    : Observer(spec), bins_(bins), method_(method), percentile_(percentile) {
  CSIPOSE_CHECK(spec.granularity == Granularity::per_tensor, "histogram observer: needs a per_tensor spec, got ",
                spec.describe());
  CSIPOSE_CHECK(bins >= 16, "histogram observer: bins = ", bins, "; expected >= 16");
  CSIPOSE_CHECK(percentile > 50.0 && percentile <= 100.0, "histogram observer: percentile = ", percentile,
                "; expected a value in (50, 100]");
  counts_.assign(static_cast<size_t>(bins_), 0.0);
}

void HistogramObserver::rebin(double new_lo, double new_hi) {
  if (new_lo == lo_ && new_hi == hi_) return;
  const double total = std::accumulate(counts_.begin(), counts_.end(), 0.0);
  std::vector<double> fresh(static_cast<size_t>(bins_), 0.0);
  const double width = (new_hi - new_lo) / static_cast<double>(bins_);
  const auto bin_of = [&](double v) {
    const auto j = static_cast<int64_t>(std::floor((v - new_lo) / width));
    return std::min<int64_t>(std::max<int64_t>(j, 0), bins_ - 1);
  };
  if (hi_ == lo_) {
    fresh[static_cast<size_t>(bin_of(lo_))] = total;  // the old histogram is a point mass at lo_ (= 0)
  } else {
    for (int64_t i = 0; i < bins_; ++i) {
      const double c = counts_[static_cast<size_t>(i)];
      if (c == 0.0) continue;
      const double e0 = edge(i), e1 = edge(i + 1);
      const int64_t j0 = bin_of(e0), j1 = bin_of(e1);
      // Overlap of old bin i with new bins j0..j1, normalized so the count is kept exactly.
      double covered = 0.0;
      std::vector<std::pair<int64_t, double>> parts;
      for (int64_t j = j0; j <= j1; ++j) {
        const double b0 = new_lo + width * static_cast<double>(j), b1 = b0 + width;
        const double overlap = std::min(e1, b1) - std::max(e0, b0);
        if (overlap > 0.0) parts.emplace_back(j, overlap), covered += overlap;
      }
      if (covered <= 0.0) {
        fresh[static_cast<size_t>(bin_of(0.5 * (e0 + e1)))] += c;
        continue;
      }
      for (const auto& [j, overlap] : parts) fresh[static_cast<size_t>(j)] += c * overlap / covered;
    }
  }
  counts_ = std::move(fresh);
  lo_ = new_lo;
  hi_ = new_hi;
}

void HistogramObserver::observe(const torch::Tensor& x_in) {
  range_cache_.reset();
  torch::NoGradGuard no_grad;
  const torch::Tensor x = checked_input(x_in, "histogram observer");
  const auto [lo, hi] = device_minmax(x, "histogram observer");
  const double new_lo = std::min<double>({lo, 0.0, batches_ == 0 ? 0.0 : lo_});
  const double new_hi = std::max<double>({hi, 0.0, batches_ == 0 ? 0.0 : hi_});
  if (batches_ == 0) {
    std::fill(counts_.begin(), counts_.end(), 0.0);
    lo_ = new_lo;
    hi_ = new_hi;
    min_ = lo;
    max_ = hi;
  } else {
    rebin(new_lo, new_hi);
    min_ = std::min(min_, lo);
    max_ = std::max(max_, hi);
  }
  if (hi_ > lo_) {
    // lo_ and hi_ are floats or 0, so histc's float bounds are exact; every value lies inside.
    const torch::Tensor h = torch::histc(x.to(torch::kFloat), bins_, lo_, hi_).to(torch::kDouble).to(torch::kCPU);
    const double* hp = h.contiguous().data_ptr<double>();
    for (int64_t i = 0; i < bins_; ++i) counts_[static_cast<size_t>(i)] += hp[i];
  } else {
    counts_[0] += static_cast<double>(x.numel());  // all zeros so far: a point mass at 0
  }
  ++batches_;
}

double HistogramObserver::expected_error(double lo, double hi) const {
  const QuantParams p = qparams_from_range(spec_, {static_cast<float>(lo)}, {static_cast<float>(hi)});
  const double s = p.scale[0];
  const double r0 = s * static_cast<double>(p.qmin - p.zero_point[0]);  // representable range
  const double r1 = s * static_cast<double>(p.qmax - p.zero_point[0]);
  const double rounding_noise = s * s / 12.0;  // uniform rounding error inside the range
  double err = 0.0, total = 0.0;
  if (hi_ == lo_) return 0.0;  // a point mass at 0, which every range represents exactly
  for (int64_t i = 0; i < bins_; ++i) {
    const double c = counts_[static_cast<size_t>(i)];
    if (c == 0.0) continue;
    total += c;
    const double e0 = edge(i), e1 = edge(i + 1), w = e1 - e0;
    const double inside = std::max(0.0, std::min(e1, r1) - std::max(e0, r0));
    err += c * (inside / w) * rounding_noise;
    if (e1 > r1) {  // clipped above: integral of (x - r1)^2 over the part beyond r1, uniform density
      const double u = std::max(e0, r1);
      err += c / w * (std::pow(e1 - r1, 3) - std::pow(u - r1, 3)) / 3.0;
    }
    if (e0 < r0) {  // clipped below
      const double v = std::min(e1, r0);
      err += c / w * (std::pow(r0 - e0, 3) - std::pow(r0 - v, 3)) / 3.0;
    }
  }
  return total > 0.0 ? err / total : 0.0;
}

ObservedRange HistogramObserver::percentile_range() const {
  const double total = std::accumulate(counts_.begin(), counts_.end(), 0.0);
  // The value below which a fraction q of the mass lies, linear inside a bin.
  const auto quantile = [&](double q) {
    const double target = q * total;
    double cum = 0.0;
    for (int64_t i = 0; i < bins_; ++i) {
      const double c = counts_[static_cast<size_t>(i)];
      if (c > 0.0 && cum + c >= target) return edge(i) + (edge(i + 1) - edge(i)) * std::max(0.0, target - cum) / c;
      cum += c;
    }
    return hi_;
  };
  const double lower = std::max<double>(quantile(1.0 - percentile_ / 100.0), min_);
  const double upper = std::min<double>(quantile(percentile_ / 100.0), max_);
  return {{static_cast<float>(std::min(lower, upper))}, {static_cast<float>(std::max(lower, upper))}};
}

ObservedRange HistogramObserver::mse_range() const {
  double best_lo = lo_, best_hi = hi_;
  double best = expected_error(lo_, hi_);
  if (spec_.symmetric) {
    // The range is [-t, t] clipped to [lo_, hi_]: a 1-D search over t on the bin grid.
    const double amax = std::max(-lo_, hi_);
    for (int64_t k = bins_ - 1; k >= 1; --k) {
      const double t = amax * static_cast<double>(k) / static_cast<double>(bins_);
      const double a = std::max(-t, lo_), b = std::min(t, hi_);
      const double e = expected_error(a, b);
      if (e < best) best = e, best_lo = a, best_hi = b;
    }
  } else {
    // Greedy shrink on the bin edges: move whichever end lowers the error more, keep the best
    // range seen (not only the last), never move an end past 0.
    int64_t i = 0, j = bins_;
    while (j - i > 1) {
      const bool can_left = edge(i + 1) <= 0.0;
      const bool can_right = edge(j - 1) >= 0.0;
      if (!can_left && !can_right) break;
      const double e_left = can_left ? expected_error(edge(i + 1), edge(j)) : INFINITY;
      const double e_right = can_right ? expected_error(edge(i), edge(j - 1)) : INFINITY;
      if (e_left <= e_right) ++i; else --j;
      const double e = std::min(e_left, e_right);
      if (e < best) best = e, best_lo = edge(i), best_hi = edge(j);
    }
  }
  // Inside the observed range (qparams_from_range widens to 0 again, so nothing changes there).
  const double lo = std::max<double>(best_lo, min_), hi = std::min<double>(best_hi, max_);
  return {{static_cast<float>(std::min(lo, hi))}, {static_cast<float>(std::max(lo, hi))}};
}

ObservedRange HistogramObserver::range() const {
  if (batches_ == 0) fail_empty();
  if (hi_ == lo_) return {{min_}, {max_}};
  if (!range_cache_) range_cache_ = method_ == HistogramMethod::percentile ? percentile_range() : mse_range();
  return *range_cache_;
}

Json HistogramObserver::state() const {
  Json j = state_header();
  j.set("bins", bins_);
  j.set("method", to_string(method_));
  j.set("percentile", percentile_);
  j.set("min", min_);
  j.set("max", max_);
  j.set("lo", lo_);
  j.set("hi", hi_);
  j.set("counts", counts_);
  return j;
}

void HistogramObserver::load_state(const Json& state) {
  range_cache_.reset();
  load_state_header(state);
  const int64_t bins = state.at("bins").as_int();
  CSIPOSE_CHECK(bins == bins_, "histogram observer: state has ", bins, " bins but this observer has ", bins_);
  const HistogramMethod method = parse_histogram_method(state.at("method").as_string());
  const double percentile = state.at("percentile").as_double();
  CSIPOSE_CHECK(method == method_ && percentile == percentile_, "histogram observer: state uses method ",
                to_string(method), " percentile ", percentile, " but this observer uses ", to_string(method_),
                " percentile ", percentile_);
  std::vector<double> counts;
  for (const Json& e : state.at("counts").elements()) counts.push_back(e.as_double());
  CSIPOSE_CHECK(static_cast<int64_t>(counts.size()) == bins_, "histogram observer: state has ", counts.size(),
                " counts; expected ", bins_);
  const double lo = state.at("lo").as_double(), hi = state.at("hi").as_double();
  CSIPOSE_CHECK(lo <= 0.0 && hi >= 0.0, "histogram observer: state range [", lo, ", ", hi,
                "] does not contain 0");
  min_ = static_cast<float>(state.at("min").as_double());
  max_ = static_cast<float>(state.at("max").as_double());
  lo_ = lo;
  hi_ = hi;
  counts_ = std::move(counts);
}

void HistogramObserver::reset() {
  range_cache_.reset();
  batches_ = 0;
  min_ = max_ = 0.0f;
  lo_ = hi_ = 0.0;
  std::fill(counts_.begin(), counts_.end(), 0.0);
}

}  // namespace csipose
