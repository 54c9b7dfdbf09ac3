#include "train/train_config.h"

#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "common/check.h"
#include "common/config_node.h"
#include "common/json.h"

namespace csipose {
namespace {

// Shortest decimal text that reads back as the same double (YAML round trip).
std::string num(double v) {
  char buf[64];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  std::string s = buf;
  // "1e-05" is a string to YAML 1.1 readers without a dot; "1.0e-05" is a float everywhere.
  if (s.find_first_of(".e") == std::string::npos && s.find("inf") == std::string::npos) s += ".0";
  else if (s.find('e') != std::string::npos && s.find('.') == std::string::npos) s.insert(s.find('e'), ".0");
  return s;
}

std::string str(const std::string& s) { return json_quote(s); }
const char* boolean(bool b) { return b ? "true" : "false"; }

MonitorSpec read_monitor(const ConfigNode& node, const std::string& key, const MonitorSpec& fallback) {
  const std::string text = node.get<std::string>(key, fallback.metric);
  try {
    return MonitorSpec::parse(text, node.path_of(key));
  } catch (const Error& e) {
    node.error(key, e.what());
  }
}

}  // namespace

const char* to_string(OptimizerType t) { return t == OptimizerType::adamw ? "adamw" : "sgd"; }
const char* to_string(ScheduleType t) {
  switch (t) {
    case ScheduleType::constant: return "constant";
    case ScheduleType::cosine: return "cosine";
    case ScheduleType::plateau: return "plateau";
  }
  return "?";
}
const char* to_string(MonitorMode m) { return m == MonitorMode::max ? "max" : "min"; }

std::string indent_yaml(const std::string& block, int spaces) {
  std::string out, pad(static_cast<size_t>(spaces), ' ');
  std::istringstream in(block);
  for (std::string line; std::getline(in, line);) out += (line.empty() ? "" : pad) + line + "\n";
  return out;
}

// ---- MonitorSpec ----------------------------------------------------------------------------------

MonitorMode MonitorSpec::mode() const {
  return metric.find("/pck@") != std::string::npos ? MonitorMode::max : MonitorMode::min;
}

MonitorSpec MonitorSpec::parse(const std::string& name, const std::string& where) {
  // split/subset/measure with measure pck@N, mpjpe or loss. The threshold is checked against the
  // dataset's MetricSpec when the run starts (the config does not know the dataset yet).
  const auto a = name.find('/'), b = a == std::string::npos ? a : name.find('/', a + 1);
  const std::string split = a == std::string::npos ? "" : name.substr(0, a);
  const std::string subset = b == std::string::npos ? "" : name.substr(a + 1, b - a - 1);
  const std::string measure = b == std::string::npos ? "" : name.substr(b + 1);
  const bool ok = split == "val" && (subset == "clean" || subset == "full") &&
                  (measure == "mpjpe" || measure == "loss" ||
                   (measure.rfind("pck@", 0) == 0 && measure.size() > 4));
  CSIPOSE_CHECK(ok, where, ": metric \"", name,
                "\" is not a validation metric; expected val/{clean|full}/{pck@N|mpjpe|loss}, e.g. val/clean/pck@20");
  MonitorSpec m;
  m.metric = name;
  return m;
}

// ---- components -----------------------------------------------------------------------------------

OptimizerConfig OptimizerConfig::from_yaml(const ConfigNode& n) {
  OptimizerConfig c;
  c.type = n.get_enum<OptimizerType>("type", c.type, {{"adamw", OptimizerType::adamw}, {"sgd", OptimizerType::sgd}});
  c.lr = n.get_double("lr", c.lr, 0.0, 10.0);
  const auto betas = n.get_list<double>("betas", {c.beta1, c.beta2});
  if (betas.size() != 2 || betas[0] < 0 || betas[0] >= 1 || betas[1] < 0 || betas[1] >= 1)
    n.error("betas", "expected two values in [0, 1), e.g. [0.9, 0.999]");
  c.beta1 = betas[0];
  c.beta2 = betas[1];
  c.eps = n.get_double("eps", c.eps, 0.0, 1.0);
  c.weight_decay = n.get_double("weight_decay", c.weight_decay, 0.0, 10.0);
  c.decay_norm_and_bias = n.get<bool>("decay_norm_and_bias", c.decay_norm_and_bias);
  if (c.lr <= 0) n.error("lr", "must be > 0");
  return c;
}

std::string OptimizerConfig::to_yaml() const {
  std::ostringstream o;
  o << "type: " << to_string(type) << "\nlr: " << num(lr) << "\nbetas: [" << num(beta1) << ", " << num(beta2)
    << "]\neps: " << num(eps) << "\nweight_decay: " << num(weight_decay)
    << "\ndecay_norm_and_bias: " << boolean(decay_norm_and_bias) << "\n";
  return o.str();
}

ScheduleConfig ScheduleConfig::from_yaml(const ConfigNode& n) {
  ScheduleConfig c;
  c.type = n.get_enum<ScheduleType>(
      "type", c.type,
      {{"constant", ScheduleType::constant}, {"cosine", ScheduleType::cosine}, {"plateau", ScheduleType::plateau}});
  c.warmup_epochs = n.get_double("warmup_epochs", c.warmup_epochs, 0.0, 1e6);
  c.warmup_start_factor = n.get_double("warmup_start_factor", c.warmup_start_factor, 0.0, 1.0);
  c.min_lr = n.get_double("min_lr", c.min_lr, 0.0, 10.0);
  if (n.has("plateau")) {
    const ConfigNode p = n.child("plateau");
    c.plateau_metric = read_monitor(p, "metric", c.plateau_metric);
    c.plateau_factor = p.get_double("factor", c.plateau_factor, 1e-6, 1.0 - 1e-6);
    c.plateau_patience = p.get_int("patience", c.plateau_patience, 0, 1000000);
    c.plateau_threshold = p.get_double("threshold", c.plateau_threshold, 0.0, 1.0);
    c.plateau_cooldown = p.get_int("cooldown", c.plateau_cooldown, 0, 1000000);
  }
  return c;
}

std::string ScheduleConfig::to_yaml() const {
  std::ostringstream o;
  o << "type: " << to_string(type) << "\nwarmup_epochs: " << num(warmup_epochs)
    << "\nwarmup_start_factor: " << num(warmup_start_factor) << "\nmin_lr: " << num(min_lr) << "\nplateau:\n"
    << "  metric: " << str(plateau_metric.metric) << "\n  factor: " << num(plateau_factor)
    << "\n  patience: " << plateau_patience << "\n  threshold: " << num(plateau_threshold)
    << "\n  cooldown: " << plateau_cooldown << "\n";
  return o.str();
}

EmaConfig EmaConfig::from_yaml(const ConfigNode& n) {
  EmaConfig c;
  c.decay = n.get_double("decay", c.decay, 0.0, 1.0 - 1e-12);
  c.warmup = n.get<bool>("warmup", c.warmup);
  return c;
}
std::string EmaConfig::to_yaml() const {
  return "decay: " + num(decay) + "\nwarmup: " + boolean(warmup) + "\n";
}

MixupConfig MixupConfig::from_yaml(const ConfigNode& n) {
  MixupConfig c;
  c.alpha = n.get_double("alpha", c.alpha, 0.0, 1e3);
  c.prob = n.get_double("prob", c.prob, 0.0, 1.0);
  return c;
}
std::string MixupConfig::to_yaml() const { return "alpha: " + num(alpha) + "\nprob: " + num(prob) + "\n"; }

AugmentConfig AugmentConfig::from_yaml(const ConfigNode& n) {
  AugmentConfig c;
  c.link_drop = n.get_double("link_drop", c.link_drop, 0.0, 1.0);
  c.noise_std = n.get_double("noise_std", c.noise_std, 0.0, 10.0);
  c.time_mask = n.get_int("time_mask", c.time_mask, 0, 1000000);
  c.scale = n.get_double("scale", c.scale, 0.0, 1.0);
  return c;
}
std::string AugmentConfig::to_yaml() const {
  return "link_drop: " + num(link_drop) + "\nnoise_std: " + num(noise_std) + "\ntime_mask: " +
         std::to_string(time_mask) + "\nscale: " + num(scale) + "\n";
}

EarlyStoppingConfig EarlyStoppingConfig::from_yaml(const ConfigNode& n) {
  EarlyStoppingConfig c;
  c.monitor = read_monitor(n, "metric", c.monitor);
  c.patience = n.get_int("patience", c.patience, 0, 1000000);
  c.min_delta = n.get_double("min_delta", c.min_delta, 0.0, 1e9);
  return c;
}
std::string EarlyStoppingConfig::to_yaml() const {
  return "metric: " + str(monitor.metric) + "\npatience: " + std::to_string(patience) + "\nmin_delta: " +
         num(min_delta) + "\n";
}

TtaConfig TtaConfig::from_yaml(const ConfigNode& n) {
  TtaConfig c;
  c.views = n.get_list<std::string>("views", c.views);
  if (c.views.empty()) n.error("views", "needs at least one view (e.g. [identity])");
  for (size_t i = 0; i < c.views.size(); ++i) {
    const std::string& v = c.views[i];
    const auto colon = v.find(':');
    const std::string kind = v.substr(0, colon);
    bool ok = false;
    if (kind == "identity") {
      ok = colon == std::string::npos;
    } else if ((kind == "scale" || kind == "shift") && colon != std::string::npos) {
      char* end = nullptr;
      const std::string arg = v.substr(colon + 1);
      const double value = std::strtod(arg.c_str(), &end);
      ok = !arg.empty() && *end == '\0' && (kind == "scale" ? value > 0 : value == static_cast<long>(value));
    }
    if (!ok)
      n.error("views", "view " + std::to_string(i) + " \"" + v +
                           "\" is not one of: identity, scale:F (F > 0), shift:K (integer time steps)");
  }
  return c;
}
std::string TtaConfig::to_yaml() const {
  std::string s = "views: [";
  for (size_t i = 0; i < views.size(); ++i) s += (i ? ", " : "") + str(views[i]);
  return s + "]\n";
}

TrainConfig TrainConfig::from_yaml(const ConfigNode& n) {
  TrainConfig c;
  c.epochs = n.get_int("epochs", c.epochs, 1, 1000000);
  c.batch_size = n.get_int("batch_size", c.batch_size, 1, 1 << 20);
  c.eval_batch_size = n.get_int("eval_batch_size", c.eval_batch_size, 1, 1 << 20);
  c.grad_clip = n.get_double("grad_clip", c.grad_clip, 0.0, 1e9);
  if (n.has("optimizer")) c.optimizer = OptimizerConfig::from_yaml(n.child("optimizer"));
  if (n.has("schedule")) c.schedule = ScheduleConfig::from_yaml(n.child("schedule"));
  if (n.has("ema")) c.ema = EmaConfig::from_yaml(n.child("ema"));
  if (n.has("mixup")) c.mixup = MixupConfig::from_yaml(n.child("mixup"));
  if (n.has("augment")) c.augment = AugmentConfig::from_yaml(n.child("augment"));
  if (n.has("early_stopping")) c.early_stopping = EarlyStoppingConfig::from_yaml(n.child("early_stopping"));
  c.best = read_monitor(n, "best_metric", c.best);
  if (n.has("tta")) c.tta = TtaConfig::from_yaml(n.child("tta"));
  c.init_output = n.get<std::string>("init_output", c.init_output);
  if (c.init_output != "label_mean" && c.init_output != "none")
    n.error("init_output", "unknown value \"" + c.init_output + "\"; expected one of: label_mean, none");
  return c;
}

std::string TrainConfig::to_yaml() const {
  std::ostringstream o;
  o << "epochs: " << epochs << "\nbatch_size: " << batch_size << "\neval_batch_size: " << eval_batch_size
    << "\ngrad_clip: " << num(grad_clip) << "\noptimizer:\n" << indent_yaml(optimizer.to_yaml(), 2)
    << "schedule:\n" << indent_yaml(schedule.to_yaml(), 2) << "ema:\n" << indent_yaml(ema.to_yaml(), 2)
    << "mixup:\n" << indent_yaml(mixup.to_yaml(), 2) << "augment:\n" << indent_yaml(augment.to_yaml(), 2)
    << "early_stopping:\n" << indent_yaml(early_stopping.to_yaml(), 2) << "best_metric: " << str(best.metric)
    << "\ntta:\n" << indent_yaml(tta.to_yaml(), 2) << "init_output: " << str(init_output) << "\n";
  return o.str();
}

DataConfig DataConfig::from_yaml(const ConfigNode& n) {
  DataConfig c;
  c.root = n.get<std::string>("root", c.root);
  c.synth = n.get<std::string>("synth", c.synth);
  c.split_file = n.get<std::string>("split_file", c.split_file);
  c.split_seed = n.get_int("split_seed", c.split_seed, 0);
  c.train_subset = n.get<std::string>("train_subset", c.train_subset);
  if (c.root.empty()) n.error("root", "must name a dataset directory");
  if (c.train_subset != "clean" && c.train_subset != "full")
    n.error("train_subset", "unknown value \"" + c.train_subset + "\"; expected one of: clean, full");
  return c;
}
std::string DataConfig::to_yaml() const {
  return "root: " + str(root) + "\nsynth: " + str(synth) + "\nsplit_file: " + str(split_file) +
         "\nsplit_seed: " + std::to_string(split_seed) + "\ntrain_subset: " + str(train_subset) + "\n";
}

// ---- the experiment -------------------------------------------------------------------------------

QatConfig QatConfig::from_yaml(const ConfigNode& n) {
  QatConfig c;
  c.enabled = true;
  c.init_from = n.get<std::string>("init_from", c.init_from);
  const std::string policy_file = n.get<std::string>("policy_file", "");
  if (!policy_file.empty() && n.has("policy"))
    n.error("policy_file", "set either policy (inline) or policy_file, not both");
  if (!policy_file.empty()) {
    try {
      c.policy = QuantPolicy::load_file(policy_file);
    } catch (const Error& e) {
      n.error("policy_file", e.what());
    }
  } else if (n.has("policy")) {
    c.policy = QuantPolicy::from_yaml(n.child("policy"));
  }
  c.bn_update_epochs = n.get_int("bn_update_epochs", c.bn_update_epochs, 0);
  c.observer_update_epochs = n.get_int("observer_update_epochs", c.observer_update_epochs, 1);
  c.sensitivity = n.get<bool>("sensitivity", c.sensitivity);
  if (n.has("learned_scales")) {
    const ConfigNode l = n.child("learned_scales");
    c.learned_scales = LearnedScalesConfig::from_yaml(l);
    if (!c.learned_scales.enabled())
      l.error("activations", "learned_scales learns nothing (weights: false, activations: none); remove the section");
  }
  return c;
}

std::string QatConfig::to_yaml() const {
  return "init_from: " + str(init_from) + "\nbn_update_epochs: " + std::to_string(bn_update_epochs) +
         "\nobserver_update_epochs: " + std::to_string(observer_update_epochs) +
         (sensitivity ? "" : "\nsensitivity: false") +
         (learned_scales.enabled() ? "\nlearned_scales:\n" + indent_yaml(learned_scales.to_yaml(), 2) : std::string("\n")) +
         "policy:\n" + indent_yaml(policy.to_yaml(), 2);
}

ExperimentConfig ExperimentConfig::from_yaml(const ConfigNode& n) {
  ExperimentConfig c;
  c.name = n.get<std::string>("name", c.name);
  if (c.name.empty() || c.name.find('/') != std::string::npos || c.name == "." || c.name == "..")
    n.error("name", "\"" + c.name + "\" is not usable as a directory name");
  c.seed = static_cast<uint64_t>(n.get_int("seed", 0, 0));
  c.device = n.get<std::string>("device", c.device);
  if (n.has("data")) c.data = DataConfig::from_yaml(n.child("data"));
  c.model = ModelConfig::from_yaml(n.child("model"));
  if (n.has("train")) c.train = TrainConfig::from_yaml(n.child("train"));
  if (n.has("qat")) c.qat = QatConfig::from_yaml(n.child("qat"));
  return c;
}

ExperimentConfig ExperimentConfig::load(const std::string& path, const std::vector<std::string>& overrides) {
  const ConfigNode root = ConfigNode::load_file(path, overrides);
  ExperimentConfig c = from_yaml(root);
  root.finish();
  return c;
}

ExperimentConfig ExperimentConfig::parse(const std::string& yaml, const std::string& source,
                                         const std::vector<std::string>& overrides) {
  const ConfigNode root = ConfigNode::load_string(yaml, source, overrides);
  ExperimentConfig c = from_yaml(root);
  root.finish();
  return c;
}

std::string ExperimentConfig::to_yaml() const {
  std::ostringstream o;
  o << "# resolved csipose experiment config (every default spelled out)\n"
    << "name: " << str(name) << "\nseed: " << seed << "\ndevice: " << str(device) << "\ndata:\n"
    << indent_yaml(data.to_yaml(), 2) << "model:\n" << indent_yaml(model.to_yaml(), 2) << "train:\n"
    << indent_yaml(train.to_yaml(), 2);
  if (qat.enabled) o << "qat:\n" << indent_yaml(qat.to_yaml(), 2);
  return o.str();
}

}  // namespace csipose
