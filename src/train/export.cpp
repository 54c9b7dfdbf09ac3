#include "train/export.h"

#include <torch/torch.h>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <thread>
#include <filesystem>
#include <map>
#include <sstream>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/version.h"
#include "eval/metric_spec.h"
#include "models/checkpoint.h"
#include "models/int8_checkpoint.h"
#include "models/pose_model.h"
#include "models/safetensors.h"
#include "quant/prepare.h"
#include "train/gate.h"
#include "train/run_dir.h"
#include "train/trainer.h"

namespace csipose {
namespace fs = std::filesystem;
namespace {

/// The registry's read-modify-write runs under `<registry>.lock` (O_EXCL, so two exports at once,
/// e.g. two sweep workers, never lose each other's entry). A lock older than 10 minutes is left
/// over from a crash and taken over; waiting longer than 2 minutes is an error naming the file.
class RegistryLock {
 public:
  explicit RegistryLock(const std::string& registry) : path_(registry + ".lock") {
    const fs::path parent = fs::path(path_).parent_path();
    if (!parent.empty()) fs::create_directories(parent);
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const int fd = ::open(path_.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
      if (fd >= 0) {
        const std::string pid = std::to_string(::getpid()) + "\n";
        [[maybe_unused]] const auto n = ::write(fd, pid.data(), pid.size());
        ::close(fd);
        return;
      }
      std::error_code ec;
      const auto age = fs::file_time_type::clock::now() - fs::last_write_time(path_, ec);
      if (!ec && age > std::chrono::minutes(10)) {
        fs::remove(path_, ec);
        continue;
      }
      CSIPOSE_CHECK(std::chrono::steady_clock::now() - start < std::chrono::minutes(2), "export: the registry lock ",
                    path_, " is held by another export for over 2 minutes (remove it if no export is running)");
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  ~RegistryLock() {
    std::error_code ec;
    fs::remove(path_, ec);
  }
  RegistryLock(const RegistryLock&) = delete;
  RegistryLock& operator=(const RegistryLock&) = delete;

 private:
  std::string path_;
};


std::string pct(const Json& metrics) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * PoseMetrics::from_json(metrics).pck_at(0.2));
  return buf;
}

/// The run directory that produced a checkpoint ("D/checkpoints/best.safetensors" -> "D"), or "".
std::string run_of_checkpoint(const std::string& checkpoint) {
  const fs::path d = fs::path(checkpoint).parent_path().parent_path();
  return !d.empty() && fs::is_regular_file(d / "config.yaml") ? d.string() : "";
}

/// Converts a QAT run's best (fake-quant) checkpoint to int8, as `csipose convert` does.
void convert_best(const RunDir& rd, const std::string& out) {
  ModelConfig mc;
  std::map<std::string, std::string> meta;
  auto model = load_eval_model(rd.best_checkpoint(), &mc, &meta);
  CSIPOSE_CHECK(meta.count("quant_state"), "export: ", rd.best_checkpoint(), " is not a QAT checkpoint");
  model->to(torch::kCPU);
  PreparedModel p = prepared_hooks(*model);
  p.convert(*model);
  std::map<std::string, std::string> m;
  m["metric"] = metric_spec_for(mc.dataset()).describe();
  m["source"] = rd.best_checkpoint();
  m["git_sha"] = git_sha();
  m["experiment_config"] = rd.config().to_yaml();
  save_int8_checkpoint(out, mc, rd.config().qat.policy, *model, m);
}

std::string card_markdown(const Json& c) {
  std::ostringstream md;
  const Json& a = c.at("architecture");
  const Json& art = c.at("artefact");
  md << "# Model card: " << c.at("name").as_string() << "\n\n";
  md << "- artefact: `" << art.at("file").as_string() << "` (" << art.at("format").as_string() << ", "
     << art.at("bytes").as_int() << " bytes), sha256 `" << art.at("sha256").as_string() << "`\n";
  md << "- numerics: " << c.at("quant_mode").as_string() << "\n";
  md << "- model: " << a.at("model").as_string() << " (" << a.at("family").as_string() << "), "
     << a.at("params").as_int() << " parameters, " << a.at("fp32_bytes").as_int() << " bytes fp32";
  if (!a.at("int8_weight_bytes").is_null())
    md << ", " << a.at("int8_weight_bytes").as_int() << " bytes int8 weights + int32 biases and "
       << a.at("float_bytes").as_int() << " bytes float tensors";
  md << ", " << a.at("macs_per_sample").as_int() << " MACs/sample\n";
  md << "- run: `" << c.at("run").at("dir").as_string() << "` (code " << c.at("run").at("git_sha").as_string()
     << "); exported by code " << c.at("git_sha").as_string() << " on " << c.at("created").as_string() << "\n";
  md << "- registry: `" << c.at("registry").at("file").as_string() << "`, entry `" << c.at("registry").at("entry").as_string()
     << "`, budget " << c.at("registry").at("max_pck20_drop").as_double() << " points test/clean PCK@20 drop\n\n";
  const Json& m = c.at("metrics");
  md << "## Metrics (the run's report.json)\n\nmetric: " << m.at("definition").as_string() << "\n\n";
  md << "| model | split/subset | N | PCK@20 | MPJPE |\n|---|---|---|---|---|\n";
  auto rows = [&](const std::string& label, const Json& set) {
    if (set.is_null()) return;
    for (const char* sub : {"full", "clean"}) {
      const PoseMetrics pm = PoseMetrics::from_json(set.at(sub));
      md << "| " << label << " | " << pm.split << "/" << pm.subset << " | " << pm.num_samples << " | " << pct(set.at(sub))
         << " | " << pm.mpjpe << " |\n";
    }
  };
  const Json& q = m.at("quantization");
  rows(q.is_null() ? "fp32 (best)" : "fake-quant (best)", m.at("val"));
  rows(q.is_null() ? "fp32 (best)" : "fake-quant (best)", m.at("test"));
  if (!q.is_null()) {
    rows("fp32 (warm start)", q.at("fp32"));
    rows("int8", q.at("int8"));
  }
  md << "\n## Quantization policy\n\n";
  if (c.at("quant_policy").is_null())
    md << "none (fp32)\n";
  else
    md << "```yaml\n" << c.at("quant_policy").as_string() << "```\n";
  md << "\n## Reproduce\n\n```\n";
  for (const Json& line : c.at("reproduce").elements()) md << line.as_string() << "\n";
  md << "```\n";
  return md.str();
}

}  // namespace

std::string resolve_export_run(const std::string& run, const std::string& format) {
  const fs::path r(run);
  CSIPOSE_CHECK(fs::is_directory(r), "export: ", run, " is not a directory");
  if (fs::is_regular_file(r / "train" / "config.yaml")) {  // a sweep run directory (docs/sweeps.md)
    if (format == "csq") {
      CSIPOSE_CHECK(fs::is_regular_file(r / "qat" / "config.yaml"), "export: sweep run ", run,
                    " has no qat/ run to ship as csq (export its fp32 run with --format safetensors)");
      return (r / "qat").string();
    }
    return (r / "train").string();
  }
  CSIPOSE_CHECK(fs::is_regular_file(r / "config.yaml"), "export: ", run,
                " is not a run directory (no config.yaml) nor a sweep run directory (no train/config.yaml)");
  return run;
}

ExportResult export_run(const ExportOptions& o) {
  CSIPOSE_CHECK(o.format == "csq" || o.format == "safetensors", "export: --format must be csq or safetensors, got \"",
                o.format, "\"");
  CSIPOSE_CHECK(std::isfinite(o.budget) && o.budget >= 0 && o.budget <= 100, "export: --budget must be in [0, 100] points, got ",
                o.budget);
  CSIPOSE_CHECK(!o.out.empty(), "export: --out DIR is required");
  ExportResult res;
  res.run_dir = resolve_export_run(o.run, o.format);
  const RunDir rd = RunDir::open(res.run_dir);
  const ExperimentConfig& cfg = rd.config();
  const bool qat = cfg.qat.enabled;
  const fs::path report_file = fs::path(res.run_dir) / "report.json";
  CSIPOSE_CHECK(fs::is_regular_file(report_file), "export: ", res.run_dir, " has no report.json; finish the run first (csipose ",
                qat ? "qat" : "train", " --resume ", res.run_dir, ")");
  CSIPOSE_CHECK(qat == (o.format == "csq"), "export: ", res.run_dir, qat ? " is a QAT run: ship it with --format csq"
                                                                         : " is an fp32 run: ship it with --format safetensors "
                                                                           "(int8 comes from csipose qat)");
  CSIPOSE_CHECK(!qat || !cfg.qat.init_from.empty(), "export: QAT run ", res.run_dir,
                " has no fp32 warm start (qat.init_from), so the registry has no fp32 reference to gate it against");
  const Json report = Json::parse(read_text_file(report_file.string()));

  // The registry first: a refused name must leave nothing written.
  ModelRegistry registry = ModelRegistry::load_or_empty(o.registry);
  const std::string name = o.name.empty() ? cfg.name : o.name;
  if (!o.replace && registry.find(name)) {
    RegistryEntry probe;
    probe.name = name;
    registry.add(probe, false, o.registry);  // throws naming the flag
  }

  // The artefact.
  fs::create_directories(o.out);
  res.artefact = (fs::path(o.out) / (qat ? "model.csq" : "model.safetensors")).string();
  ModelConfig mc = cfg.model;
  if (qat) {
    if (fs::is_regular_file(rd.int8_model()))
      write_text_atomic(res.artefact, read_text_file(rd.int8_model()));
    else
      convert_best(rd, res.artefact);
    (void)load_int8_checkpoint(res.artefact);  // verifies magic and payload sha256 of what ships
  } else {
    auto model = load_eval_model(rd.best_checkpoint(), &mc);
    export_weights(res.artefact, mc, *model);
  }
  res.sha256 = file_sha256(res.artefact);

  // The model card.
  torch::manual_seed(0);
  auto fresh = make_model(mc);
  int64_t fp32_bytes = 0;
  for (const auto& kv : state_dict(*fresh)) fp32_bytes += kv.second.numel() * kv.second.element_size();
  Json arch = Json::object();
  arch.set("model", mc.preset.empty() ? std::string(to_string(mc.type)) : mc.preset).set("family", fresh->family());
  arch.set("model_config", mc.to_yaml()).set("params", count_parameters(*fresh)).set("fp32_bytes", fp32_bytes);
  arch.set("macs_per_sample", fresh->macs_per_sample());
  if (qat) {
    const Int8Size sz = int8_checkpoint_size(res.artefact);
    arch.set("int8_weight_bytes", sz.int8_weight_bytes).set("float_bytes", sz.float_bytes);
  } else {
    arch.set("int8_weight_bytes", Json()).set("float_bytes", Json());
  }
  std::string run_sha = "unknown";
  if (fs::is_regular_file(fs::path(res.run_dir) / "run.json")) {
    const Json run = Json::parse(read_text_file((fs::path(res.run_dir) / "run.json").string()));
    if (run.contains("git_sha")) run_sha = run.at("git_sha").as_string();
  }
  Json metrics = Json::object();
  metrics.set("definition", report.at("metric_definition")).set("spec", report.at("metric"));
  metrics.set("val", report.at("val")).set("test", report.at("test"));
  if (qat) {
    const Json& q = report.at("quantization");
    metrics.set("quantization",
                Json::object().set("fp32", q.at("fp32")).set("fake_quant", q.at("fake_quant")).set("int8", q.at("int8")).set("gaps", q.at("gaps")));
  } else {
    metrics.set("quantization", Json());
  }
  Json reproduce = Json::array();
  if (qat) {
    const std::string warm = run_of_checkpoint(cfg.qat.init_from);
    if (!warm.empty()) reproduce.push("csipose train --config " + warm + "/config.yaml --run-dir " + warm);
    reproduce.push("csipose qat --config " + res.run_dir + "/config.yaml --run-dir " + res.run_dir);
  } else {
    reproduce.push("csipose train --config " + res.run_dir + "/config.yaml --run-dir " + res.run_dir);
  }
  char budget_text[32];
  std::snprintf(budget_text, sizeof budget_text, "%g", o.budget);
  reproduce.push("csipose export --run " + o.run + " --format " + o.format + " --out " + o.out + " --registry " + o.registry +
                 " --name " + name + " --budget " + budget_text);

  RegistryEntry& e = res.entry;
  e.name = name;
  e.fp32 = qat ? cfg.qat.init_from : rd.best_checkpoint();
  CSIPOSE_CHECK(fs::is_regular_file(e.fp32), "export: the fp32 reference ", e.fp32, " does not exist");
  e.quant_mode = qat ? DeployMode::qat : DeployMode::fp32;
  e.int8 = qat ? res.artefact : "";
  e.budget.max_pck20_drop = o.budget;
  e.fp32_sha256 = file_sha256(e.fp32);
  e.sha256 = qat ? res.sha256 : e.fp32_sha256;
  e.git_sha = run_sha;
  e.created = utc_now();

  Json& c = res.card;
  c = Json::object();
  c.set("name", name).set("created", e.created).set("git_sha", git_sha()).set("csipose_version", version());
  c.set("artefact", Json::object()
                        .set("file", res.artefact)
                        .set("format", o.format)
                        .set("bytes", static_cast<int64_t>(fs::file_size(res.artefact)))
                        .set("sha256", res.sha256));
  c.set("quant_mode", to_string(e.quant_mode)).set("architecture", arch);
  c.set("quant_policy", qat ? Json(cfg.qat.policy.to_yaml()) : Json());
  c.set("metrics", metrics);
  c.set("run", Json::object().set("dir", res.run_dir).set("git_sha", run_sha).set("config", cfg.to_yaml()));
  c.set("fp32_reference", Json::object().set("file", e.fp32).set("sha256", e.fp32_sha256));
  c.set("reproduce", reproduce);
  c.set("registry", Json::object().set("file", o.registry).set("entry", name).set("max_pck20_drop", o.budget));
  write_text_atomic((fs::path(o.out) / "model_card.json").string(), c.dump(2) + "\n");
  write_text_atomic((fs::path(o.out) / "model_card.md").string(), card_markdown(c));

  {
    const RegistryLock lock(o.registry);
    // Re-read under the lock: another export may have added an entry since the check above.
    registry = ModelRegistry::load_or_empty(o.registry);
    registry.add(e, o.replace, o.registry);
    registry.save(o.registry);
  }
  return res;
}

}  // namespace csipose
