#include "common/op_profile.h"

#include <ATen/record_function.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>

#include "common/check.h"

namespace csipose {
namespace {

using Clock = std::chrono::steady_clock;

struct Frame {
  const char* name;
  Clock::time_point start;
  double child_ms;
};

/// The recording thread's state: the open ops (a stack, for self time) and the totals by name.
struct Recorder {
  std::vector<Frame> stack;
  std::map<std::string, OpTime> totals;
};

thread_local Recorder* tls_recorder = nullptr;

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  if (tls_recorder != nullptr) tls_recorder->stack.push_back({fn.name(), Clock::now(), 0.0});
  return nullptr;
}

void on_end(const at::RecordFunction&, at::ObserverContext*) {
  Recorder* r = tls_recorder;
  if (r == nullptr || r->stack.empty()) return;
  const Frame f = r->stack.back();
  r->stack.pop_back();
  const double ms = std::chrono::duration<double, std::milli>(Clock::now() - f.start).count();
  if (!r->stack.empty()) r->stack.back().child_ms += ms;
  OpTime& t = r->totals[f.name != nullptr ? f.name : "?"];
  ++t.calls;
  t.self_ms += ms - f.child_ms;
  t.total_ms += ms;
}

}  // namespace

OpProfile::OpProfile() {
  CSIPOSE_CHECK(tls_recorder == nullptr, "OpProfile: this thread is already recording");
  tls_recorder = new Recorder();
  handle_ = at::addThreadLocalCallback(at::RecordFunctionCallback(&on_start, &on_end).needsInputs(false));
  active_ = true;
}

OpProfile::~OpProfile() {
  stop();
  delete tls_recorder;
  tls_recorder = nullptr;
}

void OpProfile::stop() {
  if (!active_) return;
  at::removeCallback(handle_);
  active_ = false;
}

std::vector<OpTime> OpProfile::by_self_time() const {
  std::vector<OpTime> out;
  if (tls_recorder == nullptr) return out;
  for (const auto& [name, t] : tls_recorder->totals) {
    out.push_back(t);
    out.back().name = name;
  }
  std::sort(out.begin(), out.end(), [](const OpTime& a, const OpTime& b) {
    return a.self_ms != b.self_ms ? a.self_ms > b.self_ms : a.name < b.name;
  });
  return out;
}

std::string format_op_table(const std::vector<OpTime>& ops, int64_t forwards, double forward_ms, size_t top) {
  CSIPOSE_CHECK(forwards > 0, "format_op_table: forwards must be positive");
  const double n = static_cast<double>(forwards);
  std::string s = "| op | calls / forward | self ms / forward | share of forward | total ms / forward |\n"
                  "|---|---:|---:|---:|---:|\n";
  char line[512];
  auto row = [&](const std::string& name, double calls, double self_ms, double total_ms, bool with_total) {
    char total[64] = "";
    if (with_total) std::snprintf(total, sizeof total, "%.4f", total_ms / n);
    std::snprintf(line, sizeof line, "| %s | %.4g | %.4f | %.1f%% | %s |\n", name.c_str(), calls / n, self_ms / n,
                  forward_ms > 0 ? 100.0 * self_ms / n / forward_ms : 0.0, total);
    s += line;
  };
  double rest_calls = 0, rest_self = 0, recorded = 0;
  for (size_t i = 0; i < ops.size(); ++i) {
    recorded += ops[i].self_ms;
    if (i < top) {
      row(ops[i].name, static_cast<double>(ops[i].calls), ops[i].self_ms, ops[i].total_ms, true);
    } else {
      rest_calls += static_cast<double>(ops[i].calls);
      rest_self += ops[i].self_ms;
    }
  }
  if (ops.size() > top) row(std::to_string(ops.size() - top) + " other ops", rest_calls, rest_self, 0, false);
  // Time outside every recorded op: the module code between ops, and the profiler's own cost.
  row("(outside recorded ops)", 0, std::max(0.0, forward_ms * n - recorded), 0, false);
  return s;
}

}  // namespace csipose
