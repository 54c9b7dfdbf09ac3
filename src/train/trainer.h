#pragma once
// The training loop in layers: Trainer::train_one_epoch -> EpochStats, Trainer::validate ->
// EvalMetrics, and fit() built only from those, with logging and checkpointing injected through a
// FitObserver. Everything random is a function of the run seed and the global step (data order:
// seed and epoch), which is why a resumed run repeats the uninterrupted one bit for bit on CPU.
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "common/json.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "quant/prepare.h"
#include "train/ema.h"
#include "train/evaluate.h"
#include "train/loss.h"
#include "train/optim.h"
#include "train/schedule.h"
#include "train/train_config.h"

namespace csipose {
class PoseModelImpl;

struct EpochStats {
  int64_t epoch = 0;          ///< 1-based number of the epoch just finished
  int64_t steps = 0;
  int64_t samples = 0;
  double loss = 0.0;          ///< mean training loss over the epoch's steps (after mixup/augment)
  double grad_norm = 0.0;     ///< mean global gradient norm before clipping
  double lr_first = 0.0, lr_last = 0.0;
  double seconds = 0.0;
  double samples_per_s = 0.0;
  Json to_json() const;
};

/// What changes during training besides tensors; stored in checkpoints.
struct TrainState {
  int64_t epoch = 0;          ///< completed epochs
  int64_t step = 0;           ///< completed optimizer steps
  std::optional<double> best_value;
  int64_t best_epoch = 0;
  std::optional<double> early_best;
  int64_t bad_epochs = 0;     ///< validations without early-stopping improvement
  bool stopped_early = false;
  double train_seconds = 0.0; ///< summed over invocations (not part of the exactness contract)
  Json to_json() const;
  static TrainState from_json(const Json& j);
};

/// A stable description of the dataset a run trains on; resuming on different data is refused.
std::string dataset_fingerprint(const PoseDataset& data);

class Trainer {
 public:
  /// Builds the model (torch seeded from config.seed), optimizer, schedule, EMA and the
  /// device-resident train and val sets. Validates monitored metric names against the dataset.
  Trainer(ExperimentConfig config, const PoseDataset& data, c10::Device device);

  EpochStats train_one_epoch();
  /// Evaluates the evaluation weights (EMA when enabled) on the val split, identity view.
  EvalMetrics validate();
  /// Feeds a validation result to best tracking, early stopping and the plateau schedule.
  /// Returns true when it is the best so far.
  bool record_validation(const EvalMetrics& val);
  bool finished() const;

  /// The weights that are evaluated and kept as "best": the EMA average when enabled.
  PoseModelImpl& eval_model();
  PoseModelImpl& model() { return *model_; }
  const ExperimentConfig& config() const { return config_; }
  const TrainState& state() const { return state_; }
  TrainState& state() { return state_; }
  const PoseLoss& loss() const { return loss_; }
  c10::Device device() const { return device_; }
  const LrSchedule& schedule() const { return schedule_; }
  int64_t steps_per_epoch() const { return train_loader_.num_batches(); }
  /// Called after every optimizer step with the global step (1-based) and the batch loss. Setting
  /// one costs a host synchronisation per step: for tests and debugging, not for speed runs.
  void set_step_hook(std::function<void(int64_t step, double loss)> hook) { step_hook_ = std::move(hook); }

  /// A complete training checkpoint: model, optimizer, EMA, schedule and TrainState, the resolved
  /// config and the data fingerprints. Atomic (temp file + rename).
  void save(const std::string& path, const std::map<std::string, std::string>& extra = {});
  /// Restores a checkpoint written by save() for this same config and dataset; anything else
  /// (another config, another dataset, a plain weight file, a corrupt file) is a clear error.
  void load(const std::string& path);
  /// Warm start (a fork): takes only the model weights of a checkpoint or weight file.
  void init_weights_from(const std::string& path);

  /// QAT runs (config.qat.enabled): the quantization points of the trained model, in fake_quant
  /// mode; null for fp32 runs.
  const PreparedModel* quantized() const { return prepared_ ? &*prepared_ : nullptr; }

 private:
  uint64_t step_seed(int64_t step) const;
  std::string data_order_fingerprint(int64_t epoch);

  ExperimentConfig config_;
  const PoseDataset& data_;
  c10::Device device_;
  std::shared_ptr<PoseModelImpl> model_, eval_model_;
  std::vector<NamedParam> params_;
  std::unique_ptr<Optimizer> optimizer_;
  LrSchedule schedule_;
  std::unique_ptr<Ema> ema_;
  PoseLoss loss_;
  BatchLoader train_loader_;
  std::unique_ptr<EvalSet> val_;
  int64_t links_;
  TrainState state_;
  std::function<void(int64_t, double)> step_hook_;
  std::optional<PreparedModel> prepared_, prepared_eval_;
};

/// Data-dependent output init: sets the bias of the model's last layer so that a fresh model's
/// predictions start near the mean of the training labels y (N, J, 2), instead of spending the
/// first epochs moving a zero-initialized offset (WiFlow's labels sit around 0.75, and AdamW moves
/// a bias by about lr per step). WiFlow: decoder.4.bias[c] = silu^-1(mean of coordinate c);
/// pose transformers: head.3.bias[2j + c] = logit(mean of joint j, coordinate c).
void init_output_from_labels(PoseModelImpl& model, const torch::Tensor& y);

/// Loads any csipose model file for evaluation, in eval mode on the CPU:
///   - a training checkpoint: its evaluation weights (the EMA average, "ema." tensors, when the
///     run used EMA), else the model weights; a QAT checkpoint comes back prepared with its policy
///     and observer states, in fake_quant mode with frozen observers (the fake-quant model);
///   - a plain weight checkpoint: its weights;
///   - an int8 model (.csq, models/int8_checkpoint.h): the converted model in int8 mode.
/// `metadata` receives the file's metadata ("format" is "int8" for .csq files).
std::shared_ptr<PoseModelImpl> load_eval_model(const std::string& path, ModelConfig* config = nullptr,
                                               std::map<std::string, std::string>* metadata = nullptr);

/// The dataset a checkpoint is evaluated on: `data_dir` when given, else the data section of the
/// experiment config the checkpoint carries (throws naming `command` when it carries none).
DataConfig checkpoint_data_config(const std::string& command, const std::string& checkpoint,
                                  const std::map<std::string, std::string>& metadata, const std::string& data_dir);

/// Opens the run's dataset, generating it first from `data.synth` when the directory has none.
PoseDataset open_run_dataset(const DataConfig& config);

/// Receives what fit() produces; the run directory implements it (metrics.jsonl, checkpoints).
class FitObserver {
 public:
  virtual ~FitObserver() = default;
  virtual void on_epoch_end(Trainer& trainer, const EpochStats& stats, const EvalMetrics& val, bool is_best) = 0;
};

/// Trains until the configured epochs are done, early stopping fires, or `max_epochs` epochs
/// (> 0) have run in this call (to split a run across jobs). Returns the epochs run.
int64_t fit(Trainer& trainer, FitObserver& observer, int64_t max_epochs = 0);

}  // namespace csipose
