#include "train/schedule.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace csipose {

LrSchedule::LrSchedule(ScheduleConfig config, double base_lr, int64_t steps_per_epoch, int64_t epochs)
    : config_(config), base_lr_(base_lr), plateau_lr_(base_lr), best_(0.0) {
  CSIPOSE_CHECK(steps_per_epoch > 0 && epochs > 0, "schedule: needs steps_per_epoch > 0 and epochs > 0");
  total_steps_ = steps_per_epoch * epochs;
  warmup_steps_ = static_cast<int64_t>(std::llround(config.warmup_epochs * static_cast<double>(steps_per_epoch)));
  warmup_steps_ = std::min(warmup_steps_, total_steps_);
}

double LrSchedule::lr_at(int64_t step) const {
  const double peak = config_.type == ScheduleType::plateau ? plateau_lr_ : base_lr_;
  if (step < warmup_steps_) {
    const double f = config_.warmup_start_factor;
    return peak * (f + (1.0 - f) * static_cast<double>(step) / static_cast<double>(warmup_steps_));
  }
  switch (config_.type) {
    case ScheduleType::constant:
    case ScheduleType::plateau:
      return peak;
    case ScheduleType::cosine: {
      const double span = static_cast<double>(std::max<int64_t>(1, total_steps_ - warmup_steps_));
      const double p = std::min(1.0, static_cast<double>(step - warmup_steps_) / span);
      const double lo = std::min(config_.min_lr, base_lr_);
      return lo + (base_lr_ - lo) * 0.5 * (1.0 + std::cos(M_PI * p));
    }
  }
  return peak;
}

bool LrSchedule::on_validation(double value) {
  if (config_.type != ScheduleType::plateau) return false;
  const bool maximize = config_.plateau_metric.mode() == MonitorMode::max;
  const double t = config_.plateau_threshold;
  const bool better = !has_best_ || (maximize ? value > best_ * (1.0 + t) : value < best_ * (1.0 - t));
  if (better) {
    best_ = value;
    has_best_ = true;
    num_bad_ = 0;
  } else {
    ++num_bad_;
  }
  if (cooldown_counter_ > 0) {
    --cooldown_counter_;
    num_bad_ = 0;
  }
  if (num_bad_ > config_.plateau_patience) {
    const double next = std::max(plateau_lr_ * config_.plateau_factor, config_.min_lr);
    cooldown_counter_ = config_.plateau_cooldown;
    num_bad_ = 0;
    if (plateau_lr_ - next > 1e-8 * base_lr_) {
      plateau_lr_ = next;
      ++reductions_;
      return true;
    }
  }
  return false;
}

Json LrSchedule::state() const {
  Json j = Json::object();
  j.set("plateau_lr", plateau_lr_).set("best", has_best_ ? Json(best_) : Json()).set("num_bad", num_bad_);
  j.set("cooldown_counter", cooldown_counter_).set("reductions", reductions_);
  return j;
}

void LrSchedule::load_state(const Json& j) {
  plateau_lr_ = j.at("plateau_lr").as_double();
  has_best_ = !j.at("best").is_null();
  best_ = has_best_ ? j.at("best").as_double() : 0.0;
  num_bad_ = j.at("num_bad").as_int();
  cooldown_counter_ = j.at("cooldown_counter").as_int();
  reductions_ = j.at("reductions").as_int();
}

}  // namespace csipose
