// csipose train | eval | train-bench
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <utility>

#include "cli/commands.h"
#include "cli/options.h"
#include "common/atomic_file.h"
#include "common/config_node.h"
#include "common/device.h"
#include "common/op_profile.h"
#include "common/version.h"
#include "data/loader.h"
#include "models/checkpoint.h"
#include "quant/int8_backend.h"
#include "quant/prepare.h"
#include "train/optim.h"
#include "train/evaluate.h"
#include "train/loss.h"
#include "train/run_dir.h"
#include "train/sensitivity.h"
#include "train/trainer.h"

namespace csipose::cli {
namespace {

void print_settings(const ExperimentConfig& c, const PoseDataset& data, const Trainer& t, const std::string& dir) {
  const auto& tr = c.train;
  std::printf("run        %s  (%s)\n", c.name.c_str(), dir.c_str());
  std::printf("model      %s, %lld params\n", c.model.preset.empty() ? to_string(c.model.type) : c.model.preset.c_str(),
              static_cast<long long>(count_parameters(const_cast<Trainer&>(t).model())));
  std::printf("data       %s (%s, %lld windows, train subset %s)\n", data.root.c_str(), to_string(data.layout),
              static_cast<long long>(data.size()), c.data.train_subset.c_str());
  std::printf("device     %s, %d threads, %s\n", t.device().str().c_str(), torch::get_num_threads(), torch_description().c_str());
  std::printf("optimizer  %s lr %g betas (%g, %g) wd %g, clip %g, batch %lld, %lld steps/epoch\n",
              to_string(tr.optimizer.type), tr.optimizer.lr, tr.optimizer.beta1, tr.optimizer.beta2,
              tr.optimizer.weight_decay, tr.grad_clip, static_cast<long long>(tr.batch_size),
              static_cast<long long>(t.steps_per_epoch()));
  std::printf("schedule   %s, %lld epochs, warmup %g epochs, min lr %g\n", to_string(tr.schedule.type),
              static_cast<long long>(tr.epochs), tr.schedule.warmup_epochs, tr.schedule.min_lr);
  std::printf("extras     ema %g, mixup alpha %g, augment %s, early stop %s, best by %s, tta %zu view(s)\n",
              tr.ema.decay, tr.mixup.alpha, tr.augment.enabled() ? "on" : "off",
              tr.early_stopping.patience > 0 ? tr.early_stopping.monitor.metric.c_str() : "off", tr.best.metric.c_str(),
              tr.tta.views.size());
  std::printf("seed       %llu, code %s\n", static_cast<unsigned long long>(c.seed), git_sha());
  std::fflush(stdout);
}

void print_metrics_table(const std::vector<const PoseMetrics*>& rows) {
  if (rows.empty()) return;
  std::printf("%-12s %7s", "split", "N");
  for (double t : rows[0]->spec.thresholds) std::printf(" %8s", pck_name(t).c_str());
  std::printf(" %10s\n", "MPJPE");
  for (const PoseMetrics* m : rows) {
    std::printf("%-12s %7lld", (m->split + "/" + m->subset).c_str(), static_cast<long long>(m->num_samples));
    for (double p : m->pck) std::printf(" %7.2f%%", 100.0 * p);
    std::printf(" %10.6f\n", m->mpjpe);
  }
}

/// qat --auto-budget: PTQ-calibrates the fp32 warm start with the QAT policy (histogram observers),
/// ranks its ops by sensitivity on `metric` (validation split) and moves the most sensitive ones to
/// fp32 until the calibrated model is within `budget` of fp32 there; returns the search (the QAT
/// run then starts from with_fp32_layers(policy, result.fp32_layers)).
std::pair<SensitivityReport, AutoBudgetResult> search_qat_policy(const ExperimentConfig& cfg, const PoseDataset& data,
                                                                 c10::Device dev, double budget,
                                                                 const MonitorSpec& metric, int64_t calibration) {
  CSIPOSE_CHECK(!cfg.qat.init_from.empty(), "qat: --auto-budget needs an fp32 warm start (qat.init_from or --init-from)");
  check_monitor(metric, data.spec, "qat --metric");
  auto model = load_eval_model(cfg.qat.init_from);
  model->to(dev);
  model->eval();
  QuantPolicy policy = cfg.qat.policy;
  policy.activation_observer = ObserverConfig{};
  policy.activation_observer.type = ObserverType::histogram;
  PreparedModel prepared = prepare(*model, policy, model->bn_fold_pairs());
  calibrate_static(*model, prepared, data, calibration, 64, cfg.seed, dev);
  const PoseLoss loss(skeleton_bones(data.spec.skeleton), data.num_joints());
  const EvalSet set(data, parse_split(metric.metric.substr(0, metric.metric.find('/'))), dev, 256);
  SensitivityReport sens = layer_sensitivity(*model, prepared, set, loss, sensitivity_probe(data, metric, dev), metric);
  AutoBudgetResult search = auto_budget(*model, prepared, set, loss, sens, budget);
  return {std::move(sens), std::move(search)};
}

}  // namespace

namespace {

int train_or_qat(const Args& args, bool qat) {
  const char* cmd = qat ? "qat" : "train";
  po::options_description desc("options");
  std::string config, run_dir, resume, device, init_from;
  std::vector<std::string> sets;
  int64_t stop_after = 0, calibration = 32;
  double budget = -1;
  std::string budget_metric;
  desc.add_options()
      ("config", po::value(&config), "experiment config (configs/train/*.yaml)")
      ("set", po::value(&sets)->composing(), "override a config key: --set train.epochs=5 (repeatable)")
      ("run-dir", po::value(&run_dir), "run directory (default experiments/<name>)")
      ("resume", po::value(&resume), "continue the run in this directory exactly where its last checkpoint ends")
      ("device", po::value(&device), "cpu | cuda | cuda:N | auto (default: the config's device)")
      ("init-from", po::value(&init_from),
       qat ? "fp32 warm start (checkpoint or weight file); sets qat.init_from, the fp32 reference of the report"
           : "start from these weights (checkpoint or weight file): a new run, not a resume")
      ("stop-after", po::value(&stop_after)->default_value(0),
       "stop after this many epochs in this invocation (0 = run to the end); continue later with --resume");
  if (qat)
    desc.add_options()
        ("auto-budget", po::value(&budget),
         "before a new run: move the warm start's most sensitive ops to fp32 until its PTQ-calibrated model is within "
         "this many points of fp32 on --metric; QAT then trains that policy (the run's config.yaml holds it)")
        ("metric", po::value(&budget_metric)->default_value("val/clean/pck@20"),
         "split/subset/measure of the --auto-budget search (validation split)")
        ("calibration", po::value(&calibration)->default_value(32), "--auto-budget: calibration batches of train/clean");
  po::variables_map vm;
  if (!parse_options(cmd, "--config FILE [--set k=v ...] [--run-dir D] | --resume D", desc, args, vm)) return 0;
  CSIPOSE_CHECK(config.empty() != resume.empty(), cmd, ": give either --config (a new run) or --resume DIR");
  CSIPOSE_CHECK(resume.empty() || (sets.empty() && init_from.empty() && run_dir.empty()), cmd,
                ": --resume continues a run with its own config.yaml; --set, --init-from and --run-dir start "
                "a new run (use --config)");
  CSIPOSE_CHECK(stop_after >= 0, cmd, ": --stop-after must be >= 0, got ", stop_after);
  if (qat && !init_from.empty()) {
    sets.push_back("qat.init_from=" + init_from);
    init_from.clear();
  }

  ExperimentConfig cfg = resume.empty() ? ExperimentConfig::load(config, sets) : RunDir::open(resume).config();
  CSIPOSE_CHECK(cfg.qat.enabled == qat, cmd, ": ", qat ? "the config has no qat: section (use `csipose train` for fp32)"
                                                         : "the config has a qat: section; run it with `csipose qat`");
  const c10::Device dev = parse_device(device.empty() ? cfg.device : device);
  const std::string dir = !resume.empty() ? resume : !run_dir.empty() ? run_dir : "experiments/" + cfg.name;
  const PoseDataset data = open_run_dataset(cfg.data);
  std::optional<std::pair<SensitivityReport, AutoBudgetResult>> search;
  if (vm.count("auto-budget")) {
    CSIPOSE_CHECK(resume.empty(), cmd, ": --auto-budget chooses the policy of a new run; a resumed run keeps its own");
    CSIPOSE_CHECK(std::isfinite(budget) && budget >= 0, cmd, ": --auto-budget must be >= 0 points, got ", budget);
    CSIPOSE_CHECK(calibration > 0, cmd, ": --calibration must be > 0");
    const MonitorSpec metric = MonitorSpec::parse(budget_metric, "qat --metric");
    search = search_qat_policy(cfg, data, dev, budget, metric, calibration);
    cfg.qat.policy = with_fp32_layers(cfg.qat.policy, search->second.fp32_layers);
    std::printf("%s\n%s\n", search->first.table().c_str(), search->second.table().c_str());
  }
  Trainer trainer(cfg, data, dev);
  RunDir rd = resume.empty() ? RunDir::create(dir, cfg, dev) : RunDir::open(dir);
  if (search) {
    Json j = Json::object();
    j.set("sensitivity", search->first.to_json()).set("search", search->second.to_json());
    j.set("calibration_batches", calibration).set("observer", "histogram");
    write_text_atomic(rd.dir() + "/auto_budget.json", j.dump(2) + "\n");
    write_text_atomic(rd.dir() + "/auto_budget.md",
                      "Warm start " + cfg.qat.init_from + ", PTQ-calibrated (" + std::to_string(calibration) +
                          " batches of train/clean, histogram observers) with the QAT policy:\n\n" +
                          search->first.table() + "\n" + search->second.table());
  }
  if (!resume.empty()) {
    if (rd.has_last()) trainer.load(rd.last_checkpoint());
    rd.truncate_metrics(trainer.state().epoch);
    rd.record_invocation("resume", dev, trainer.state().epoch);
  } else if (!init_from.empty()) {
    trainer.init_weights_from(init_from);
  }
  print_settings(cfg, data, trainer, dir);
  if (trainer.state().epoch > 0)
    std::printf("resuming after epoch %lld (step %lld)\n", static_cast<long long>(trainer.state().epoch),
                static_cast<long long>(trainer.state().step));
  std::fflush(stdout);  // before hours of stderr progress: the settings come first in a merged log
  fit(trainer, rd, stop_after);
  if (!trainer.finished()) {
    std::printf("stopped after epoch %lld of %lld; continue with: csipose %s --resume %s\n",
                static_cast<long long>(trainer.state().epoch), static_cast<long long>(cfg.train.epochs), cmd, dir.c_str());
    return 0;
  }
  const Json report = rd.write_report(trainer, data);
  const auto best = report.at("training");
  std::printf("best epoch %lld (%s = %.4f); test with %zu view(s):\n", static_cast<long long>(best.at("best_epoch").as_int()),
              best.at("best_metric").as_string().c_str(), best.at("best_value").as_double(), cfg.train.tta.views.size());
  const PoseMetrics full = PoseMetrics::from_json(report.at("test").at("full"));
  const PoseMetrics clean = PoseMetrics::from_json(report.at("test").at("clean"));
  print_metrics_table({&full, &clean});
  if (qat) {
    const Json& q = report.at("quantization");
    std::printf("(fake-quant model) -> int8 %s\n", q.at("int8_model").as_string().c_str());
    const PoseMetrics i8f = PoseMetrics::from_json(q.at("int8").at("full"));
    const PoseMetrics i8c = PoseMetrics::from_json(q.at("int8").at("clean"));
    std::printf("int8:\n");
    print_metrics_table({&i8f, &i8c});
    if (!q.at("fp32").is_null()) {
      const PoseMetrics f32f = PoseMetrics::from_json(q.at("fp32").at("full"));
      const PoseMetrics f32c = PoseMetrics::from_json(q.at("fp32").at("clean"));
      std::printf("fp32 (warm start %s):\n", cfg.qat.init_from.c_str());
      print_metrics_table({&f32f, &f32c});
    }
    const Json& g = q.at("gaps").at("clean");
    std::printf("PCK@20 clean gaps: fake-quant - int8 = %.2f points",
                g.at("fake_quant_minus_int8_pck@20_points").as_double());
    if (g.contains("fp32_minus_int8_pck@20_points"))
      std::printf(", fp32 - int8 = %.2f points", g.at("fp32_minus_int8_pck@20_points").as_double());
    std::printf("\n");
  }
  std::printf("metric: %s\nreport: %s/report.md\n", data.spec.describe().c_str(), dir.c_str());
  return 0;
}

}  // namespace

int train(const Args& args) { return train_or_qat(args, false); }
int qat(const Args& args) { return train_or_qat(args, true); }

int evaluate(const Args& args) {
  po::options_description desc("options");
  std::string checkpoint, data_dir, split, device, json, split_file;
  std::vector<std::string> views;
  int64_t batch = 256;
  desc.add_options()
      ("checkpoint", po::value(&checkpoint)->required(), "a csipose checkpoint (training, best or weights init)")
      ("data", po::value(&data_dir), "dataset directory (default: the one the checkpoint was trained on)")
      ("split-file", po::value(&split_file)->default_value(""), "split list (default: DIR/split.txt or seed 42)")
      ("split", po::value(&split)->default_value("test"), "train | val | test")
      ("device", po::value(&device)->default_value("cpu"), "cpu | cuda | cuda:N | auto")
      ("batch-size", po::value(&batch)->default_value(256), "evaluation batch size")
      ("tta", po::value(&views)->multitoken(), "test-time views: identity scale:F shift:K (default identity)")
      ("json", po::value(&json)->default_value(""), "write the result JSON here");
  po::variables_map vm;
  if (!parse_options("eval", "--checkpoint C [--data DIR] [--split test] [--device cpu|cuda]", desc, args, vm)) return 0;
  CSIPOSE_CHECK(batch > 0, "eval: --batch-size must be > 0, got ", batch);
  ModelConfig mc;
  std::map<std::string, std::string> meta;
  auto model = load_eval_model(checkpoint, &mc, &meta);
  DataConfig dc = checkpoint_data_config("eval", checkpoint, meta, data_dir);
  if (!split_file.empty()) dc.split_file = split_file;
  if (views.empty()) views = {"identity"};
  for (const auto& v : views) {  // validate through the same rules as the config's tta.views
    TtaConfig probe = TtaConfig::from_yaml(ConfigNode::load_string("views: [" + json_quote(v) + "]", "--tta"));
    (void)probe;
  }
  const PoseDataset data = open_run_dataset(dc);
  const Split s = parse_split(split);
  const c10::Device dev = parse_device(device);
  model->to(dev);
  const EvalSet set(data, s, dev, batch);
  const PoseLoss loss(skeleton_bones(data.spec.skeleton), data.num_joints());
  const auto t0 = std::chrono::steady_clock::now();
  const EvalMetrics m = set.evaluate(*model, loss, views);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const std::string kind = meta.count("format") && meta["format"] == "int8" ? "int8 model"
                           : meta.count("quant_state")                       ? "fake-quant (QAT)"
                                                                             : "fp32";
  std::printf("checkpoint %s (%s, %s, weights %s) on %s\n", checkpoint.c_str(),
              mc.preset.empty() ? to_string(mc.type) : mc.preset.c_str(), kind.c_str(),
              meta.count("eval_weights") ? meta["eval_weights"].c_str() : "model", dev.str().c_str());
  print_metrics_table({&m.full, &m.clean});
  std::printf("metric: %s\n", data.spec.describe().c_str());
  if (!json.empty()) {
    Json j = Json::object();
    j.set("checkpoint", checkpoint).set("data", data.root).set("device", dev.str()).set("seconds", secs);
    j.set("model", mc.preset.empty() ? std::string(to_string(mc.type)) : mc.preset);
    j.set("numerics", kind).set("metric_definition", data.spec.describe()).set("result", m.to_json());
    write_text_atomic(json, j.dump(2) + "\n");
  }
  return 0;
}

namespace {
/// The bench JSON's runtime facts: LibTorch's version and the OpenBLAS kernels and threads the fp32
/// GEMMs ran with (main() may have forced the kernels; see openblas_core_override), which the
/// benchmark scripts hand to the Python side.
void set_runtime_fields(Json& j) {
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  j.set("torch", TORCH_VERSION).set("openblas_core", std::string(core != nullptr ? core : "auto"));
  j.set("openblas_threads", static_cast<int64_t>(openblas_threads()));
  j.set("malloc", allocator_description());
  j.set("int8_chain", int8_chaining());
}
}  // namespace

int train_bench(const Args& args) {
  po::options_description desc("options");
  std::string preset, device;
  int64_t batch = 64, steps = 30, warmup = 5, threads = 0, resident = 2048;
  desc.add_options()
      ("model", po::value(&preset)->required(), "model preset or model config file")
      ("batch-size", po::value(&batch)->default_value(64), "batch size")
      ("steps", po::value(&steps)->default_value(30), "timed training steps")
      ("warmup", po::value(&warmup)->default_value(5), "untimed steps first")
      ("device", po::value(&device)->default_value("cpu"), "cpu | cuda | cuda:N")
      ("threads", po::value(&threads)->default_value(0), "LibTorch's CPU threads; OpenBLAS keeps one (0 = LibTorch default)")
      ("samples", po::value(&resident)->default_value(2048), "size of the resident synthetic set");
  po::variables_map vm;
  if (!parse_options("train-bench", "--model PRESET [--batch-size 64] [--steps 30] [--device cpu|cuda]", desc, args, vm))
    return 0;
  CSIPOSE_CHECK(batch > 1 && steps > 0 && warmup >= 0 && resident >= batch,
                "train-bench: needs --batch-size > 1, --steps > 0, --warmup >= 0, --samples >= --batch-size");
  if (threads > 0) set_cpu_threads(threads);
  const c10::Device dev = parse_device(device);
  const ModelConfig mc = resolve_model_config(preset);
  torch::manual_seed(0);
  auto model = make_model(mc);
  model->to(dev);
  model->train();
  // The same work as bench/train_reference.py: resident data, index-gathered batches, PoseLoss,
  // backward, clip 1.0, AdamW(1e-3, wd 0.01).
  std::vector<int64_t> shape{resident};
  for (int64_t d : model->input_shape()) shape.push_back(d);
  const auto opts = torch::TensorOptions().device(dev);
  const auto x = mc.type == ModelType::wiflow ? torch::randn(shape, opts) * 0.3 + 0.5 : torch::rand(shape, opts);
  const auto y = torch::rand({resident, model->num_keypoints(), 2}, opts);
  const PoseLoss loss(skeleton_bones(mc.type == ModelType::wiflow ? "body25_15" : "coco17"), model->num_keypoints());
  OptimizerConfig oc;
  oc.lr = 1e-3;
  oc.weight_decay = 0.01;
  const auto params = optimizer_params(*model, true);
  Optimizer opt(oc, params);
  torch::Tensor perm;
  int64_t pos = resident;
  auto step = [&] {
    if (pos + batch > resident) {
      perm = torch::randperm(resident, torch::TensorOptions().dtype(torch::kInt64).device(dev));
      pos = 0;
    }
    const auto idx = perm.narrow(0, pos, batch);
    pos += batch;
    const auto l = loss(model->forward(x.index_select(0, idx)), y.index_select(0, idx));
    opt.zero_grad();
    l.backward();
    clip_grad_norm(params, 1.0);
    opt.step(1e-3);
  };
  auto sync = [&] {
    // A device-to-host copy waits for the stream (torch::cuda::synchronize is not in LibTorch 1.13).
    if (dev.is_cuda()) (void)torch::zeros({1}, opts).cpu();
  };
  for (int64_t i = 0; i < warmup; ++i) step();
  sync();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps; ++i) step();
  sync();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Json j = Json::object();
  j.set("impl", "csipose").set("model", preset).set("device", dev.str()).set("batch_size", batch).set("steps", steps);
  j.set("warmup", warmup).set("threads", static_cast<int64_t>(torch::get_num_threads()));
  j.set("samples_per_s", static_cast<double>(steps * batch) / secs).set("step_ms", 1000.0 * secs / static_cast<double>(steps));
  set_runtime_fields(j);
  std::cout << j.dump() << std::endl;
  return 0;
}

namespace {
/// A field of /proc/self/status in KiB ("VmHWM:" the peak resident set, "VmRSS:" the current
/// one); 0 when unknown.
int64_t status_kib(const std::string& field) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(field, 0) == 0) return std::stoll(line.substr(field.size()));
  return 0;
}
int64_t peak_rss_kib() { return status_kib("VmHWM:"); }
}  // namespace

int infer_bench(const Args& args) {
  po::options_description desc("options");
  std::string checkpoint, backend;
  int64_t batch = 1, iters = 200, warmup = 20, threads = 0, profile = 0;
  desc.add_options()
      ("checkpoint", po::value(&checkpoint)->required(), "fp32 checkpoint / weight file or int8 .csq")
      ("batch-size", po::value(&batch)->default_value(1), "batch size of every forward")
      ("iters", po::value(&iters)->default_value(200), "timed forwards")
      ("warmup", po::value(&warmup)->default_value(20), "untimed forwards first")
      ("threads", po::value(&threads)->default_value(0), "LibTorch's CPU threads; OpenBLAS keeps one (0 = all cores)")
      ("int8-backend", po::value(&backend)->default_value(onednn_available() ? "onednn" : "reference"),
       "int8 accumulators: onednn | reference (quant/int8_backend.h)")
      ("profile", po::value(&profile)->default_value(0),
       "after the timed forwards, N more under an op profiler: a table of the ops' self time to stderr");
  po::variables_map vm;
  if (!parse_options("infer-bench",
                     "--checkpoint C [--batch-size 1] [--iters 200] [--threads N] [--int8-backend B] [--profile N]",
                     desc, args, vm))
    return 0;
  CSIPOSE_CHECK(batch >= 1 && iters >= 1 && warmup >= 0 && threads >= 0 && profile >= 0,
                "infer-bench: needs --batch-size >= 1, --iters >= 1, --warmup >= 0, --threads >= 0, --profile >= 0");
  set_int8_backend(parse_int8_backend(backend));
  if (threads > 0) set_cpu_threads(threads);
  // What the model adds to the process (weights, activations, kernels' code and scratch), apart
  // from LibTorch's own ~165 MiB: resident size after the timed forwards minus before the load.
  const int64_t rss_before = status_kib("VmRSS:");
  auto model = load_eval_model(checkpoint);
  model->eval();
  const bool int8 = !prepared_hooks(*model).hooks.empty();
  std::vector<int64_t> shape{batch};
  for (int64_t d : model->input_shape()) shape.push_back(d);
  torch::manual_seed(0);
  const torch::Tensor x = torch::rand(shape);
  // As `predict` runs: inference mode, no autograd bookkeeping per op.
  c10::InferenceMode inference;
  for (int64_t i = 0; i < warmup; ++i) (void)model->forward(x);
  std::vector<double> ms;
  ms.reserve(static_cast<size_t>(iters));
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iters; ++i) {
    const auto a = std::chrono::steady_clock::now();
    (void)model->forward(x);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - a).count());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const auto pct = [&](double q) {
    return sorted[std::min(sorted.size() - 1, static_cast<size_t>(q * static_cast<double>(sorted.size() - 1) + 0.5))];
  };
  Json j = Json::object();
  j.set("impl", "csipose").set("checkpoint", checkpoint).set("numerics", int8 ? "int8" : "fp32");
  j.set("int8_backend", int8 ? backend : std::string("-")).set("batch_size", batch).set("iters", iters);
  j.set("threads", static_cast<int64_t>(torch::get_num_threads()));
  // Throughput from the median forward (robust to a shared machine's stalls), the mean one beside it.
  j.set("p50_ms", pct(0.5)).set("p90_ms", pct(0.9)).set("samples_per_s", 1000.0 * static_cast<double>(batch) / pct(0.5));
  j.set("mean_samples_per_s", static_cast<double>(iters * batch) / secs);
  j.set("peak_rss_kib", peak_rss_kib()).set("model_rss_kib", status_kib("VmRSS:") - rss_before);
  set_runtime_fields(j);
  std::cout << j.dump() << std::endl;
  if (profile > 0) {
    // Separate forwards: the profiler's per-op cost stays out of the timings above. Shares are of
    // these profiled forwards' own wall time.
    OpProfile ops;
    const auto p0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < profile; ++i) (void)model->forward(x);
    const double profiled_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - p0).count() / profile;
    ops.stop();
    std::cerr << "## " << checkpoint << ": " << (int8 ? "int8" : "fp32") << ", batch " << batch << ", "
              << torch::get_num_threads() << " thread(s), " << profile << " profiled forwards of " << profiled_ms
              << " ms (unprofiled p50 " << pct(0.5) << " ms)\n\n"
              << format_op_table(ops.by_self_time(), profile, profiled_ms, 25);
  }
  return 0;
}

}  // namespace csipose::cli
