#pragma once
// Sweeps: many runs of one base experiment, resumable, shared by any number of workers.
//
// A sweep YAML names a base experiment config, axes (grid lists, zipped lists, seeds) that become
// `--set key.path=value` overrides of it, and the stages every run goes through
// (train -> ptq_dynamic / ptq_static -> qat -> eval). A run's id is a hash of its resolved config
// and stage recipe, so re-planning never renumbers or duplicates runs. The sweep directory:
//   sweep.yaml                 the resolved sweep config (`csipose sweep --resume DIR` reads it)
//   plan.json                  every run: id, index, overrides
//   journal/<worker>.jsonl     append-only, fsync'd run states, one file per worker process
//   locks/<id>.lock            a claimed run: owner "host pid worker", mtime = heartbeat
//   runs/<id>/                 config.yaml, train/ (a `csipose train` run directory), ptq_*.json,
//                              ptq_static.csq, qat/ (a `csipose qat` run directory), result.json, logs/
//   report/                    results.csv, pareto.md, pareto.svg (sweep_report.h)
// Each stage is a child process of the csipose executable itself (see docs/sweeps.md for why).
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/json.h"

namespace csipose {
class ConfigNode;

/// In dependency order (a sweep runs its stages in this order): convert needs qat; export ships the
/// QAT model (.csq) when there is a qat stage, else the fp32 weights (.safetensors).
enum class SweepStage { train, ptq_dynamic, ptq_static, qat, convert, eval, export_ };
const char* to_string(SweepStage s);

/// One axis: a config key path and the YAML scalars it takes ("model.preset": [pose_nano, ...]).
struct SweepAxis {
  std::string key;
  std::vector<std::string> values;
};

struct SweepConfig {
  std::string name = "sweep";
  std::string base;                        ///< the experiment config every run starts from
  std::string dir;                         ///< sweep directory; "" = experiments/sweeps/<name>
  std::vector<std::string> set;            ///< overrides applied to every run, before the axes
  std::vector<SweepAxis> grid;             ///< cartesian product, outermost first
  std::vector<std::vector<SweepAxis>> zip; ///< each group's lists advance together
  std::vector<int64_t> seeds;              ///< the `seed` axis; empty = the base config's seed
  std::vector<SweepStage> stages{SweepStage::train, SweepStage::eval};
  int64_t ptq_calibration = 32;            ///< ptq_static: calibration batches
  int64_t ptq_batch_size = 64;
  std::string ptq_observer = "histogram";  ///< ptq_static activation observer: histogram | minmax
  std::vector<std::string> qat_set;        ///< overrides of the qat stage's config (init_from is set)
  /// eval: batch-1 forward passes timed per model (fp32 and the deployable int8); 0 = no latency.
  /// A measurement, not part of the run's identity, and not reproducible: off by default.
  int64_t latency_iters = 0;
  /// export: the registry entry's accuracy budget (max test/clean PCK@20 drop, points). The entries
  /// go to <sweep dir>/registry.yaml, named <sweep name>-<run id>.
  double export_budget = 0.5;
  int64_t threads = 1;                     ///< intra-op threads of each stage process (OMP_NUM_THREADS)
  int64_t retries = 1;                     ///< a failed run is tried at most 1 + retries times
  double heartbeat_s = 10.0;               ///< lock touch interval of a running worker
  double stale_s = 120.0;                  ///< a lock older than this is taken over
  double preempt_grace_s = 120.0;          ///< on SIGUSR1/SIGTERM: wait this long for the next checkpoint
  std::string source = "<sweep>";          ///< the file it came from (messages)

  static SweepConfig from_yaml(const ConfigNode& root);
  /// Loads a sweep file with `--set` overrides and rejects unknown keys.
  static SweepConfig load(const std::string& path, const std::vector<std::string>& overrides = {});
  static SweepConfig parse(const std::string& yaml, const std::string& source,
                           const std::vector<std::string>& overrides = {});
  /// The resolved sweep (base made absolute); parse(to_yaml()) gives back an equal plan.
  std::string to_yaml() const;
  std::string directory() const { return dir.empty() ? "experiments/sweeps/" + name : dir; }
  bool has(SweepStage s) const;
};

struct SweepRun {
  std::string id;                      ///< 12 hex digits of SHA-256(config + stage recipe)
  int64_t index = 0;                   ///< position in the plan (grid-major order)
  std::vector<std::string> overrides;  ///< the axis assignments, "key.path=value"
  std::string config_yaml;             ///< the resolved ExperimentConfig
  std::string qat_yaml;                ///< the resolved qat stage config ("" without a qat stage)
};

/// Expands the axes into runs and resolves each run's config through ExperimentConfig::load (so a
/// misspelled axis key is an error naming it and the sweep file). Duplicate runs are refused.
std::vector<SweepRun> plan_sweep(const SweepConfig& sweep);

// ---- the journal -------------------------------------------------------------------------------
enum class RunState { pending, running, done, failed };
const char* to_string(RunState s);

/// A run's state folded from every journal record about it.
struct RunStatus {
  RunState state = RunState::pending;
  int64_t attempts = 0;   ///< highest attempt number seen
  int64_t failures = 0;   ///< "failed" records
  int64_t done = 0;       ///< "done" records (exactly one in a healthy sweep)
  std::string worker, stage, error;
};

/// Every record of every worker's journal file in DIR/journal (a torn last line is skipped).
std::vector<Json> read_journal(const std::string& dir);
/// The folded state of each run id that has records.
std::map<std::string, RunStatus> journal_status(const std::string& dir);

/// Counts for the progress line and the exit code.
struct SweepSummary {
  int64_t total = 0, done = 0, running = 0, failed = 0, pending = 0;
  int64_t ran_here = 0;  ///< runs this invocation finished
  bool preempted = false;
  Json to_json() const;
};
SweepSummary summarize(const std::vector<SweepRun>& plan, const std::map<std::string, RunStatus>& status,
                       int64_t retries);

// ---- running -----------------------------------------------------------------------------------
struct SweepOptions {
  std::string executable;   ///< the csipose binary each stage runs (/proc/self/exe from the CLI)
  int64_t workers = 1;      ///< worker threads in this process, one run (one stage process) each
  /// Wait for runs other workers hold (and take them over when their heartbeat goes stale) instead
  /// of returning when nothing is claimable now.
  bool wait_for_others = true;
  bool progress = true;     ///< the live done/running/failed line on stderr
};

/// Writes sweep.yaml and plan.json (first time), then runs workers until every run is done or
/// out of retries (or a stop was requested). Writes the report when the sweep is complete.
SweepSummary run_sweep(const SweepConfig& sweep, const std::string& dir, const SweepOptions& options);

/// Asks running workers to stop: each waits up to preempt_grace_s for its stage process to write
/// its next checkpoint, stops it, journals the run "pending" (not a failure) and returns.
/// Async-signal-safe (a SIGUSR1 / SIGTERM handler calls it).
void request_sweep_stop();
void clear_sweep_stop();

/// A Slurm job-array script whose tasks each run one worker on the shared sweep directory:
/// requeued on preemption, with `--signal=B:USR1@grace` forwarded to the worker.
struct SlurmOptions {
  int64_t array = 0;             ///< array tasks; 0 = one per run
  std::string time = "04:00:00";
  std::string partition;
  std::string executable;        ///< absolute path of csipose
  std::string sweep_file;        ///< the sweep YAML the workers load
  std::vector<std::string> sets; ///< its --set overrides, passed on to every worker
  std::string workdir;           ///< the directory workers run in (relative paths resolve here)
};
std::string slurm_script(const SweepConfig& sweep, const std::string& dir, int64_t num_runs, const SlurmOptions& o);

}  // namespace csipose
