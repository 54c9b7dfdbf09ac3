#pragma once
// Learning-rate schedules as functions of the global step (plus, for plateau, the validation
// history), so a resumed run recomputes exactly the rate it would have used.
//   constant: warmup, then lr
//   cosine:   warmup, then min_lr + (lr - min_lr) * (1 + cos(pi * p)) / 2, p = progress after warmup
//   plateau:  warmup, then lr scaled by factor each time the monitored metric stalls for more than
//             `patience` validations (PyTorch ReduceLROnPlateau, threshold_mode "rel")
// Warmup is linear from lr * warmup_start_factor at step 0 to lr at step warmup_steps.
#include <cstdint>

#include "common/json.h"
#include "train/train_config.h"

namespace csipose {

class LrSchedule {
 public:
  LrSchedule(ScheduleConfig config, double base_lr, int64_t steps_per_epoch, int64_t epochs);
  /// The learning rate for the update at global step `step` (0-based).
  double lr_at(int64_t step) const;
  /// Plateau: feeds one validation value (no-op for other schedules). Returns true if lr was reduced.
  bool on_validation(double value);
  int64_t warmup_steps() const { return warmup_steps_; }
  int64_t total_steps() const { return total_steps_; }
  /// Plateau state (current lr scale, best, bad-epoch and cooldown counters) for checkpoints.
  Json state() const;
  void load_state(const Json& state);

 private:
  ScheduleConfig config_;
  double base_lr_;
  int64_t warmup_steps_, total_steps_;
  // plateau
  double plateau_lr_;
  double best_;
  bool has_best_ = false;
  int64_t num_bad_ = 0, cooldown_counter_ = 0, reductions_ = 0;
};

}  // namespace csipose
