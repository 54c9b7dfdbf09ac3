#pragma once
// The typed configuration of a training run, one struct per component, composed into
// ExperimentConfig. Every struct reads itself from a ConfigNode (unknown keys are errors through
// finish() at the root) and writes itself back as YAML, so a run directory's config.yaml is the
// fully resolved config: every default spelled out, every override applied.
//
// Defaults follow the published WiFlow recipe where it names one (AdamW, dropout 0.5 in the TCN,
// smooth-L1 PoseLoss with bone term: MODELS.md sections 1 and 5) and are stated here otherwise.
#include <cstdint>
#include <string>
#include <vector>

#include "models/registry.h"
#include "quant/learned_scales.h"
#include "quant/policy.h"

namespace csipose {
class ConfigNode;

enum class OptimizerType { adamw, sgd };
enum class ScheduleType { constant, cosine, plateau };
enum class MonitorMode { max, min };
const char* to_string(OptimizerType t);
const char* to_string(ScheduleType t);
const char* to_string(MonitorMode m);

struct OptimizerConfig {
  OptimizerType type = OptimizerType::adamw;
  double lr = 1e-3;                 ///< peak learning rate
  double beta1 = 0.9;               ///< AdamW betas / SGD momentum (beta1)
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;       ///< decoupled (AdamW) / L2 (SGD)
  /// Apply weight decay to BatchNorm/LayerNorm weights and biases too (PyTorch's default: true).
  bool decay_norm_and_bias = true;
  static OptimizerConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

/// A named validation metric: "val/clean/pck@20", "val/full/mpjpe", "val/clean/loss".
/// PCK metrics are maximized, MPJPE and loss minimized.
struct MonitorSpec {
  std::string metric = "val/clean/pck@20";
  MonitorMode mode() const;
  /// Throws (naming `where`) unless the name has the form split/subset/measure.
  static MonitorSpec parse(const std::string& name, const std::string& where);
};

struct ScheduleConfig {
  ScheduleType type = ScheduleType::cosine;
  double warmup_epochs = 1.0;       ///< linear warmup from lr * warmup_start_factor (cosine, constant)
  double warmup_start_factor = 0.01;
  double min_lr = 1e-5;             ///< cosine floor; plateau never reduces below it
  // plateau (ReduceLROnPlateau, stepped once per validation):
  MonitorSpec plateau_metric;
  double plateau_factor = 0.5;
  int64_t plateau_patience = 3;
  double plateau_threshold = 1e-4;  ///< relative improvement needed ("rel" mode, as in PyTorch)
  int64_t plateau_cooldown = 0;
  static ScheduleConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

struct EmaConfig {
  double decay = 0.0;               ///< 0 disables EMA; e.g. 0.999
  /// Use min(decay, (1 + n) / (10 + n)) for the first updates (n = updates so far).
  bool warmup = true;
  bool enabled() const { return decay > 0.0; }
  static EmaConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

struct MixupConfig {
  double alpha = 0.0;               ///< lambda ~ Beta(alpha, alpha); 0 disables mixup
  double prob = 1.0;                ///< probability that a batch is mixed
  bool enabled() const { return alpha > 0.0 && prob > 0.0; }
  static MixupConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

/// Input augmentations, applied per sample on the training device. A "link" is one tx-rx antenna
/// pair (WiFlow: 9 links x 60 subcarriers = 540 channels) or one antenna (MM-Fi: 3).
struct AugmentConfig {
  double link_drop = 0.0;           ///< probability that each link of a sample is zeroed
  double noise_std = 0.0;           ///< additive Gaussian noise, times the batch's std
  int64_t time_mask = 0;            ///< zero a random span of up to this many time steps per sample
  double scale = 0.0;               ///< multiply each sample by U(1 - scale, 1 + scale)
  bool enabled() const { return link_drop > 0 || noise_std > 0 || time_mask > 0 || scale > 0; }
  static AugmentConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

struct EarlyStoppingConfig {
  MonitorSpec monitor;
  int64_t patience = 0;             ///< stop after this many validations without improvement; 0: off
  double min_delta = 0.0;           ///< absolute improvement that counts
  static EarlyStoppingConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

/// Test-time augmentation: predictions of several views of the input are averaged.
/// Views: "identity", "scale:F" (multiply by F), "shift:K" (shift time by K steps, edge-padded).
struct TtaConfig {
  std::vector<std::string> views{"identity"};
  static TtaConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

struct TrainConfig {
  int64_t epochs = 30;
  int64_t batch_size = 64;
  int64_t eval_batch_size = 256;
  double grad_clip = 1.0;           ///< max global grad norm; 0 disables clipping
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  EmaConfig ema;
  MixupConfig mixup;
  AugmentConfig augment;
  EarlyStoppingConfig early_stopping;
  MonitorSpec best;                 ///< which validation metric picks checkpoints/best
  TtaConfig tta;                    ///< used for the final test evaluation (validation uses identity)
  /// "label_mean": set the output layer's bias so a fresh model starts at the train labels' mean
  /// (see init_output_from_labels); "none": the library init only.
  std::string init_output = "label_mean";
  static TrainConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

struct DataConfig {
  std::string root = "data/synth_small";  ///< dataset directory (WiFlow or MM-Fi layout)
  /// When non-empty and `root` has no dataset yet, generate it from this synthetic-data config.
  std::string synth;
  std::string split_file;           ///< empty: root/split.txt when present, else split_seed
  int64_t split_seed = 42;
  std::string train_subset = "clean";  ///< train on "clean" windows (default) or "full" (zero-filled)
  static DataConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

/// Quantization-aware training (the `qat:` section; absent = an fp32 run). The train section's
/// epochs, optimizer and schedule are the QAT phase's own. The torchvision recipe: BatchNorms
/// folded into their convs keep updating their statistics for the first `bn_update_epochs`
/// epochs and are frozen after; activation observers update for `observer_update_epochs` epochs
/// and are frozen after (so the last epochs train against fixed activation qparams).
struct QatConfig {
  bool enabled = false;
  /// fp32 warm start: a checkpoint or weight file whose (EMA) weights start QAT; "" = from scratch.
  std::string init_from;
  /// The quantization policy (quant/policy.h), resolved inline; `policy_file: F` reads it from F.
  QuantPolicy policy;
  int64_t bn_update_epochs = 2;
  int64_t observer_update_epochs = 3;
  /// LSQ / LSQ+ learned step sizes (quant/lsq.h); off by default (observer-driven qparams).
  LearnedScalesConfig learned_scales;
  /// The QAT report's per-layer sensitivity table of the trained fake-quant model (one validation
  /// pass per quantized op); `sensitivity: false` skips it.
  bool sensitivity = true;
  static QatConfig from_yaml(const ConfigNode& node);
  std::string to_yaml() const;
};

struct ExperimentConfig {
  std::string name = "run";         ///< run directory name under experiments/
  uint64_t seed = 0;                ///< seeds init, data order, dropout, augmentation, mixup
  std::string device = "cpu";       ///< cpu | cuda | cuda:N | auto (the CLI's --device overrides)
  DataConfig data;
  ModelConfig model;
  TrainConfig train;
  QatConfig qat;
  static ExperimentConfig from_yaml(const ConfigNode& root);
  /// Loads a file with overrides and rejects unknown keys.
  static ExperimentConfig load(const std::string& path, const std::vector<std::string>& overrides = {});
  static ExperimentConfig parse(const std::string& yaml, const std::string& source,
                                const std::vector<std::string>& overrides = {});
  /// The resolved config; parse(to_yaml()) gives back an equal config.
  std::string to_yaml() const;
};

/// Indents every line of a YAML block by `spaces` (for nesting component YAML under a key).
std::string indent_yaml(const std::string& block, int spaces);

}  // namespace csipose
