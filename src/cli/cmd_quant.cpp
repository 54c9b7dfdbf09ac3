// csipose ptq: post-training quantization of a checkpoint (static with a calibration set, or
// dynamic), evaluated as a fake-quant model under the locked metric next to its fp32 numbers.
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <optional>

#include "cli/commands.h"
#include "cli/options.h"
#include "common/atomic_file.h"
#include "common/config_node.h"
#include "common/device.h"
#include "common/version.h"
#include "data/loader.h"
#include "models/int8_checkpoint.h"
#include "quant/prepare.h"
#include "train/sensitivity.h"
#include "train/trainer.h"

namespace csipose::cli {
namespace {

/// Converts a prepared model (static qparams) to int8, writes `out` and evaluates the model read
/// back from it on `test`.
EvalMetrics write_int8(PoseModelImpl& model, const ModelConfig& mc, const QuantPolicy& policy, const std::string& out,
                       const std::map<std::string, std::string>& source_meta, const std::string& source,
                       const PoseDataset& data, const EvalSet& test, const PoseLoss& loss, c10::Device dev) {
  model.to(torch::kCPU);
  PreparedModel p = prepared_hooks(model);
  p.convert(model);
  std::map<std::string, std::string> meta;
  meta["metric"] = data.spec.describe();
  meta["source"] = source;
  meta["git_sha"] = git_sha();
  if (auto it = source_meta.find("experiment_config"); it != source_meta.end()) meta["experiment_config"] = it->second;
  save_int8_checkpoint(out, mc, policy, model, meta);
  auto int8 = load_int8_checkpoint(out);
  int8.model->to(dev);
  return test.evaluate(*int8.model, loss, {"identity"});
}

void print_row(const char* name, const EvalMetrics& m) {
  std::printf("%-24s %7.2f%% %7.2f%% %7.2f%% %7.2f%% %10.6f\n", name, 100 * m.full.pck_at(0.2), 100 * m.full.pck_at(0.5),
              100 * m.clean.pck_at(0.2), 100 * m.clean.pck_at(0.5), m.clean.mpjpe);
}

void print_header() {
  std::printf("%-24s %8s %8s %8s %8s %10s\n", "model", "PCK@20", "PCK@50", "cln@20", "cln@50", "cln MPJPE");
}

}  // namespace

int convert(const Args& args) {
  po::options_description desc("options");
  std::string checkpoint, out, data_dir, device, json;
  desc.add_options()
      ("checkpoint", po::value(&checkpoint)->required(), "QAT checkpoint (a qat run's checkpoints/best or last)")
      ("out", po::value(&out)->required(), "int8 model file to write (.csq)")
      ("data", po::value(&data_dir), "dataset directory for the evaluation (default: the checkpoint's)")
      ("device", po::value(&device)->default_value("cpu"), "evaluation device: cpu | cuda | cuda:N | auto")
      ("json", po::value(&json)->default_value(""), "write the result JSON here");
  po::variables_map vm;
  if (!parse_options("convert", "--checkpoint C --out M.csq [--data DIR] [--json OUT]", desc, args, vm)) return 0;
  ModelConfig mc;
  std::map<std::string, std::string> meta;
  auto model = load_eval_model(checkpoint, &mc, &meta);
  CSIPOSE_CHECK(meta.count("quant_state"), "convert: ", checkpoint,
                " is not a QAT checkpoint (no quantization state); quantize an fp32 checkpoint with "
                "`csipose ptq --mode static --out M.csq` or train it with `csipose qat`");
  const ExperimentConfig exp = ExperimentConfig::parse(meta.at("experiment_config"), checkpoint + " [experiment_config]");
  DataConfig dc = checkpoint_data_config("convert", checkpoint, meta, data_dir);
  const PoseDataset data = open_run_dataset(dc);
  const c10::Device dev = parse_device(device);
  const PoseLoss loss(skeleton_bones(data.spec.skeleton), data.num_joints());
  const EvalSet test(data, Split::test, dev, 256);
  model->to(dev);
  const EvalMetrics fq = test.evaluate(*model, loss, {"identity"});
  const EvalMetrics i8 = write_int8(*model, mc, exp.qat.policy, out, meta, checkpoint, data, test, loss, dev);
  const Int8Size size = int8_checkpoint_size(out);
  std::printf("convert %s -> %s (%lld bytes: %lld int8 weights + int32 biases, %lld float), test split on %s:\n",
              checkpoint.c_str(), out.c_str(), static_cast<long long>(size.file_bytes),
              static_cast<long long>(size.int8_weight_bytes), static_cast<long long>(size.float_bytes), dev.str().c_str());
  print_header();
  print_row("fake-quant", fq);
  print_row("int8", i8);
  std::printf("fake-quant - int8: %.2f points PCK@20 (full), %.2f (clean)\nmetric: %s\n",
              100 * (fq.full.pck_at(0.2) - i8.full.pck_at(0.2)), 100 * (fq.clean.pck_at(0.2) - i8.clean.pck_at(0.2)),
              data.spec.describe().c_str());
  if (!json.empty()) {
    Json j = Json::object();
    j.set("checkpoint", checkpoint).set("int8_model", out).set("device", dev.str()).set("git_sha", git_sha());
    j.set("metric_definition", data.spec.describe()).set("fake_quant", fq.to_json()).set("int8", i8.to_json());
    j.set("int8_file_bytes", size.file_bytes).set("int8_weight_bytes", size.int8_weight_bytes);
    write_text_atomic(json, j.dump(2) + "\n");
  }
  return 0;
}

int ptq(const Args& args) {
  po::options_description desc("options");
  std::string checkpoint, data_dir, mode, observer, policy_file, device, json, calib_out, int8_out, policy_out;
  std::string budget_metric;
  int64_t calibration = 32, batch = 64, seed = 0;
  double budget = -1;
  bool sensitivity = false;
  desc.add_options()
      ("checkpoint", po::value(&checkpoint)->required(), "fp32 checkpoint (training, best or weights init)")
      ("data", po::value(&data_dir), "dataset directory (default: the one the checkpoint was trained on)")
      ("mode", po::value(&mode)->default_value("static"), "static (calibrated activation ranges) | dynamic (per batch at run time)")
      ("calibration", po::value(&calibration)->default_value(32), "static: number of calibration batches from the train split")
      ("batch-size", po::value(&batch)->default_value(64), "calibration and evaluation batch size")
      ("observer", po::value(&observer)->default_value("histogram"),
       "static: activation observer minmax | histogram (MSE-optimal range); a --policy file's observer wins")
      ("policy", po::value(&policy_file), "quantization policy YAML (default: int8 per-channel weights, int8 activations)")
      ("seed", po::value(&seed)->default_value(0), "seed of the calibration batch order")
      ("device", po::value(&device)->default_value("cpu"), "cpu | cuda | cuda:N | auto")
      ("calibration-out", po::value(&calib_out)->default_value(""), "write the calibration set (window indices) and observer states here (JSON)")
      ("sensitivity", po::bool_switch(&sensitivity), "per-layer sensitivity table: each op's SQNR and the PCK@20 drop with only that op quantized")
      ("metric", po::value(&budget_metric)->default_value("val/clean/pck@20"),
       "split/subset/measure of the sensitivity table and the --auto-budget search (measure pck@K | mpjpe | loss)")
      ("auto-budget", po::value(&budget), "max drop of --metric vs fp32 (PCK in points): move the most sensitive ops to fp32 until it holds (implies --sensitivity)")
      ("policy-out", po::value(&policy_out)->default_value(""), "write the final policy YAML here (with --auto-budget: including the fp32 ops it chose)")
      ("out", po::value(&int8_out)->default_value(""), "static: also convert to int8, write this .csq and evaluate it")
      ("json", po::value(&json)->default_value(""), "write the result JSON here");
  po::variables_map vm;
  if (!parse_options("ptq", "--checkpoint C [--mode static|dynamic] [--calibration N] [--auto-budget P] [--json OUT]", desc,
                     args, vm))
    return 0;
  CSIPOSE_CHECK(mode == "static" || mode == "dynamic", "ptq: --mode must be static or dynamic, got \"", mode, "\"");
  CSIPOSE_CHECK(calibration > 0 && batch > 0, "ptq: --calibration and --batch-size must be > 0");
  CSIPOSE_CHECK(int8_out.empty() || mode == "static", "ptq: --out needs --mode static (dynamic qparams are per call)");
  CSIPOSE_CHECK(observer == "minmax" || observer == "histogram", "ptq: --observer must be minmax or histogram, got \"", observer, "\"");
  const bool auto_search = vm.count("auto-budget") > 0;
  CSIPOSE_CHECK(!auto_search || (std::isfinite(budget) && budget >= 0), "ptq: --auto-budget must be >= 0 points, got ", budget);
  sensitivity = sensitivity || auto_search;
  const MonitorSpec metric = MonitorSpec::parse(budget_metric, "ptq --metric");
  const Split split_for_sensitivity = parse_split(budget_metric.substr(0, budget_metric.find('/')));

  ModelConfig mc;
  std::map<std::string, std::string> meta;
  auto model = load_eval_model(checkpoint, &mc, &meta);
  DataConfig dc = checkpoint_data_config("ptq", checkpoint, meta, data_dir);
  const PoseDataset data = open_run_dataset(dc);
  const c10::Device dev = parse_device(device);
  model->to(dev);
  model->eval();
  const PoseLoss loss(skeleton_bones(data.spec.skeleton), data.num_joints());
  check_monitor(metric, data.spec, "ptq --metric");
  const EvalSet test(data, Split::test, dev, 256);
  const EvalMetrics fp32 = test.evaluate(*model, loss, {"identity"});

  QuantPolicy policy = policy_file.empty() ? QuantPolicy{} : QuantPolicy::load_file(policy_file);
  if (policy_file.empty()) {
    ObserverConfig oc;
    oc.type = observer == "histogram" ? ObserverType::histogram : ObserverType::minmax;
    policy.activation_observer = mode == "dynamic" ? ObserverConfig{} : oc;
  }
  // prepare + calibrate (static: the first n batches of train/clean in the seeded order; observers
  // frozen after) or switch to dynamic qparams; the model ends in fake-quant mode.
  Json calib = Json::object();
  auto quantize_with = [&](const QuantPolicy& p) {
    PreparedModel prepared = prepare(*model, p, model->bn_fold_pairs());
    if (mode == "static") {
      const auto windows = calibrate_static(*model, prepared, data, calibration, batch, static_cast<uint64_t>(seed), dev);
      calib = Json::object();
      calib.set("batches", (static_cast<int64_t>(windows.size()) + batch - 1) / batch).set("windows", Json(windows));
    } else {
      prepared.set_dynamic(true);
    }
    prepared.set_mode(QuantMode::fake_quant);
    return prepared;
  };
  PreparedModel prepared = quantize_with(policy);

  std::optional<SensitivityReport> sens;
  std::optional<AutoBudgetResult> search;
  if (sensitivity) {
    const EvalSet sens_set(data, split_for_sensitivity, dev, 256);
    sens = layer_sensitivity(*model, prepared, sens_set, loss, sensitivity_probe(data, metric, dev), metric);
    if (auto_search) {
      search = auto_budget(*model, prepared, sens_set, loss, *sens, budget);
      if (!search->fp32_layers.empty()) {
        // The chosen mixed-precision policy, prepared and calibrated from scratch: what --out converts
        // and what a .csq / a QAT run (qat.policy_file) reproduces.
        policy = with_fp32_layers(policy, search->fp32_layers);
        unprepare(*model);
        prepared = quantize_with(policy);
      }
    }
  }
  const EvalMetrics q = test.evaluate(*model, loss, {"identity"});
  if (!calib_out.empty()) {
    calib.set("checkpoint", checkpoint).set("split", "train/clean").set("seed", seed);
    calib.set("policy", policy.to_yaml()).set("observers", prepared.state());
    write_text_atomic(calib_out, calib.dump() + "\n");
  }
  if (!policy_out.empty()) write_text_atomic(policy_out, policy.to_yaml());
  std::optional<EvalMetrics> i8;
  if (!int8_out.empty()) i8 = write_int8(*model, mc, policy, int8_out, meta, checkpoint, data, test, loss, dev);

  if (sens) std::printf("%s\n", sens->table().c_str());
  if (search) std::printf("%s\n", search->table().c_str());
  std::printf("ptq %s of %s (%zu quantized ops) on %s, test split:\n", mode.c_str(), checkpoint.c_str(),
              prepared.hooks.size(), dev.str().c_str());
  print_header();
  print_row("fp32", fp32);
  print_row(mode == "static" ? "fake-quant (PTQ static)" : "fake-quant (PTQ dyn.)", q);
  if (i8) print_row("int8 (PTQ static)", *i8);
  std::printf("metric: %s\n", data.spec.describe().c_str());
  if (!json.empty()) {
    Json j = Json::object();
    j.set("checkpoint", checkpoint).set("mode", mode).set("device", dev.str()).set("git_sha", git_sha());
    j.set("quantized_ops", static_cast<int64_t>(prepared.hooks.size())).set("policy", policy.to_yaml());
    j.set("metric_definition", data.spec.describe()).set("fp32", fp32.to_json()).set("fake_quant", q.to_json());
    j.set("folded_batchnorms", prepared.folded_bn());
    if (i8) j.set("int8", i8->to_json()).set("int8_model", int8_out);
    if (sens) j.set("sensitivity", sens->to_json());
    if (search) j.set("auto_budget", search->to_json());
    write_text_atomic(json, j.dump(2) + "\n");
  }
  return 0;
}

}  // namespace csipose::cli
