// csipose sweep | sweep report | sweep slurm: resumable sweeps over a base experiment config,
// shared by local worker threads and Slurm array tasks through the sweep directory.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/options.h"
#include "common/atomic_file.h"
#include "common/check.h"
#include "train/sweep.h"
#include "train/sweep_report.h"

namespace csipose::cli {
namespace {
namespace fs = std::filesystem;

extern "C" void on_stop_signal(int) { request_sweep_stop(); }

/// SIGUSR1 (Slurm's --signal), SIGTERM and SIGINT: checkpoint-then-stop instead of dying mid-epoch.
void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int s : {SIGUSR1, SIGTERM, SIGINT}) sigaction(s, &sa, nullptr);
}

std::string self_executable() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  CSIPOSE_CHECK(!ec, "sweep: cannot find the csipose executable (/proc/self/exe): ", ec.message());
  return p.string();
}

/// The sweep config from --config (with --set) or from a sweep directory's sweep.yaml (--resume).
SweepConfig load_sweep(const std::string& cmd, const std::string& config, const std::string& resume,
                       const std::vector<std::string>& sets, std::string& dir) {
  CSIPOSE_CHECK(config.empty() != resume.empty(), cmd, ": give either --config SWEEP.yaml or --resume DIR");
  if (!resume.empty()) {
    CSIPOSE_CHECK(sets.empty(), cmd, ": --resume continues a sweep with its own sweep.yaml; --set needs --config");
    const std::string file = (fs::path(resume) / "sweep.yaml").string();
    CSIPOSE_CHECK(fs::is_regular_file(file), cmd, ": ", resume, " is not a sweep directory (no sweep.yaml)");
    dir = resume;
    return SweepConfig::load(file);
  }
  SweepConfig s = SweepConfig::load(config, sets);
  if (dir.empty()) dir = s.directory();
  return s;
}

}  // namespace

int sweep(const Args& args) {
  po::options_description desc("options");
  std::string config, resume, dir;
  std::vector<std::string> sets;
  int64_t workers = 1;
  bool no_wait = false;
  desc.add_options()
      ("config", po::value(&config), "sweep config (configs/sweeps/*.yaml)")
      ("set", po::value(&sets)->composing(), "override a key of the sweep file: --set execution.retries=2 (repeatable)")
      ("resume", po::value(&resume), "continue the sweep in this directory (same as re-running its --config)")
      ("dir", po::value(&dir), "sweep directory (default: the config's dir, else experiments/sweeps/<name>)")
      ("workers", po::value(&workers)->default_value(1), "runs at a time in this process (each stage process gets "
                                                          "execution.threads threads)")
      ("no-wait", po::bool_switch(&no_wait), "return when nothing is claimable instead of waiting for runs other "
                                             "workers hold (and taking them over when their heartbeat goes stale)");
  po::variables_map vm;
  if (!parse_options("sweep", "--config SWEEP.yaml [--set k=v ...] [--dir D] [--workers N] | --resume D", desc, args, vm))
    return 0;
  CSIPOSE_CHECK(resume.empty() || dir.empty(), "sweep: --resume DIR names the directory; drop --dir");
  const SweepConfig s = load_sweep("sweep", config, resume, sets, dir);
  CSIPOSE_CHECK(workers >= 1, "sweep: --workers must be >= 1, got ", workers);
  const auto plan = plan_sweep(s);
  std::printf("sweep %s: %zu runs, stages", s.name.c_str(), plan.size());
  for (SweepStage st : s.stages) std::printf(" %s", to_string(st));
  std::printf(", %lld worker(s) x %lld thread(s), directory %s\n", static_cast<long long>(workers),
              static_cast<long long>(s.threads), dir.c_str());
  std::fflush(stdout);
  install_stop_handlers();
  SweepOptions o;
  o.executable = self_executable();
  o.workers = workers;
  o.wait_for_others = !no_wait;
  const SweepSummary sum = run_sweep(s, dir, o);
  std::printf("%lld/%lld runs done (%lld here), %lld failed, %lld pending, %lld running elsewhere\n",
              static_cast<long long>(sum.done), static_cast<long long>(sum.total), static_cast<long long>(sum.ran_here),
              static_cast<long long>(sum.failed), static_cast<long long>(sum.pending), static_cast<long long>(sum.running));
  if (sum.preempted) {
    std::printf("stopped on a signal after the last checkpoint; continue with: csipose sweep --resume %s\n", dir.c_str());
    return 0;
  }
  if (sum.failed > 0) {
    std::string which;
    for (const auto& [id, st] : journal_status(dir))
      if (st.failures > s.retries) which += (which.empty() ? " " : "; ") + id + ": " + st.error;
    fail("sweep: ", sum.failed, " run(s) failed ", s.retries + 1, " time(s):", which);
  }
  if (sum.done == sum.total) std::printf("report: %s/report/pareto.md\n", dir.c_str());
  return 0;
}

int sweep_report(const Args& args) {
  po::options_description desc("options");
  std::string dir;
  desc.add_options()("dir", po::value(&dir)->required(), "sweep directory");
  po::variables_map vm;
  if (!parse_options("sweep report", "DIR", desc, args, vm, {"dir"})) return 0;
  CSIPOSE_CHECK(fs::is_regular_file(fs::path(dir) / "plan.json"), "sweep report: ", dir,
                " is not a sweep directory (no plan.json)");
  const Json rows = write_sweep_report(dir);
  std::printf("%s", read_text_file((fs::path(dir) / "report" / "pareto.md").string()).c_str());
  std::printf("\n%zu run(s): %s/report/results.csv, pareto.md, pareto.svg\n", rows.size(), dir.c_str());
  return 0;
}

int sweep_slurm(const Args& args) {
  po::options_description desc("options");
  std::string config, dir, out, time, partition;
  std::vector<std::string> sets;
  int64_t array = 0;
  bool emit = false;
  desc.add_options()
      ("emit", po::bool_switch(&emit), "write the sbatch job-array script")
      ("config", po::value(&config)->required(), "sweep config")
      ("set", po::value(&sets)->composing(), "override a key of the sweep file (repeatable)")
      ("dir", po::value(&dir), "sweep directory on the shared filesystem (default: the config's)")
      ("array", po::value(&array)->default_value(0), "array tasks (workers); 0 = one per run")
      ("time", po::value(&time)->default_value("04:00:00"), "time limit of each task")
      ("partition", po::value(&partition)->default_value(""), "Slurm partition")
      ("out", po::value(&out)->default_value(""), "script path (default DIR/sweep.sbatch)");
  po::variables_map vm;
  if (!parse_options("sweep slurm", "--emit --config SWEEP.yaml [--array N] [--time T] [--out F]", desc, args, vm)) return 0;
  CSIPOSE_CHECK(emit, "sweep slurm: nothing to do; --emit writes the sbatch script");
  CSIPOSE_CHECK(array >= 0, "sweep slurm: --array must be >= 0, got ", array);
  const SweepConfig s = load_sweep("sweep slurm", config, "", sets, dir);
  const auto plan = plan_sweep(s);
  SlurmOptions o;
  o.array = array;
  o.time = time;
  o.partition = partition;
  o.executable = self_executable();
  o.sweep_file = fs::absolute(config).string();
  o.sets = sets;
  o.workdir = fs::current_path().string();
  const std::string abs_dir = fs::absolute(dir).lexically_normal().string();
  fs::create_directories(fs::path(abs_dir) / "slurm");  // sbatch does not create --output directories
  if (out.empty()) out = (fs::path(dir) / "sweep.sbatch").string();
  write_text_atomic(out, slurm_script(s, abs_dir, static_cast<int64_t>(plan.size()), o));
  fs::permissions(out, fs::perms::owner_exec | fs::perms::group_exec, fs::perm_options::add);
  std::printf("wrote %s (%zu runs, array of %lld); submit with: sbatch %s\n", out.c_str(), plan.size(),
              static_cast<long long>(array > 0 ? array : static_cast<int64_t>(plan.size())), out.c_str());
  return 0;
}

}  // namespace csipose::cli
