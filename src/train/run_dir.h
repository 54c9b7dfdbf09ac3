#pragma once
// A training run is a directory:
//   config.yaml          the resolved ExperimentConfig (every default, every override)
//   run.json             seed, git sha, machine, LibTorch version, one entry per invocation
//   metrics.jsonl        one line per epoch: losses, lr, val metrics with their MetricSpec, samples/s
//   checkpoints/last.safetensors   full training state (resume from here)
//   checkpoints/best.safetensors   the evaluation weights of the best validation epoch
//   report.md / report.json        test metrics (full and clean), params, size, training time
// Every file is written to a temporary name and renamed, so an interrupted run leaves the previous
// complete version of each in place.
#include <string>

#include "train/trainer.h"

namespace csipose {

class RunDir : public FitObserver {
 public:
  /// A new run: creates the directory, refuses one that already holds a run.
  static RunDir create(const std::string& dir, const ExperimentConfig& config, c10::Device device);
  /// An existing run for --resume: reads config.yaml (throws when it is not a run directory).
  static RunDir open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const ExperimentConfig& config() const { return config_; }
  std::string last_checkpoint() const;
  std::string best_checkpoint() const;
  bool has_last() const;
  /// Drops metrics.jsonl lines of epochs after `epoch` (written before a crash that lost their checkpoint).
  void truncate_metrics(int64_t epoch) const;
  /// Appends an invocation entry to run.json ("start" or "resume", device, epoch reached so far).
  void record_invocation(const std::string& kind, c10::Device device, int64_t epoch) const;

  void on_epoch_end(Trainer& trainer, const EpochStats& stats, const EvalMetrics& val, bool is_best) override;

  /// Evaluates checkpoints/best on val and test (full and clean, test with the configured TTA views)
  /// and writes report.json and report.md. Returns the report.
  Json write_report(Trainer& trainer, const PoseDataset& data) const;
  /// QAT runs: the converted int8 model the report writes (model.csq).
  std::string int8_model() const;

 private:
  /// QAT: fp32 (the warm start) vs fake-quant (best) vs int8 (converted, written to model.csq and
  /// read back) on the test split; the markdown section goes to `md`.
  Json quant_report(Trainer& trainer, const PoseDataset& data, PoseModelImpl& fake_quant, const EvalSet& test,
                    const EvalMetrics& fq_m, std::string& md) const;
  RunDir(std::string dir, ExperimentConfig config) : dir_(std::move(dir)), config_(std::move(config)) {}
  std::string dir_;
  ExperimentConfig config_;
};

/// "host (N cpus, CPU model)".
std::string machine_description();
/// The current time, UTC, ISO 8601 to the second ("2026-12-01T17:38:00Z").
std::string utc_now();

}  // namespace csipose
