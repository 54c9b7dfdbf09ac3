#include "train/trainer.h"

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "common/check.h"
#include "common/config_node.h"
#include "common/hash.h"
#include "common/progress.h"
#include "common/rng.h"
#include "data/synth/generator.h"
#include "models/checkpoint.h"
#include "models/int8_checkpoint.h"
#include "models/safetensors.h"
#include "train/augment.h"

namespace csipose {
namespace {

// Streams of the run seed: each kind of randomness has its own, so changing one (e.g. enabling
// mixup) does not shift the others.
constexpr uint64_t kStreamStep = 1;   // torch generator seed per step: dropout, augmentations
constexpr uint64_t kStreamMixup = 2;  // mixup lambda and pairing per step

LoaderOptions train_loader_options(const ExperimentConfig& c, c10::Device device) {
  LoaderOptions o;
  o.batch_size = c.train.batch_size;
  o.shuffle = true;
  o.seed = c.seed;
  // Training drops the last partial batch: a batch of one breaks BatchNorm, and a fixed number of
  // equal-size steps per epoch keeps the schedule simple. Evaluation never drops.
  o.drop_last = true;
  o.device = device;
  return o;
}

Json optional_json(const std::optional<double>& v) { return v ? Json(*v) : Json(); }
std::optional<double> optional_from(const Json& j) {
  if (j.is_null()) return std::nullopt;
  return j.as_double();
}

const std::string& meta(const std::map<std::string, std::string>& m, const std::string& key, const std::string& path) {
  auto it = m.find(key);
  CSIPOSE_CHECK(it != m.end(), path, ": not a training checkpoint (no ", key,
                "); it can be evaluated or used with --init-from, not resumed");
  return it->second;
}

}  // namespace

Json EpochStats::to_json() const {
  Json j = Json::object();
  j.set("epoch", epoch).set("steps", steps).set("samples", samples).set("train_loss", loss);
  j.set("grad_norm", grad_norm).set("lr_first", lr_first).set("lr_last", lr_last);
  j.set("seconds", seconds).set("samples_per_s", samples_per_s);
  return j;
}

Json TrainState::to_json() const {
  Json j = Json::object();
  j.set("epoch", epoch).set("step", step).set("best_value", optional_json(best_value)).set("best_epoch", best_epoch);
  j.set("early_best", optional_json(early_best)).set("bad_epochs", bad_epochs).set("stopped_early", stopped_early);
  j.set("train_seconds", train_seconds);
  return j;
}

TrainState TrainState::from_json(const Json& j) {
  TrainState s;
  s.epoch = j.at("epoch").as_int();
  s.step = j.at("step").as_int();
  s.best_value = optional_from(j.at("best_value"));
  s.best_epoch = j.at("best_epoch").as_int();
  s.early_best = optional_from(j.at("early_best"));
  s.bad_epochs = j.at("bad_epochs").as_int();
  s.stopped_early = j.at("stopped_early").as_bool();
  s.train_seconds = j.at("train_seconds").as_double();
  return s;
}

std::string dataset_fingerprint(const PoseDataset& data) {
  // Sizes of every split and subset plus a hash of the labels' bytes: cheap, and any change of
  // files, split or labels shows.
  std::vector<int64_t> v{data.size(), data.num_joints()};
  for (Split s : {Split::train, Split::val, Split::test})
    for (Subset sub : {Subset::full, Subset::clean}) v.push_back(static_cast<int64_t>(data.indices(s, sub).size()));
  const auto y = data.y.contiguous();
  const uint64_t h = fnv1a64(y.data_ptr(), static_cast<size_t>(y.numel()) * sizeof(float));
  v.push_back(static_cast<int64_t>(h));
  return std::string(to_string(data.layout)) + ":" + fingerprint(v);
}

Trainer::Trainer(ExperimentConfig config, const PoseDataset& data, c10::Device device)
    : config_(std::move(config)),
      data_(data),
      device_(device),
      schedule_(config_.train.schedule, config_.train.optimizer.lr, 1, 1),  // replaced below
      loss_(skeleton_bones(data.spec.skeleton), data.num_joints()),
      train_loader_(data.x, data.y,
                    data.indices(Split::train, config_.data.train_subset == "clean" ? Subset::clean : Subset::full),
                    train_loader_options(config_, device)) {
  CSIPOSE_CHECK(config_.model.dataset() == to_string(data.layout), "model ",
                config_.model.preset.empty() ? to_string(config_.model.type) : config_.model.preset, " reads the ",
                config_.model.dataset(), " layout but ", data.root, " is a ", to_string(data.layout), " dataset");
  check_monitor(config_.train.best, data.spec, "train.best_metric");
  check_monitor(config_.train.early_stopping.monitor, data.spec, "train.early_stopping.metric");
  check_monitor(config_.train.schedule.plateau_metric, data.spec, "train.schedule.plateau.metric");
  CSIPOSE_CHECK(train_loader_.num_batches() > 0, "train split of ", data.root, " has ", train_loader_.num_samples(),
                " windows, fewer than one batch of ", config_.train.batch_size);

  torch::manual_seed(config_.seed);
  model_ = make_model(config_.model);
  const auto shape = model_->input_shape();
  CSIPOSE_CHECK(std::vector<int64_t>(data.x.sizes().begin() + 1, data.x.sizes().end()) == shape,
                "model input (per sample) ", c10::IntArrayRef(shape), " does not match the dataset's windows ",
                data.x.sizes().slice(1));
  CSIPOSE_CHECK(model_->num_keypoints() == data.num_joints(), "model predicts ", model_->num_keypoints(),
                " keypoints, the dataset has ", data.num_joints());
  if (config_.train.init_output == "label_mean") {
    const auto train_idx = torch::tensor(data.indices(Split::train, Subset::clean), torch::kInt64);
    init_output_from_labels(*model_, data.y.index_select(0, train_idx));
  }
  model_->to(device_);
  links_ = num_links(shape);
  params_ = optimizer_params(*model_, config_.train.optimizer.decay_norm_and_bias);
  optimizer_ = std::make_unique<Optimizer>(config_.train.optimizer, params_);
  schedule_ = LrSchedule(config_.train.schedule, config_.train.optimizer.lr, train_loader_.num_batches(),
                         config_.train.epochs);
  if (config_.train.ema.enabled()) {
    ema_ = std::make_unique<Ema>(config_.train.ema, *model_);
    eval_model_ = make_model(config_.model);
    eval_model_->to(device_);
    eval_model_->eval();
  }
  val_ = std::make_unique<EvalSet>(data, Split::val, device_, config_.train.eval_batch_size);
  if (config_.qat.enabled) {
    if (!config_.qat.init_from.empty()) init_weights_from(config_.qat.init_from);
    prepared_ = prepare(*model_, config_.qat.policy, model_->bn_fold_pairs());
    prepared_->set_mode(QuantMode::fake_quant);
    if (eval_model_) {
      prepared_eval_ = prepare(*eval_model_, config_.qat.policy, eval_model_->bn_fold_pairs());
      prepared_eval_->set_mode(QuantMode::fake_quant);
    }
    const LearnedScalesConfig& lsq = config_.qat.learned_scales;
    if (lsq.enabled()) {
      // LSQ / LSQ+: step sizes initialized from the warm-start weights (activations on the first
      // batch), trained with the weights at lr * lsq.lr_scale and without weight decay.
      prepared_->enable_learned(*model_, lsq);
      if (prepared_eval_) prepared_eval_->enable_learned(*eval_model_, lsq);
      for (auto& [name, t] : prepared_->learned_parameters())
        params_.push_back(NamedParam{"lsq." + name, t, /*decay=*/false, lsq.lr_scale});
      optimizer_ = std::make_unique<Optimizer>(config_.train.optimizer, params_);
    }
  }
}

uint64_t Trainer::step_seed(int64_t step) const {
  return Rng(config_.seed ^ 0x5EEDull, kStreamStep + 16 * static_cast<uint64_t>(step)).next_u64();
}

std::string Trainer::data_order_fingerprint(int64_t epoch) {
  train_loader_.set_epoch(epoch);
  return fingerprint(train_loader_.order());
}

EpochStats Trainer::train_one_epoch() {
  CSIPOSE_CHECK(!finished(), "training is already finished (", state_.epoch, " epochs)");
  const auto t0 = std::chrono::steady_clock::now();
  EpochStats st;
  st.epoch = state_.epoch + 1;
  train_loader_.set_epoch(state_.epoch);
  model_->train();
  if (prepared_) {
    // The torchvision QAT schedule, a function of the epoch alone (so a resumed run repeats it).
    prepared_->freeze_bn(state_.epoch >= config_.qat.bn_update_epochs);
    prepared_->freeze_observers(state_.epoch >= config_.qat.observer_update_epochs);
  }
  const int64_t n = train_loader_.num_batches();
  const auto opts = torch::TensorOptions().device(device_).dtype(torch::kFloat64);
  auto loss_sum = torch::zeros({}, opts), norm_sum = torch::zeros({}, opts);
  Progress progress("epoch " + std::to_string(st.epoch) + "/" + std::to_string(config_.train.epochs),
                    n * config_.train.batch_size, "samples");
  const bool tty = stderr_is_tty();
  auto last_note = std::chrono::steady_clock::now();
  st.lr_first = schedule_.lr_at(state_.step);
  for (int64_t b = 0; b < n; ++b) {
    torch::manual_seed(step_seed(state_.step));
    Batch batch = train_loader_.batch(b);
    auto x = augment_inputs(batch.x, config_.train.augment, links_);
    auto y = batch.y;
    if (config_.train.mixup.enabled()) {
      Rng rng(config_.seed ^ 0x313Aull, kStreamMixup + 16 * static_cast<uint64_t>(state_.step));
      apply_mixup(x, y, draw_mixup(config_.train.mixup, x.size(0), rng));
    }
    const auto pred = model_->forward(x);
    const auto loss = loss_(pred, y);
    optimizer_->zero_grad();
    loss.backward();
    const auto norm = clip_grad_norm(params_, config_.train.grad_clip);
    const double lr = schedule_.lr_at(state_.step);
    optimizer_->step(lr);
    if (ema_) ema_->update(*model_);
    loss_sum += loss.detach();
    norm_sum += norm.to(opts);
    ++state_.step;
    st.lr_last = lr;
    if (step_hook_) step_hook_(state_.step, loss.item<double>());
    // The loss in the bar needs a host sync: at most every half second, and only on a terminal.
    std::string note;
    const auto now = std::chrono::steady_clock::now();
    if (tty && now - last_note > std::chrono::milliseconds(500)) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "loss %.5f lr %.2e", loss.item<double>(), lr);
      note = buf;
      last_note = now;
    }
    progress.advance(batch.x.size(0), note);
  }
  st.steps = n;
  st.samples = n * config_.train.batch_size;
  st.loss = loss_sum.item<double>() / static_cast<double>(n);
  st.grad_norm = norm_sum.item<double>() / static_cast<double>(n);
  CSIPOSE_CHECK(std::isfinite(st.loss), "training diverged: the mean loss of epoch ", st.epoch, " is ", st.loss,
                " (lr ", st.lr_last, "); lower train.optimizer.lr or enable train.grad_clip");
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.samples_per_s = static_cast<double>(st.samples) / std::max(st.seconds, 1e-9);
  char buf[96];
  std::snprintf(buf, sizeof buf, "loss %.5f, %.0f samples/s", st.loss, st.samples_per_s);
  progress.finish(buf);
  state_.epoch += 1;
  state_.train_seconds += st.seconds;
  return st;
}

PoseModelImpl& Trainer::eval_model() {
  if (!ema_) return *model_;
  ema_->copy_to(*eval_model_);
  if (prepared_eval_) {
    // The EMA weights are evaluated with the training model's activation qparams.
    prepared_eval_->load_state(prepared_->state());
    prepared_eval_->freeze_observers(true);
  }
  return *eval_model_;
}

EvalMetrics Trainer::validate() {
  PoseModelImpl& m = eval_model();
  // Without EMA the training model itself is evaluated: its observers must not move on val data.
  const bool was_frozen = prepared_ && !prepared_eval_ && prepared_->hooks.front().second->observers_frozen();
  if (prepared_ && !prepared_eval_) prepared_->freeze_observers(true);
  EvalMetrics r = val_->evaluate(m, loss_, {"identity"});
  if (prepared_ && !prepared_eval_) prepared_->freeze_observers(was_frozen);
  return r;
}

bool Trainer::record_validation(const EvalMetrics& val) {
  const auto better = [](MonitorMode mode, double v, double ref, double delta) {
    return mode == MonitorMode::max ? v > ref + delta : v < ref - delta;
  };
  const MonitorSpec& best = config_.train.best;
  const double v = val.value(best);
  const bool improved = !state_.best_value || better(best.mode(), v, *state_.best_value, 0.0);
  if (improved) {
    state_.best_value = v;
    state_.best_epoch = state_.epoch;
  }
  const auto& es = config_.train.early_stopping;
  if (es.patience > 0) {
    const double e = val.value(es.monitor);
    if (!state_.early_best || better(es.monitor.mode(), e, *state_.early_best, es.min_delta)) {
      state_.early_best = e;
      state_.bad_epochs = 0;
    } else if (++state_.bad_epochs >= es.patience) {
      state_.stopped_early = true;
    }
  }
  schedule_.on_validation(val.value(config_.train.schedule.plateau_metric));
  return improved;
}

bool Trainer::finished() const { return state_.stopped_early || state_.epoch >= config_.train.epochs; }

void Trainer::save(const std::string& path, const std::map<std::string, std::string>& extra) {
  std::map<std::string, std::string> m = extra;
  m["kind"] = "train";
  m["experiment_config"] = config_.to_yaml();
  m["train_state"] = state_.to_json().dump();
  m["optimizer_steps"] = std::to_string(optimizer_->steps());
  m["schedule_state"] = schedule_.state().dump();
  m["ema_updates"] = ema_ ? std::to_string(ema_->updates()) : "none";
  m["eval_weights"] = ema_ ? "ema" : "model";
  m["dataset"] = dataset_fingerprint(data_);
  // The data order of the next epoch: a resumed run must draw exactly these batches.
  m["data_order"] = data_order_fingerprint(state_.epoch);
  m["seed"] = std::to_string(config_.seed);
  if (prepared_) m["quant_state"] = prepared_->state().dump();
  auto tensors = optimizer_->state_tensors();
  if (ema_)
    for (auto& kv : ema_->state_tensors()) tensors.push_back(std::move(kv));
  save_checkpoint(path, config_.model, *model_, m, tensors);
}

void Trainer::load(const std::string& path) {
  Checkpoint ck = load_checkpoint(path);
  CSIPOSE_CHECK(meta(ck.metadata, "kind", path) == "train", path, ": a \"", ck.metadata["kind"],
                "\" checkpoint cannot be resumed; use --init-from to start a new run from its weights");
  const ExperimentConfig saved = ExperimentConfig::parse(meta(ck.metadata, "experiment_config", path), path + " [experiment_config]");
  CSIPOSE_CHECK(saved.to_yaml() == config_.to_yaml(), path,
                ": the checkpoint was written by a different config than this run's config.yaml; resume needs "
                "the same config (start a new run with --init-from to change it)");
  CSIPOSE_CHECK(meta(ck.metadata, "dataset", path) == dataset_fingerprint(data_), path,
                ": the dataset differs from the one this run trained on (", ck.metadata["dataset"], " vs ",
                dataset_fingerprint(data_), ")");
  const TrainState st = TrainState::from_json(Json::parse(meta(ck.metadata, "train_state", path)));
  CSIPOSE_CHECK(meta(ck.metadata, "data_order", path) == data_order_fingerprint(st.epoch), path,
                ": the data order of epoch ", st.epoch + 1, " differs from the checkpoint's (seed or split changed)");
  {
    torch::NoGradGuard no_grad;
    const auto src = state_dict(*ck.model);
    std::map<std::string, torch::Tensor> by_name(src.begin(), src.end());
    load_state_dict(*model_, by_name, /*strict=*/true);
  }
  optimizer_->load_state(ck.extra, std::stoll(meta(ck.metadata, "optimizer_steps", path)));
  schedule_.load_state(Json::parse(meta(ck.metadata, "schedule_state", path)));
  const std::string& ema_updates = meta(ck.metadata, "ema_updates", path);
  CSIPOSE_CHECK((ema_updates != "none") == static_cast<bool>(ema_), path, ": EMA state does not match the config");
  if (ema_) ema_->load_state(ck.extra, std::stoll(ema_updates));
  CSIPOSE_CHECK(ck.metadata.count("quant_state") == (prepared_ ? 1u : 0u), path,
                ": quantization state does not match the config (QAT vs fp32)");
  if (prepared_) prepared_->load_state(Json::parse(ck.metadata.at("quant_state")));
  state_ = st;
}

void Trainer::init_weights_from(const std::string& path) {
  CSIPOSE_CHECK(state_.step == 0, "--init-from must come before training starts");
  torch::NoGradGuard no_grad;
  SafetensorsFile file = load_safetensors(path);
  std::map<std::string, torch::Tensor> weights;
  const bool is_checkpoint = file.metadata.count("magic") > 0;
  const std::string prefix = is_checkpoint && file.metadata["eval_weights"] == "ema" ? "ema." : is_checkpoint ? "model." : "";
  for (const auto& kv : file.tensors)
    if (kv.first.rfind(prefix, 0) == 0) weights.emplace(kv.first.substr(prefix.size()), kv.second);
  try {
    load_state_dict(*model_, weights, /*strict=*/true);
  } catch (const Error& e) {
    fail(path, ": does not fit this run's model: ", e.what());
  }
  if (ema_) ema_ = std::make_unique<Ema>(config_.train.ema, *model_);
}

void init_output_from_labels(PoseModelImpl& model, const torch::Tensor& y) {
  torch::NoGradGuard no_grad;
  const bool wiflow = model.family() == "wiflow";
  const std::string name = wiflow ? "decoder.4.bias" : "head.3.bias";
  auto params = model.named_parameters(/*recurse=*/true);  // find() points into this dict
  torch::Tensor* bias = params.find(name);
  CSIPOSE_CHECK(bias != nullptr, "init_output: model has no parameter ", name);
  const auto yd = y.to(torch::kFloat64);
  if (wiflow) {
    // Invert silu(x) = x * sigmoid(x) by Newton's method (monotone for x > -1.28; labels are > 0).
    const auto target = yd.mean(std::vector<int64_t>{0, 1}).clamp_min(1e-3);  // (2,)
    auto x = target.clone();
    for (int i = 0; i < 50; ++i) {
      const auto s = torch::sigmoid(x);
      x = x - (x * s - target) / (s + x * s * (1 - s));
    }
    bias->copy_(x.to(bias->dtype()));
  } else {
    const auto m = yd.mean(0).clamp(1e-3, 1 - 1e-3).reshape({-1});  // (J * 2,) in output order
    CSIPOSE_CHECK(m.numel() == bias->numel(), "init_output: ", name, " has ", bias->numel(), " entries, labels give ", m.numel());
    bias->copy_(torch::log(m / (1 - m)).to(bias->dtype()));
  }
}

std::shared_ptr<PoseModelImpl> load_eval_model(const std::string& path, ModelConfig* config,
                                               std::map<std::string, std::string>* metadata) {
  if (is_int8_checkpoint(path)) {
    Int8Checkpoint q = load_int8_checkpoint(path);
    if (config) *config = q.config;
    if (metadata) *metadata = q.metadata;
    return q.model;
  }
  Checkpoint ck = load_checkpoint(path);
  auto it = ck.metadata.find("eval_weights");
  if (it != ck.metadata.end() && it->second == "ema") {
    std::map<std::string, torch::Tensor> ema;
    for (const auto& kv : ck.extra)
      if (kv.first.rfind("ema.", 0) == 0) ema.emplace(kv.first.substr(4), kv.second);
    try {
      load_state_dict(*ck.model, ema, /*strict=*/true);
    } catch (const Error& e) {
      fail(path, ": EMA weights are incomplete: ", e.what());
    }
  }
  if (ck.metadata.count("quant_state")) {
    const ExperimentConfig exp =
        ExperimentConfig::parse(meta(ck.metadata, "experiment_config", path), path + " [experiment_config]");
    CSIPOSE_CHECK(exp.qat.enabled, path, ": quant_state without a qat config");
    PreparedModel p = prepare(*ck.model, exp.qat.policy, ck.model->bn_fold_pairs());
    p.set_mode(QuantMode::fake_quant);
    if (exp.qat.learned_scales.enabled()) {
      LearnedScalesConfig lsq = exp.qat.learned_scales;
      lsq.init = LsqInit::minmax;  // the values come from the checkpoint below; skip the search
      p.enable_learned(*ck.model, lsq);
    }
    try {
      p.load_state(Json::parse(ck.metadata.at("quant_state")));
    } catch (const Error& e) {
      fail(path, ": quant_state: ", e.what());
    }
    p.freeze_observers(true);
  }
  if (config) *config = ck.config;
  if (metadata) *metadata = ck.metadata;
  ck.model->eval();
  return ck.model;
}

DataConfig checkpoint_data_config(const std::string& command, const std::string& checkpoint,
                                  const std::map<std::string, std::string>& metadata, const std::string& data_dir) {
  if (!data_dir.empty()) {
    DataConfig dc;
    dc.root = data_dir;
    dc.synth.clear();
    return dc;
  }
  auto it = metadata.find("experiment_config");
  CSIPOSE_CHECK(it != metadata.end(), command, ": ", checkpoint, " does not name its dataset; pass --data DIR");
  return ExperimentConfig::parse(it->second, checkpoint + " [experiment_config]").data;
}

PoseDataset open_run_dataset(const DataConfig& config) {
  namespace fs = std::filesystem;
  const bool present = fs::exists(fs::path(config.root) / "csi_windows.npy") || fs::exists(fs::path(config.root) / "X.npy");
  if (!present && !config.synth.empty()) {
    log_event("generate_dataset", Json::object().set("root", config.root).set("synth", config.synth));
    generate_synthetic(SynthConfig::from_yaml(ConfigNode::load_file(config.synth)), config.root);
  }
  CSIPOSE_CHECK(fs::exists(config.root), "dataset directory ", config.root,
                " does not exist (set data.synth to generate a synthetic one there)");
  DatasetOptions o;
  o.split_file = config.split_file;
  o.split_seed = static_cast<uint64_t>(config.split_seed);
  return open_dataset(config.root, o);
}

int64_t fit(Trainer& trainer, FitObserver& observer, int64_t max_epochs) {
  int64_t run = 0;
  while (!trainer.finished() && (max_epochs <= 0 || run < max_epochs)) {
    const EpochStats stats = trainer.train_one_epoch();
    const EvalMetrics val = trainer.validate();
    const bool best = trainer.record_validation(val);
    observer.on_epoch_end(trainer, stats, val, best);
    ++run;
  }
  return run;
}

}  // namespace csipose
