#pragma once
// The accuracy gate: every registry entry's shipped model against its own fp32 checkpoint, on the
// same split and device, under the locked metric (EvalSet::evaluate, exactly as `csipose eval`).
//
//   drop (points) = 100 * (PCK@20(fp32) - PCK@20(shipped)), on the clean and the full subset;
//   an entry passes when drop(clean) <= budget.max_pck20_drop, when (if budgeted) the median
//   batch-1 CPU forward time of the shipped model <= budget.max_latency_ms, when the files match
//   their registered sha256, the .csq matches the registered policy, and the calibration windows
//   (if registered) are disjoint from the evaluated split. A failed check is a FAIL row with its
//   reason; unreadable files and bad registries are errors. docs/registry.md.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/json.h"
#include "eval/pck.h"
#include "models/artifact_registry.h"
#include "quant/prepare.h"

namespace csipose {
class PoseModelImpl;

struct GateOptions {
  int64_t batch_size = 256;      ///< evaluation batch size
  int64_t latency_iters = 50;    ///< timed batch-1 forwards (median) for entries with max_latency_ms
  int64_t latency_warmup = 5;    ///< untimed forwards first
};

struct GateRow {
  RegistryEntry entry;
  bool evaluated = false;                  ///< false when a file check failed before evaluation
  std::optional<PoseMetrics> fp32_full, fp32_clean, shipped_full, shipped_clean;
  double drop_clean = 0.0, drop_full = 0.0;  ///< PCK@20 points, fp32 - shipped
  std::optional<double> latency_ms;
  std::string sha256;                      ///< of the shipped file as found
  std::string metric_definition;
  std::vector<std::string> failures;       ///< empty = PASS
  bool pass() const { return failures.empty(); }
  Json to_json() const;
};

struct GateResult {
  std::vector<GateRow> rows;
  bool pass() const;
  /// 0 when every entry passes, 3 when any fails (errors are thrown: main exits 1).
  int exit_code() const { return pass() ? 0 : 3; }
  /// The table plus one line per metric definition and the drop's definition.
  std::string table() const;
  Json to_json() const;
};

/// Runs every entry (in order). Throws for missing or unreadable files and unusable entries.
GateResult run_gate(const std::vector<RegistryEntry>& entries, const GateOptions& options);
GateRow gate_entry(const RegistryEntry& entry, const GateOptions& options);

/// Dynamic PTQ exactly as `csipose ptq --mode dynamic`: prepare with the policy file (or the
/// default policy with per-call activation ranges), dynamic qparams, fake-quant mode.
PreparedModel quantize_dynamic(PoseModelImpl& model, const std::string& policy_file);

/// Median milliseconds of `iters` batch-1 CPU forward passes after `warmup` untimed ones (input 0.5).
double batch1_cpu_latency_ms(PoseModelImpl& model, int64_t iters, int64_t warmup);

/// Lower-case hex sha256 of a file's bytes.
std::string file_sha256(const std::string& path);

}  // namespace csipose
