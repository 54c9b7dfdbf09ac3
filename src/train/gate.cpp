#include "train/gate.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "common/atomic_file.h"
#include "common/config_node.h"
#include "common/device.h"
#include "common/hash.h"
#include "common/version.h"
#include "data/dataset.h"
#include "data/split.h"
#include "models/pose_model.h"
#include "quant/policy.h"
#include "train/evaluate.h"
#include "train/loss.h"
#include "train/trainer.h"

namespace csipose {
namespace fs = std::filesystem;
namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string short_sha(const std::string& s) { return s.size() > 12 ? s.substr(0, 12) : s; }

Json metrics_json(const std::optional<PoseMetrics>& full, const std::optional<PoseMetrics>& clean) {
  if (!full) return Json();
  return Json::object().set("full", full->to_json()).set("clean", clean->to_json());
}

/// Window indices recorded by `ptq --calibration-out` ("windows": [...]).
std::vector<int64_t> calibration_windows(const std::string& path, const std::string& entry) {
  CSIPOSE_CHECK(fs::is_regular_file(path), "gate: entry \"", entry, "\": calibration file ", path, " does not exist");
  const Json j = Json::parse(read_text_file(path));
  CSIPOSE_CHECK(j.is_object() && j.contains("windows") && j.at("windows").is_array(), "gate: entry \"", entry,
                "\": ", path, " is not a calibration set (no \"windows\" list; write one with csipose ptq --calibration-out)");
  std::vector<int64_t> w;
  for (const Json& x : j.at("windows").elements()) w.push_back(x.as_int());
  return w;
}

}  // namespace

std::string file_sha256(const std::string& path) { return sha256_hex(read_text_file(path)); }

PreparedModel quantize_dynamic(PoseModelImpl& model, const std::string& policy_file) {
  QuantPolicy policy = policy_file.empty() ? QuantPolicy{} : QuantPolicy::load_file(policy_file);
  if (policy_file.empty()) policy.activation_observer = ObserverConfig{};
  PreparedModel prepared = prepare(model, policy, model.bn_fold_pairs());
  prepared.set_dynamic(true);
  prepared.set_mode(QuantMode::fake_quant);
  return prepared;
}

double batch1_cpu_latency_ms(PoseModelImpl& model, int64_t iters, int64_t warmup) {
  CSIPOSE_CHECK(iters > 0 && warmup >= 0, "latency: needs iters > 0 and warmup >= 0, got ", iters, " and ", warmup);
  model.to(torch::kCPU);
  model.eval();
  std::vector<int64_t> shape{1};
  for (int64_t d : model.input_shape()) shape.push_back(d);
  const torch::Tensor x = torch::full(shape, 0.5);
  torch::NoGradGuard no_grad;
  std::vector<double> ms;
  for (int64_t i = 0; i < warmup + iters; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    (void)model.forward(x);
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= warmup) ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  return n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]);
}

GateRow gate_entry(const RegistryEntry& e, const GateOptions& opt) {
  GateRow row;
  row.entry = e;
  const std::string who = "gate: entry \"" + e.name + "\"";
  for (const std::string* f : {&e.fp32, &e.artefact()})
    CSIPOSE_CHECK(fs::is_regular_file(*f), who, ": ", *f, " does not exist");

  // 1. Files: the registered bytes, or a FAIL row (evaluating other bytes would gate the wrong model).
  row.sha256 = file_sha256(e.artefact());
  if (!e.sha256.empty() && e.sha256 != row.sha256)
    row.failures.push_back("sha256 mismatch: " + e.artefact() + " is " + short_sha(row.sha256) + "..., registry says " +
                           short_sha(e.sha256) + "...");
  if (!e.fp32_sha256.empty()) {
    const std::string s = e.fp32 == e.artefact() ? row.sha256 : file_sha256(e.fp32);
    if (s != e.fp32_sha256)
      row.failures.push_back("fp32 sha256 mismatch: " + e.fp32 + " is " + short_sha(s) + "..., registry says " +
                             short_sha(e.fp32_sha256) + "...");
  }
  if (!row.failures.empty()) return row;

  // 2. The fp32 reference and the shipped model on one EvalSet: same windows, device and spec.
  ModelConfig mc;
  std::map<std::string, std::string> meta;
  auto fp32 = load_eval_model(e.fp32, &mc, &meta);
  CSIPOSE_CHECK(!(meta.count("format") && meta.at("format") == "int8") && !meta.count("quant_state"), who, ": fp32 ",
                e.fp32, " is not an fp32 checkpoint (it is ", meta.count("quant_state") ? "a QAT checkpoint" : "an int8 model", ")");
  CSIPOSE_CHECK(!e.data.empty() || meta.count("experiment_config"), who, ": ", e.fp32,
                " does not name its dataset; set data: DIR in the registry entry");
  const PoseDataset data = open_run_dataset(checkpoint_data_config(who, e.fp32, meta, e.data));
  const Split split = parse_split(e.split);
  const c10::Device dev = parse_device(e.device);
  const EvalSet set(data, split, dev, opt.batch_size);
  const PoseLoss loss(skeleton_bones(data.spec.skeleton), data.num_joints());
  row.metric_definition = data.spec.describe();
  fp32->to(dev);
  const EvalMetrics f = set.evaluate(*fp32, loss, {"identity"});
  row.fp32_full = f.full;
  row.fp32_clean = f.clean;

  std::shared_ptr<PoseModelImpl> shipped;
  switch (e.quant_mode) {
    case DeployMode::fp32: shipped = fp32; break;
    case DeployMode::dynamic: {
      shipped = load_eval_model(e.fp32);
      shipped->to(dev);
      shipped->eval();
      quantize_dynamic(*shipped, e.policy);
      break;
    }
    case DeployMode::static_int8:
    case DeployMode::qat: {
      ModelConfig qc;
      std::map<std::string, std::string> qmeta;
      shipped = load_eval_model(e.int8, &qc, &qmeta);
      CSIPOSE_CHECK(qmeta.count("format") && qmeta.at("format") == "int8", who, ": int8 ", e.int8,
                    " is not an int8 model (.csq); convert one with csipose convert or ptq --out");
      CSIPOSE_CHECK(qc.to_yaml() == mc.to_yaml(), who, ": int8 ", e.int8, " and fp32 ", e.fp32,
                    " are different architectures");
      if (!e.policy.empty() && QuantPolicy::load_file(e.policy).to_yaml() != qmeta["policy"])
        row.failures.push_back("policy " + e.policy + " differs from the policy stored in " + e.int8);
      shipped->to(dev);
      break;
    }
  }
  const EvalMetrics s = e.quant_mode == DeployMode::fp32 ? f : set.evaluate(*shipped, loss, {"identity"});
  row.shipped_full = s.full;
  row.shipped_clean = s.clean;
  row.evaluated = true;
  row.drop_clean = 100.0 * (f.clean.pck_at(0.2) - s.clean.pck_at(0.2));
  row.drop_full = 100.0 * (f.full.pck_at(0.2) - s.full.pck_at(0.2));
  // A drop within 1e-9 points of the budget passes (the budget is inclusive).
  if (row.drop_clean > e.budget.max_pck20_drop + 1e-9)
    row.failures.push_back(fmt("PCK@20 drop %.2f", row.drop_clean) + fmt(" > budget %.2f points", e.budget.max_pck20_drop));

  if (!e.calibration.empty()) {
    const std::vector<int64_t> evaluated = data.indices(split);
    const std::set<int64_t> in_split(evaluated.begin(), evaluated.end());
    int64_t overlap = 0;
    for (int64_t w : calibration_windows(e.calibration, e.name)) overlap += in_split.count(w);
    if (overlap > 0)
      row.failures.push_back(std::to_string(overlap) + " calibration windows of " + e.calibration + " are in the " + e.split + " split");
  }
  if (e.budget.max_latency_ms) {
    row.latency_ms = batch1_cpu_latency_ms(*shipped, opt.latency_iters, opt.latency_warmup);
    if (*row.latency_ms > *e.budget.max_latency_ms)
      row.failures.push_back(fmt("latency %.3f ms", *row.latency_ms) + fmt(" > budget %g ms", *e.budget.max_latency_ms));
  }
  return row;
}

GateResult run_gate(const std::vector<RegistryEntry>& entries, const GateOptions& options) {
  GateResult r;
  for (const auto& e : entries) r.rows.push_back(gate_entry(e, options));
  return r;
}

bool GateResult::pass() const {
  for (const auto& row : rows)
    if (!row.pass()) return false;
  return true;
}

Json GateRow::to_json() const {
  Json j = Json::object();
  j.set("name", entry.name).set("quant_mode", to_string(entry.quant_mode)).set("fp32", entry.fp32);
  j.set("artefact", entry.artefact()).set("split", entry.split).set("device", entry.device);
  j.set("sha256", sha256).set("sha256_registered", entry.sha256.empty() ? Json() : Json(entry.sha256));
  j.set("evaluated", evaluated);
  j.set("fp32_metrics", metrics_json(fp32_full, fp32_clean)).set("shipped_metrics", metrics_json(shipped_full, shipped_clean));
  Json drop = Json::object();
  drop.set("clean", evaluated ? Json(drop_clean) : Json()).set("full", evaluated ? Json(drop_full) : Json());
  j.set("pck@20_drop_points", drop);
  Json b = Json::object();
  b.set("max_pck20_drop", entry.budget.max_pck20_drop);
  b.set("max_latency_ms", entry.budget.max_latency_ms ? Json(*entry.budget.max_latency_ms) : Json());
  j.set("budget", b).set("latency_ms", latency_ms ? Json(*latency_ms) : Json());
  j.set("metric_definition", metric_definition.empty() ? Json() : Json(metric_definition));
  j.set("pass", pass()).set("failures", failures);
  return j;
}

Json GateResult::to_json() const {
  Json j = Json::object();
  j.set("git_sha", git_sha()).set("pass", pass()).set("exit_code", exit_code());
  j.set("drop_definition",
        "100 * (PCK@20(fp32) - PCK@20(shipped)) on the entry's split, clean and full subsets; the budget applies to clean");
  Json rows_j = Json::array();
  for (const auto& row : rows) rows_j.push(row.to_json());
  j.set("entries", rows_j);
  return j;
}

std::string GateResult::table() const {
  std::ostringstream o;
  char line[512];
  std::snprintf(line, sizeof line, "%-20s %-7s %-5s %11s %11s %8s %8s %7s %10s  %s\n", "entry", "mode", "split",
                "fp32 PCK@20", "ship PCK@20", "drop", "drop all", "budget", "latency", "result");
  o << line;
  std::vector<std::string> definitions;
  for (const auto& r : rows) {
    const auto pct = [](const std::optional<PoseMetrics>& m) {
      return m ? fmt("%.2f%%", 100.0 * m->pck_at(0.2)) : std::string("-");
    };
    std::string lat = r.latency_ms ? fmt("%.3fms", *r.latency_ms) : std::string("-");
    std::string verdict = r.pass() ? "PASS" : "FAIL";
    for (size_t i = 0; i < r.failures.size(); ++i) verdict += (i ? "; " : " (") + r.failures[i];
    if (!r.pass()) verdict += ")";
    std::snprintf(line, sizeof line, "%-20s %-7s %-5s %11s %11s %8s %8s %7s %10s  %s\n", r.entry.name.c_str(),
                  to_string(r.entry.quant_mode), r.entry.split.c_str(), pct(r.fp32_clean).c_str(),
                  pct(r.shipped_clean).c_str(), r.evaluated ? fmt("%.2f", r.drop_clean).c_str() : "-",
                  r.evaluated ? fmt("%.2f", r.drop_full).c_str() : "-", fmt("%.2f", r.entry.budget.max_pck20_drop).c_str(),
                  lat.c_str(), verdict.c_str());
    o << line;
    if (!r.metric_definition.empty() &&
        std::find(definitions.begin(), definitions.end(), r.metric_definition) == definitions.end())
      definitions.push_back(r.metric_definition);
  }
  o << "PCK@20 columns: the entry's split, clean subset (corrupted windows excluded); drop = fp32 - shipped in points "
       "(clean; \"drop all\": full subset); the budget applies to the clean drop; latency: median batch-1 CPU forward "
       "of the shipped model (only for entries with max_latency_ms)\n";
  for (const auto& d : definitions) o << "metric: " << d << "\n";
  return o.str();
}

}  // namespace csipose
