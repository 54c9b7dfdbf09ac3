#pragma once
// The end of a sweep: each run's result row (runs/<id>/result.json, the `eval` stage) and the
// sweep report (report/results.csv, report/pareto.md, report/pareto.svg): params, bytes fp32 and
// int8, test/clean PCK@20 of fp32, PTQ (dynamic, static fake-quant and int8) and QAT (fake-quant
// and int8), the quantization gaps, and accuracy vs size with the Pareto front marked.
// Everything in the report is a function of the runs' results: no times, no paths, so a resumed
// sweep's report is byte-identical to an uninterrupted one's.
#include <string>
#include <vector>

#include "common/json.h"

namespace csipose {
struct SweepRun;

/// Collects one run's numbers from its stage outputs (train/report.json, ptq_*.json, qat/report.json,
/// the .csq files). Stages the sweep did not run are null. With latency_iters > 0, also the median
/// batch-1 forward time (ms, CPU, `threads` intra-op threads) of the fp32 best checkpoint and of the
/// deployable int8 model.
Json collect_run_result(const std::string& run_dir, const SweepRun& run, int64_t latency_iters = 0, int64_t threads = 1);

/// Median milliseconds of `iters` batch-1 forward passes (after 3 untimed) of a model file on the CPU.
double batch1_latency_ms(const std::string& model_file, int64_t iters, int64_t threads);

/// A point of the accuracy-vs-size plane: one run in one numerics (fp32 or int8).
struct ParetoPoint {
  std::string run, numerics, overrides;
  double bytes = 0, pck20 = 0;
  bool front = false;
};
/// Marks the points no other point beats in both size (<=) and accuracy (>=, one strictly);
/// returns them sorted by bytes, then accuracy descending, then run id.
std::vector<ParetoPoint> pareto_front(std::vector<ParetoPoint> points);

/// Reads plan.json and every runs/<id>/result.json of the sweep directory and writes report/.
/// Returns the rows (plan order) as a JSON array.
Json write_sweep_report(const std::string& dir);

}  // namespace csipose
