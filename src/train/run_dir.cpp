#include "train/run_dir.h"

#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/device.h"
#include "common/version.h"
#include "common/progress.h"
#include "models/checkpoint.h"
#include "models/int8_checkpoint.h"
#include "models/pose_model.h"
#include "quant/prepare.h"
#include "models/safetensors.h"
#include "train/sensitivity.h"

namespace csipose {
namespace fs = std::filesystem;
namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);)
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown CPU";
}

std::string pct(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * v);
  return buf;
}

std::string fixed(double v, int digits) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string machine_description() {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  return std::string(host) + " (" + std::to_string(std::thread::hardware_concurrency()) + " cpus, " + cpu_model() + ")";
}

RunDir RunDir::create(const std::string& dir, const ExperimentConfig& config, c10::Device device) {
  CSIPOSE_CHECK(!fs::exists(fs::path(dir) / "config.yaml"), "run directory ", dir,
                " already holds a run; continue it with --resume ", dir, " or choose another --run-dir");
  fs::create_directories(fs::path(dir) / "checkpoints");
  write_text_atomic((fs::path(dir) / "config.yaml").string(), config.to_yaml());
  Json run = Json::object();
  run.set("name", config.name).set("seed", config.seed).set("git_sha", git_sha());
  run.set("csipose_version", version()).set("torch", torch_description());
  run.set("machine", machine_description()).set("threads", static_cast<int64_t>(torch::get_num_threads()));
  run.set("created", utc_now()).set("invocations", Json::array());
  write_text_atomic((fs::path(dir) / "run.json").string(), run.dump(2) + "\n");
  RunDir r(dir, config);
  r.record_invocation("start", device, 0);
  return r;
}

RunDir RunDir::open(const std::string& dir) {
  const auto cfg = fs::path(dir) / "config.yaml";
  CSIPOSE_CHECK(fs::is_regular_file(cfg), dir, " is not a run directory (no config.yaml)");
  return RunDir(dir, ExperimentConfig::load(cfg.string()));
}

std::string RunDir::last_checkpoint() const { return (fs::path(dir_) / "checkpoints" / "last.safetensors").string(); }
std::string RunDir::best_checkpoint() const { return (fs::path(dir_) / "checkpoints" / "best.safetensors").string(); }
bool RunDir::has_last() const { return fs::is_regular_file(last_checkpoint()); }

void RunDir::truncate_metrics(int64_t epoch) const {
  const auto path = (fs::path(dir_) / "metrics.jsonl").string();
  if (!fs::exists(path)) return;
  std::istringstream in(read_text_file(path));
  std::string kept;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    Json j;
    try {
      j = Json::parse(line);
    } catch (const Error&) {
      continue;  // a line torn by a crash mid-write; its epoch is repeated
    }
    if (j.at("epoch").as_int() <= epoch) kept += line + "\n";
  }
  write_text_atomic(path, kept);
}

void RunDir::record_invocation(const std::string& kind, c10::Device device, int64_t epoch) const {
  const auto path = (fs::path(dir_) / "run.json").string();
  Json run = Json::parse(read_text_file(path));
  Json list = run.at("invocations");
  Json entry = Json::object();
  entry.set("kind", kind).set("time", utc_now()).set("device", device.str()).set("from_epoch", epoch);
  entry.set("git_sha", git_sha()).set("machine", machine_description());
  list.push(entry);
  run.set("invocations", list);
  write_text_atomic(path, run.dump(2) + "\n");
}

void RunDir::on_epoch_end(Trainer& trainer, const EpochStats& stats, const EvalMetrics& val, bool is_best) {
  const auto& st = trainer.state();
  Json line = stats.to_json();
  line.set("step", st.step);
  Json monitor = Json::object();
  monitor.set("metric", trainer.config().train.best.metric).set("value", val.value(trainer.config().train.best));
  monitor.set("best", is_best);
  line.set("monitor", monitor).set("stopped_early", st.stopped_early);
  line.set("val", val.to_json());
  // The metrics line first, then the checkpoints: a crash in between leaves a line whose
  // checkpoint is missing, which --resume drops (truncate_metrics) before repeating the epoch.
  const auto path = (fs::path(dir_) / "metrics.jsonl").string();
  {
    std::ofstream out(path, std::ios::app);
    out << line.dump() << "\n";
    CSIPOSE_CHECK(out.good(), "cannot append to ", path);
  }
  if (is_best) {
    std::map<std::string, std::string> m;
    m["kind"] = "best";
    m["epoch"] = std::to_string(st.epoch);
    m["monitor"] = monitor.dump();
    m["val"] = val.to_json().dump();
    m["experiment_config"] = trainer.config().to_yaml();
    PoseModelImpl& eval = trainer.eval_model();
    if (trainer.quantized()) m["quant_state"] = trainer.quantized()->state().dump();
    save_checkpoint(best_checkpoint(), trainer.config().model, eval, m);
  }
  trainer.save(last_checkpoint());
  if (!stderr_is_tty()) return;
  // The monitored metric by its own name: the dataset's thresholds need not include 0.2.
  const MonitorSpec& best = trainer.config().train.best;
  std::fprintf(stderr, "epoch %3lld  loss %.5f  %s %.4f  lr %.2e  %.0f samples/s%s\n",
               static_cast<long long>(stats.epoch), stats.loss, best.metric.c_str(), val.value(best), stats.lr_last,
               stats.samples_per_s, is_best ? "  *best" : "");
}

Json RunDir::write_report(Trainer& trainer, const PoseDataset& data) const {
  const auto& cfg = trainer.config();
  CSIPOSE_CHECK(fs::is_regular_file(best_checkpoint()), dir_, ": no best checkpoint to report on");
  Checkpoint best;
  best.model = load_eval_model(best_checkpoint(), &best.config, &best.metadata);
  best.model->to(trainer.device());
  const int64_t bs = cfg.train.eval_batch_size;
  const EvalSet test(data, Split::test, trainer.device(), bs), val(data, Split::val, trainer.device(), bs);
  const EvalMetrics test_m = test.evaluate(*best.model, trainer.loss(), cfg.train.tta.views);
  const EvalMetrics val_m = val.evaluate(*best.model, trainer.loss(), {"identity"});
  std::optional<Json> quant;
  std::string quant_md;
  if (cfg.qat.enabled) {
    // Per-layer sensitivity of the trained fake-quant model on the validation split (before
    // quant_report converts its ops to int8).
    std::optional<SensitivityReport> sens;
    if (cfg.qat.sensitivity) {
      const MonitorSpec& metric = cfg.train.best;  // a validation metric (MonitorSpec::parse)
      PreparedModel p = prepared_hooks(*best.model);
      sens = layer_sensitivity(*best.model, p, val, trainer.loss(), sensitivity_probe(data, metric, trainer.device()),
                               metric);
    }
    quant = quant_report(trainer, data, *best.model, test, test_m, quant_md);
    if (sens) {
      quant->set("sensitivity", sens->to_json());
      quant_md += "\n## Per-layer sensitivity of the QAT model\n\nThe trained weights (best epoch); \"fp32\" here is "
                  "them with every op in float, \"all quantized\" the fake-quant model above.\n\n" +
                  sens->table();
    }
    const fs::path search = fs::path(dir_) / "auto_budget.json";
    if (fs::exists(search)) {
      quant->set("auto_budget", Json::parse(read_text_file(search.string())));
      quant_md += "\n## Accuracy-budget search before QAT (csipose qat --auto-budget)\n\n" +
                  read_text_file((fs::path(dir_) / "auto_budget.md").string());
    }
  }
  const auto& st = trainer.state();

  Json r = Json::object();
  r.set("run", cfg.name).set("git_sha", git_sha()).set("torch", torch_description());
  r.set("machine", machine_description()).set("device", trainer.device().str());
  Json model = Json::object();
  model.set("preset", cfg.model.preset).set("family", best.model->family());
  model.set("params", count_parameters(*best.model));
  int64_t bytes = 0;
  for (const auto& kv : state_dict(*best.model)) bytes += kv.second.numel() * kv.second.element_size();
  model.set("fp32_bytes", bytes).set("macs_per_sample", best.model->macs_per_sample());
  r.set("model", model);
  Json ds = Json::object();
  ds.set("root", data.root).set("layout", to_string(data.layout)).set("windows", data.size());
  ds.set("train_windows", static_cast<int64_t>(data.indices(Split::train, cfg.data.train_subset == "clean" ? Subset::clean : Subset::full).size()));
  ds.set("train_subset", cfg.data.train_subset).set("val_windows", val.size()).set("test_windows", test.size());
  ds.set("test_clean_windows", test.num_clean());
  r.set("dataset", ds);
  r.set("metric", data.spec.to_json()).set("metric_definition", data.spec.describe());
  Json training = Json::object();
  training.set("epochs_run", st.epoch).set("epochs_configured", cfg.train.epochs).set("steps", st.step);
  training.set("stopped_early", st.stopped_early).set("train_seconds", st.train_seconds);
  training.set("best_epoch", st.best_epoch).set("best_metric", cfg.train.best.metric);
  training.set("best_value", st.best_value ? Json(*st.best_value) : Json());
  training.set("eval_weights", cfg.train.ema.enabled() ? "ema" : "model");
  r.set("training", training);
  r.set("val", val_m.to_json()).set("test", test_m.to_json());
  if (quant) r.set("quantization", *quant);
  write_text_atomic((fs::path(dir_) / "report.json").string(), r.dump(2) + "\n");

  std::ostringstream md;
  md << "# Run " << cfg.name << "\n\n";
  md << "- model: " << (cfg.model.preset.empty() ? to_string(cfg.model.type) : cfg.model.preset) << ", "
     << count_parameters(*best.model) << " parameters, " << bytes << " bytes fp32\n";
  md << "- data: " << data.root << " (" << to_string(data.layout) << ", " << data.size() << " windows; test "
     << test.size() << " full / " << test.num_clean() << " clean)\n";
  md << "- training: " << st.epoch << "/" << cfg.train.epochs << " epochs" << (st.stopped_early ? " (early stop)" : "")
     << ", " << fixed(st.train_seconds, 1) << " s, best epoch " << st.best_epoch << " by " << cfg.train.best.metric
     << ", weights " << (cfg.train.ema.enabled() ? "EMA" : "raw") << "\n";
  md << "- code " << git_sha() << ", " << torch_description() << ", device " << trainer.device().str() << "\n";
  md << "- metric: " << data.spec.describe() << "\n";
  md << "- test views (TTA): ";
  for (size_t i = 0; i < test_m.views.size(); ++i) md << (i ? ", " : "") << test_m.views[i];
  md << "\n\n| split/subset | N |";
  for (double t : data.spec.thresholds) md << " " << pck_name(t) << " |";
  md << " MPJPE |\n|---|---|";
  for (size_t i = 0; i < data.spec.thresholds.size(); ++i) md << "---|";
  md << "---|\n";
  for (const PoseMetrics* m : {&val_m.full, &val_m.clean, &test_m.full, &test_m.clean}) {
    md << "| " << m->split << "/" << m->subset << " | " << m->num_samples << " |";
    for (double p : m->pck) md << " " << pct(p) << " |";
    md << " " << fixed(m->mpjpe, 6) << " |\n";
  }
  if (cfg.qat.enabled) md << "\nThe rows above are the fake-quant model (QAT, best epoch).\n\n" << quant_md;
  write_text_atomic((fs::path(dir_) / "report.md").string(), md.str());
  return r;
}

std::string RunDir::int8_model() const { return (fs::path(dir_) / "model.csq").string(); }

Json RunDir::quant_report(Trainer& trainer, const PoseDataset& data, PoseModelImpl& fake_quant, const EvalSet& test,
                          const EvalMetrics& fq_m, std::string& md) const {
  const auto& cfg = trainer.config();
  const auto& views = cfg.train.tta.views;
  // 1. fp32: the warm-start model QAT began from (when there is one).
  std::optional<EvalMetrics> fp32_m;
  int64_t fp32_bytes = 0;
  if (!cfg.qat.init_from.empty()) {
    auto fp32 = load_eval_model(cfg.qat.init_from);
    fp32->to(trainer.device());
    fp32_m = test.evaluate(*fp32, trainer.loss(), views);
    for (const auto& kv : state_dict(*fp32)) fp32_bytes += kv.second.numel() * kv.second.element_size();
  }
  // 2. convert the fake-quant model to int8, write model.csq, and evaluate what was written.
  {
    fake_quant.to(torch::kCPU);
    PreparedModel p = prepared_hooks(fake_quant);
    p.convert(fake_quant);
    std::map<std::string, std::string> meta;
    meta["metric"] = data.spec.describe();
    meta["source"] = best_checkpoint();
    meta["git_sha"] = git_sha();
    meta["experiment_config"] = cfg.to_yaml();
    save_int8_checkpoint(int8_model(), cfg.model, cfg.qat.policy, fake_quant, meta);
  }
  auto int8 = load_int8_checkpoint(int8_model());
  int8.model->to(trainer.device());
  const EvalMetrics int8_m = test.evaluate(*int8.model, trainer.loss(), views);
  const Int8Size size = int8_checkpoint_size(int8_model());

  Json q = Json::object();
  q.set("policy", cfg.qat.policy.to_yaml()).set("init_from", cfg.qat.init_from);
  q.set("quantized_ops", static_cast<int64_t>(prepared_hooks(*int8.model).hooks.size()));
  q.set("folded_batchnorms", prepared_hooks(*int8.model).folded_bn());
  q.set("fp32", fp32_m ? fp32_m->to_json() : Json()).set("fake_quant", fq_m.to_json()).set("int8", int8_m.to_json());
  const double t = 0.2;
  Json gaps = Json::object();
  for (const char* sub : {"full", "clean"}) {
    const auto& f = std::string(sub) == "full" ? fq_m.full : fq_m.clean;
    const auto& i = std::string(sub) == "full" ? int8_m.full : int8_m.clean;
    Json g = Json::object();
    g.set("fake_quant_minus_int8_pck@20_points", 100.0 * (f.pck_at(t) - i.pck_at(t)));
    if (fp32_m) {
      const auto& p = std::string(sub) == "full" ? fp32_m->full : fp32_m->clean;
      g.set("fp32_minus_int8_pck@20_points", 100.0 * (p.pck_at(t) - i.pck_at(t)));
    }
    gaps.set(sub, g);
  }
  q.set("gaps", gaps);
  Json sz = Json::object();
  sz.set("fp32_state_bytes", fp32_bytes).set("int8_file_bytes", size.file_bytes);
  sz.set("int8_weight_bytes", size.int8_weight_bytes).set("float_bytes", size.float_bytes);
  q.set("sizes", sz).set("int8_model", int8_model());

  std::ostringstream o;
  o << "## fp32 -> fake-quant (QAT) -> int8 (converted)\n\n";
  o << "Test split, " << views.size() << " view(s); metric: " << data.spec.describe() << ". int8 = the converted model "
    << "read back from " << int8_model() << " (packed int8 weights, int32 biases, exact integer accumulation).\n\n";
  o << "| model | subset | N |";
  for (double th : data.spec.thresholds) o << " " << pck_name(th) << " |";
  o << " MPJPE |\n|---|---|---|";
  for (size_t i = 0; i < data.spec.thresholds.size(); ++i) o << "---|";
  o << "---|\n";
  auto rows = [&](const char* name, const EvalMetrics& m) {
    for (const PoseMetrics* pm : {&m.full, &m.clean}) {
      o << "| " << name << " | " << pm->subset << " | " << pm->num_samples << " |";
      for (double p : pm->pck) o << " " << pct(p) << " |";
      o << " " << fixed(pm->mpjpe, 6) << " |\n";
    }
  };
  if (fp32_m) rows("fp32", *fp32_m);
  rows("fake-quant", fq_m);
  rows("int8", int8_m);
  o << "\nGaps in PCK@20 points: fake-quant - int8 = "
    << fixed(gaps.at("full").at("fake_quant_minus_int8_pck@20_points").as_double(), 2) << " (full), "
    << fixed(gaps.at("clean").at("fake_quant_minus_int8_pck@20_points").as_double(), 2) << " (clean)";
  if (fp32_m)
    o << "; fp32 - int8 = " << fixed(gaps.at("full").at("fp32_minus_int8_pck@20_points").as_double(), 2) << " (full), "
      << fixed(gaps.at("clean").at("fp32_minus_int8_pck@20_points").as_double(), 2) << " (clean)";
  o << ".\n\nSizes: fp32 weights " << (fp32_m ? std::to_string(fp32_bytes) + " bytes" : std::string("n/a (no warm start)"))
    << "; int8 model file " << size.file_bytes << " bytes ("
    << size.int8_weight_bytes << " bytes int8 weights + int32 biases, " << size.float_bytes << " bytes float tensors).\n";
  md = o.str();
  return q;
}

}  // namespace csipose
