#include "train/sensitivity.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <sstream>

#include "common/check.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "models/pose_model.h"
#include "quant/prepare.h"
#include "train/evaluate.h"

namespace csipose {

namespace {

/// Only the hooks whose `on[i]` is true quantize (fake_quant); the others compute in float (off).
void select_quantized(PreparedModel& prepared, const std::vector<bool>& on) {
  for (size_t i = 0; i < prepared.hooks.size(); ++i)
    prepared.hooks[i].second->set_mode(on[i] ? QuantMode::fake_quant : QuantMode::off);
}

std::string fmt(double v, int digits = 2) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

bool is_pck(const MonitorSpec& metric) { return metric.metric.find("/pck@") != std::string::npos; }

/// "12.34%" for a PCK, "0.012345" otherwise.
std::string fmt_value(const MonitorSpec& metric, double v) { return is_pck(metric) ? fmt(v) + "%" : fmt(v, 6); }
std::string fmt_drop(const MonitorSpec& metric, double v) { return is_pck(metric) ? fmt(v) : fmt(v, 6); }
const char* drop_unit(const MonitorSpec& metric) { return is_pck(metric) ? "points" : "metric units"; }

std::string split_of(const MonitorSpec& metric) { return metric.metric.substr(0, metric.metric.find('/')); }

double measure(PoseModelImpl& model, const EvalSet& set, const PoseLoss& loss, const MonitorSpec& metric) {
  return metric_value(set.evaluate(model, loss, {"identity"}), metric);
}

}  // namespace

double metric_value(const EvalMetrics& m, const MonitorSpec& metric) {
  const double v = m.value(metric);
  return is_pck(metric) ? 100.0 * v : v;
}

double metric_drop(const MonitorSpec& metric, double fp32, double quantized) {
  return metric.mode() == MonitorMode::max ? fp32 - quantized : quantized - fp32;
}

std::vector<size_t> SensitivityReport::ranking() const {
  std::vector<size_t> order(layers.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (layers[a].drop != layers[b].drop) return layers[a].drop > layers[b].drop;
    return layers[a].sqnr_db < layers[b].sqnr_db;
  });
  return order;
}

Json SensitivityReport::to_json() const {
  Json j = Json::object(), rows = Json::array();
  for (size_t i : ranking()) {
    const LayerSensitivity& l = layers[i];
    Json r = Json::object();
    r.set("name", l.name).set("sqnr_db", std::isinf(l.sqnr_db) ? Json() : Json(l.sqnr_db));
    r.set("only_this_op", l.only_this).set("drop", l.drop);
    rows.push(r);
  }
  j.set("metric", metric.metric).set("metric_definition", metric_definition);
  j.set("sqnr_definition",
        "10 log10(sum ref^2 / sum (q - ref)^2) of the op's output, ref = every op float, q = every op fake-quantized, "
        "over the probe batch (null: identical)");
  j.set("drop_definition", std::string("how much worse the metric is with only this op quantized than fp32 (") +
                               (metric.mode() == MonitorMode::max ? "fp32 - quantized" : "quantized - fp32") + ", " +
                               drop_unit(metric) + ")");
  j.set("probe_windows", probe_windows).set("fp32", fp32).set("all_quantized", quantized);
  j.set("layers_most_sensitive_first", rows);
  return j;
}

std::string SensitivityReport::table() const {
  std::ostringstream o;
  o << "per-layer sensitivity, " << metric.metric << " (" << layers.size() << " quantized ops; fp32 "
    << fmt_value(metric, fp32) << ", all quantized " << fmt_value(metric, quantized) << ")\n"
    << "  SQNR: the op's output with every op fake-quantized vs every op float, " << probe_windows
    << " probe windows; drop: how much worse " << metric.metric << " is with only this op quantized than fp32, "
    << drop_unit(metric) << "\n\n"
    << "| rank | op | SQNR dB | " << metric.metric << " only this op | drop |\n| ---: | --- | ---: | ---: | ---: |\n";
  int rank = 1;
  for (size_t i : ranking()) {
    const LayerSensitivity& l = layers[i];
    o << "| " << rank++ << " | " << l.name << " | " << fmt(l.sqnr_db, 1) << " | " << fmt_value(metric, l.only_this) << " | "
      << fmt_drop(metric, l.drop) << " |\n";
  }
  return o.str();
}

SensitivityReport layer_sensitivity(PoseModelImpl& model, PreparedModel& prepared, const EvalSet& set,
                                    const PoseLoss& loss, const torch::Tensor& probe_x, const MonitorSpec& metric) {
  CSIPOSE_CHECK(!prepared.hooks.empty(), "sensitivity: the model has no quantized ops");
  CSIPOSE_CHECK(split_of(metric) == set.split(), "sensitivity: metric ", metric.metric, " is not on the ", set.split(),
                " split it is evaluated on");
  for (const auto& [name, hook] : prepared.hooks)
    CSIPOSE_CHECK(hook->observers_frozen() || hook->dynamic(), "sensitivity: ", name,
                  " is neither calibrated (frozen observers) nor dynamic");
  const size_t n = prepared.hooks.size();
  SensitivityReport report;
  report.metric = metric;
  report.probe_windows = probe_x.size(0);
  model.eval();
  torch::NoGradGuard no_grad;

  // SQNR: every op's outputs (in call order) with all ops float (observe mode with frozen
  // observers computes in float), then with all ops fake-quantized.
  std::vector<std::vector<torch::Tensor>> ref(n);
  std::vector<double> signal(n, 0.0), noise(n, 0.0);
  std::vector<size_t> calls(n, 0);
  // The taps capture these locals: remove them however this scope ends (an error included).
  struct ClearTaps {
    PreparedModel& p;
    ~ClearTaps() {
      for (auto& [name, hook] : p.hooks) hook->output_tap = nullptr;
    }
  } clear_taps{prepared};
  for (size_t i = 0; i < n; ++i)
    prepared.hooks[i].second->output_tap = [&ref, i](const torch::Tensor& y) { ref[i].push_back(y.detach().clone()); };
  prepared.set_mode(QuantMode::observe);
  model.forward(probe_x);
  for (size_t i = 0; i < n; ++i)
    prepared.hooks[i].second->output_tap = [&, i](const torch::Tensor& y) {
      CSIPOSE_CHECK(calls[i] < ref[i].size(), "sensitivity: ", prepared.hooks[i].first, " ran more often quantized");
      const torch::Tensor& r = ref[i][calls[i]++];
      signal[i] += r.to(torch::kDouble).square().sum().item<double>();
      noise[i] += (y.detach().to(torch::kDouble) - r.to(torch::kDouble)).square().sum().item<double>();
    };
  prepared.set_mode(QuantMode::fake_quant);
  model.forward(probe_x);
  for (auto& [name, hook] : prepared.hooks) hook->output_tap = nullptr;

  std::vector<bool> on(n, false);
  select_quantized(prepared, on);
  const EvalMetrics fp32 = set.evaluate(model, loss, {"identity"});
  report.fp32 = metric_value(fp32, metric);
  report.metric_definition = fp32.clean.spec.describe();
  for (size_t i = 0; i < n; ++i) {
    LayerSensitivity l;
    l.name = prepared.hooks[i].first;
    l.sqnr_db = noise[i] > 0 ? 10.0 * std::log10(signal[i] / noise[i]) : std::numeric_limits<double>::infinity();
    on.assign(n, false);
    on[i] = true;
    select_quantized(prepared, on);
    l.only_this = measure(model, set, loss, metric);
    l.drop = metric_drop(metric, report.fp32, l.only_this);
    report.layers.push_back(l);
  }
  prepared.set_mode(QuantMode::fake_quant);
  report.quantized = measure(model, set, loss, metric);
  return report;
}

Json AutoBudgetResult::to_json() const {
  Json j = Json::object(), s = Json::array();
  for (const BudgetStep& b : steps) {
    Json r = Json::object();
    r.set("moved_to_fp32", b.moved.empty() ? Json() : Json(b.moved)).set("value", b.value).set("drop", b.drop);
    s.push(r);
  }
  j.set("metric", metric.metric).set("budget", budget).set("met", met).set("fp32_layers", fp32_layers).set("steps", s);
  j.set("definition", std::string("drop: how much worse the mixed-precision fake-quant model is than fp32 on ") +
                          metric.metric + " (" + drop_unit(metric) + ")");
  return j;
}

std::string AutoBudgetResult::table() const {
  std::ostringstream o;
  o << "auto-budget: max drop of " << metric.metric << " " << fmt_drop(metric, budget) << " " << drop_unit(metric)
    << " -> " << (met ? "met" : "NOT met") << " with " << fp32_layers.size() << " op(s) in fp32\n\n| step | moved to fp32 | "
    << metric.metric << " | drop |\n| ---: | --- | ---: | ---: |\n";
  for (size_t i = 0; i < steps.size(); ++i)
    o << "| " << i << " | " << (steps[i].moved.empty() ? "(all quantized)" : steps[i].moved) << " | "
      << fmt_value(metric, steps[i].value) << " | " << fmt_drop(metric, steps[i].drop) << " |\n";
  return o.str();
}

AutoBudgetResult auto_budget(PoseModelImpl& model, PreparedModel& prepared, const EvalSet& set, const PoseLoss& loss,
                             const SensitivityReport& sensitivity, double budget) {
  CSIPOSE_CHECK(std::isfinite(budget) && budget >= 0, "auto-budget: the budget must be >= 0, got ", budget);
  CSIPOSE_CHECK(sensitivity.layers.size() == prepared.hooks.size(), "auto-budget: the sensitivity table has ",
                sensitivity.layers.size(), " ops, the model ", prepared.hooks.size());
  CSIPOSE_CHECK(split_of(sensitivity.metric) == set.split(), "auto-budget: sensitivity of ", sensitivity.metric.metric,
                ", search on the ", set.split(), " split");
  const MonitorSpec& metric = sensitivity.metric;
  AutoBudgetResult result;
  result.metric = metric;
  result.budget = budget;
  const size_t n = prepared.hooks.size();
  std::vector<bool> on(n, true);
  model.eval();
  select_quantized(prepared, on);
  double value = measure(model, set, loss, metric);
  result.steps.push_back({"", value, metric_drop(metric, sensitivity.fp32, value)});
  for (size_t i : sensitivity.ranking()) {
    if (metric_drop(metric, sensitivity.fp32, value) <= budget) break;
    CSIPOSE_CHECK(prepared.hooks[i].first == sensitivity.layers[i].name, "auto-budget: op ", i, " is ",
                  prepared.hooks[i].first, " in the model but ", sensitivity.layers[i].name, " in the table");
    on[i] = false;
    select_quantized(prepared, on);
    value = measure(model, set, loss, metric);
    result.fp32_layers.push_back(sensitivity.layers[i].name);
    result.steps.push_back({sensitivity.layers[i].name, value, metric_drop(metric, sensitivity.fp32, value)});
  }
  result.met = metric_drop(metric, sensitivity.fp32, value) <= budget;
  return result;
}

QuantPolicy with_fp32_layers(const QuantPolicy& policy, const std::vector<std::string>& names) {
  QuantPolicy out = policy;
  std::vector<QuantRule> rules;
  for (const std::string& name : names) {
    CSIPOSE_CHECK(name.find_first_of("*?") == std::string::npos, "fp32 layer name \"", name, "\" has glob characters");
    QuantRule r;
    r.match = name;
    r.sets_weights = r.sets_activations = true;
    rules.push_back(r);
  }
  rules.insert(rules.end(), policy.rules.begin(), policy.rules.end());
  out.rules = std::move(rules);
  out.validate();
  return out;
}

std::vector<int64_t> calibrate_static(PoseModelImpl& model, PreparedModel& prepared, const PoseDataset& data,
                                      int64_t batches, int64_t batch_size, uint64_t seed, const c10::Device& device) {
  CSIPOSE_CHECK(batches > 0 && batch_size > 0, "calibration: batches and batch size must be > 0");
  LoaderOptions o;
  o.batch_size = batch_size;
  o.seed = seed;
  o.device = device;
  BatchLoader loader(data.x, data.y, data.indices(Split::train, Subset::clean), o);
  loader.set_epoch(0);
  const int64_t n = std::min(batches, loader.num_batches());
  CSIPOSE_CHECK(n > 0, "calibration: the train split has no clean windows");
  model.eval();
  prepared.freeze_observers(false);
  prepared.set_mode(QuantMode::observe);
  torch::NoGradGuard no_grad;
  std::vector<int64_t> windows;
  for (int64_t b = 0; b < n; ++b) {
    const Batch bt = loader.batch(b);
    model.forward(bt.x);
    const torch::Tensor idx = bt.index.to(torch::kCPU, torch::kLong).contiguous();  // one copy, not one sync per window
    windows.insert(windows.end(), idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
  }
  prepared.freeze_observers(true);
  prepared.set_mode(QuantMode::fake_quant);
  return windows;
}

torch::Tensor sensitivity_probe(const PoseDataset& data, const MonitorSpec& metric, const c10::Device& device) {
  const Split split = parse_split(split_of(metric));
  LoaderOptions o;
  o.batch_size = 64;
  o.device = device;
  o.shuffle = false;
  BatchLoader probe(data.x, data.y, data.indices(split, Subset::clean), o);
  CSIPOSE_CHECK(probe.num_batches() > 0, "sensitivity: the ", to_string(split), " split has no clean windows for the probe");
  return probe.batch(0).x;
}

}  // namespace csipose
