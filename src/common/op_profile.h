#pragma once
// Where a forward's time goes: self and total time per operator, recorded through ATen's
// RecordFunction callbacks (the hooks torch.profiler uses) on the calling thread. ATen ops record
// themselves; csipose's own int8 kernels record under `csipose::...` names (RECORD_USER_SCOPE).
// Used by `infer-bench --profile`.
#include <cstdint>
#include <string>
#include <vector>

namespace csipose {

/// One operator's totals over the recorded interval.
struct OpTime {
  std::string name;
  int64_t calls = 0;
  double self_ms = 0.0;   ///< time in the op minus the time in ops it called
  double total_ms = 0.0;  ///< time in the op, nested ops included (a recursive op counts once per call)
};

/// Records every operator the constructing thread runs until stop() or destruction. One at a time
/// per thread. Intra-op worker threads are not recorded: their time is inside the op that forked them.
class OpProfile {
 public:
  OpProfile();
  ~OpProfile();
  OpProfile(const OpProfile&) = delete;
  OpProfile& operator=(const OpProfile&) = delete;

  void stop();
  /// The recorded ops, largest self time first.
  std::vector<OpTime> by_self_time() const;

 private:
  uint64_t handle_ = 0;
  bool active_ = false;
};

/// A markdown table of the first `top` ops (the rest summed in one row) with per-forward times and
/// the share of `forward_ms`, the measured wall time of one forward.
std::string format_op_table(const std::vector<OpTime>& ops, int64_t forwards, double forward_ms, size_t top);

}  // namespace csipose
