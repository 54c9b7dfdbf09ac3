#pragma once
// Progress for long work: a redrawn bar on a terminal, quiet JSON lines when stderr is not a TTY
// (CI, pipes, job schedulers), so logs stay machine-readable.
#include <chrono>
#include <cstdint>
#include <string>

#include "common/json.h"

namespace csipose {

/// Writes one JSON object per line to stderr with an "event" field and a timestamp.
void log_event(const std::string& event, Json fields = Json::object());
/// True when stderr is a terminal (and CSIPOSE_NO_TTY is unset).
bool stderr_is_tty();

class Progress {
 public:
  /// `unit` names what is counted ("windows", "samples").
  Progress(std::string task, int64_t total, std::string unit);
  ~Progress();
  /// Advances by n and redraws at most ~10 times a second (TTY) or logs every 10% (JSONL).
  void advance(int64_t n, const std::string& note = "");
  void finish(const std::string& note = "");

 private:
  std::string task_, unit_;
  int64_t total_, done_ = 0;
  int last_decile_ = -1;
  bool tty_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace csipose
