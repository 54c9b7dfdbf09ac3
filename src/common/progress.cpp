#include "common/progress.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace csipose {

bool stderr_is_tty() { return ::isatty(STDERR_FILENO) && std::getenv("CSIPOSE_NO_TTY") == nullptr; }

void log_event(const std::string& event, Json fields) {
  Json line = Json::object();
  line.set("event", event);
  line.set("time", static_cast<int64_t>(std::time(nullptr)));
  for (const auto& kv : fields.items()) line.set(kv.first, kv.second);
  std::fprintf(stderr, "%s\n", line.dump().c_str());
}

Progress::Progress(std::string task, int64_t total, std::string unit)
    : task_(std::move(task)), unit_(std::move(unit)), total_(total), tty_(stderr_is_tty()),
      start_(std::chrono::steady_clock::now()), last_draw_(start_) {
  if (!tty_) log_event("start", Json::object().set("task", task_).set("total", total_).set("unit", unit_));
}

Progress::~Progress() {
  if (!finished_ && tty_) std::fprintf(stderr, "\n");
}

void Progress::advance(int64_t n, const std::string& note) {
  done_ += n;
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done_) / elapsed : 0.0;
  if (tty_) {
    if (std::chrono::duration<double>(now - last_draw_).count() < 0.1 && done_ < total_) return;
    last_draw_ = now;
    const int width = 30;
    const double frac = total_ > 0 ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
    const int filled = static_cast<int>(frac * width);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.resize(width, '.');
    const double eta = rate > 0 ? static_cast<double>(total_ - done_) / rate : 0.0;
    std::fprintf(stderr, "\r%s [%s] %lld/%lld %s  %.1f %s/s  ETA %.0fs %s\033[K", task_.c_str(), bar.c_str(),
                 static_cast<long long>(done_), static_cast<long long>(total_), unit_.c_str(), rate,
                 unit_.c_str(), eta, note.c_str());
    std::fflush(stderr);
  } else {
    const int decile = total_ > 0 ? static_cast<int>(10 * done_ / total_) : 10;
    if (decile != last_decile_ && decile < 10) {
      last_decile_ = decile;
      log_event("progress", Json::object().set("task", task_).set("done", done_).set("total", total_)
                                .set("rate", rate).set("note", note));
    }
  }
}

void Progress::finish(const std::string& note) {
  if (finished_) return;
  finished_ = true;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) {
    last_draw_ = {};  // the final state is always drawn, however recent the last redraw
    advance(0, note);
    std::fprintf(stderr, "\n");
  } else {
    log_event("done", Json::object().set("task", task_).set("done", done_).set("seconds", elapsed)
                          .set("note", note));
  }
}

}  // namespace csipose
