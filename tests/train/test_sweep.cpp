// Sweeps end to end on a tiny MM-Fi-layout synthetic dataset and pose_nano: config errors name the
// key, run ids ignore axis order, every stage feeds the report, failed runs are retried a bounded
// number of times, stale locks are taken over, two worker processes run every run exactly once,
// and a sweep killed in its second run resumes to the report of an uninterrupted one.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/config_node.h"
#include "common/json.h"
#include "data/synth/generator.h"
#include "data/synth/synth_config.h"
#include "models/artifact_registry.h"
#include "models/safetensors.h"
#include "train/sweep.h"
#include "train/sweep_report.h"
#include "testing.h"

namespace csipose {
namespace {
namespace fs = std::filesystem;
using testing::TempDir;
using testing::error_of;
using testing::run_command;
using testing::run_csipose;
using testing::write_file;

class SweepTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    // 2 subjects x 2 activities x 3 sessions = 12 files of 16 windows (192 windows).
    generate_synthetic(SynthConfig::from_yaml(ConfigNode::load_string(
                           "layout: mmfi\nsubjects: 2\nactivities: [wave, squat]\nsessions: 3\nwindows_per_file: 16\n",
                           "<test>")),
                       dir_->file("data"), 2);
    write_file(base(), "name: t\nseed: 0\ndata: {root: \"" + dir_->file("data") +
                           "\"}\nmodel: {type: pose_transformer, preset: pose_nano}\n"
                           "train: {epochs: 1, batch_size: 16, eval_batch_size: 64, schedule: {warmup_epochs: 0}}\n");
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string base() { return dir_->file("base.yaml"); }

  /// A sweep YAML over the tiny base; `body` adds axes, stages and settings.
  static std::string sweep_yaml(const std::string& body) {
    return "name: s\nbase: \"" + base() + "\"\nexecution: {threads: 1, retries: 1, heartbeat_s: 0.2, stale_s: 5}\n" + body;
  }
  /// Writes the sweep file into `dir` and returns its path.
  static std::string sweep_file(const TempDir& dir, const std::string& body, const std::string& name = "sweep.yaml") {
    write_file(dir.file(name), sweep_yaml(body));
    return dir.file(name);
  }

  static TempDir* dir_;
};
TempDir* SweepTest::dir_ = nullptr;

std::vector<std::string> ids_of(const std::vector<SweepRun>& runs) {
  std::vector<std::string> ids;
  for (const auto& r : runs) ids.push_back(r.id);
  return ids;
}

/// Journal records of one run with the given state ("running" claims carry no "stage").
int64_t count_records(const std::string& dir, const std::string& run, const std::string& state, bool claims_only = false) {
  int64_t n = 0;
  for (const Json& r : read_journal(dir))
    if (r.at("run").as_string() == run && r.at("state").as_string() == state && (!claims_only || !r.contains("stage"))) ++n;
  return n;
}

std::vector<std::string> plan_ids(const std::string& dir) {
  std::vector<std::string> ids;
  const Json plan = Json::parse(read_text_file(dir + "/plan.json"));
  for (const Json& r : plan.at("runs").elements()) ids.push_back(r.at("id").as_string());
  return ids;
}

/// Alive and not a zombie (a killed background process may wait for its reaper).
bool process_alive(pid_t pid) {
  if (::kill(pid, 0) != 0) return false;
  std::string stat;
  try {
    stat = read_text_file("/proc/" + std::to_string(pid) + "/stat");
  } catch (const Error&) {
    return false;
  }
  const auto paren = stat.rfind(')');
  return !(paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z');
}

/// Starts `csipose sweep --config cfg` in the background (output to `log`) and returns its pid.
pid_t start_sweep(const std::string& cfg, const std::string& log, const std::string& pid_file) {
  const std::string bin = CSIPOSE_BINARY;
  const auto r = run_command(bin + " sweep --config " + cfg + " > " + log + " 2>&1 & echo $! > " + pid_file);
  if (r.exit_code != 0) return -1;
  return static_cast<pid_t>(std::stol(read_text_file(pid_file)));
}

/// Waits (up to 120 s) until `path` exists or the process `pid` has ended; true when it exists.
bool wait_for_file(const std::string& path, pid_t pid) {
  const auto t0 = std::chrono::steady_clock::now();
  while (!fs::exists(path) && process_alive(pid) && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120))
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  return fs::exists(path);
}

Json invocations(const std::string& train_dir) {
  return Json::parse(read_text_file(train_dir + "/run.json")).at("invocations");
}

TEST_F(SweepTest, ConfigErrorsNameTheKey) {
  // A misspelled axis key fails through the same --set path as `csipose train --set`.
  const std::string bad_axis = error_of([&] {
    plan_sweep(SweepConfig::parse(sweep_yaml("axes:\n  grid:\n    modle.preset: [pose_nano]\n"), "sweep.yaml"));
  });
  EXPECT_NE(bad_axis.find("axis modle.preset = pose_nano"), std::string::npos) << bad_axis;
  EXPECT_NE(bad_axis.find("modle"), std::string::npos) << bad_axis;
  EXPECT_NE(bad_axis.find("unknown key"), std::string::npos) << bad_axis;
  // Unknown sweep keys name file, line and path.
  const std::string unknown = error_of([&] { SweepConfig::parse(sweep_yaml("stagse: [train]\n"), "sweep.yaml"); });
  EXPECT_NE(unknown.find("sweep.yaml:4: stagse"), std::string::npos) << unknown;
  const std::string stage = error_of([&] { SweepConfig::parse(sweep_yaml("stages: [train, ptq]\n"), "sweep.yaml"); });
  EXPECT_NE(stage.find("unknown value \"ptq\""), std::string::npos) << stage;
  EXPECT_NE(stage.find("ptq_dynamic"), std::string::npos) << stage;
  const std::string zip = error_of([&] {
    SweepConfig::parse(sweep_yaml("axes:\n  zip:\n    - {seed: [1, 2], train.epochs: [1]}\n"), "sweep.yaml");
  });
  EXPECT_NE(zip.find("axes.zip[0].train.epochs: zipped lists must have one length"), std::string::npos) << zip;
  const std::string twice = error_of([&] {
    SweepConfig::parse(sweep_yaml("axes:\n  grid: {seed: [1, 2]}\n  seeds: [3]\n"), "sweep.yaml");
  });
  EXPECT_NE(twice.find("axis key \"seed\" is already an axis"), std::string::npos) << twice;
  const std::string qat = error_of([&] {
    plan_sweep(SweepConfig::parse(sweep_yaml("stages: [train, qat]\nqat: {set: [qat.bn_update_epoch=1]}\n"), "sweep.yaml"));
  });
  EXPECT_NE(qat.find("qat.set"), std::string::npos) << qat;
  EXPECT_NE(qat.find("bn_update_epoch"), std::string::npos) << qat;
  const std::string conv = error_of([&] { SweepConfig::parse(sweep_yaml("stages: [train, convert]\n"), "sweep.yaml"); });
  EXPECT_NE(conv.find("add the qat stage"), std::string::npos) << conv;
  const std::string exp = error_of([&] { SweepConfig::parse(sweep_yaml("export: {budget: 1}\n"), "sweep.yaml"); });
  EXPECT_NE(exp.find("export.budget"), std::string::npos) << exp;
  const std::string dup = error_of([&] {
    plan_sweep(SweepConfig::parse(sweep_yaml("axes:\n  grid: {train.optimizer.lr: [0.001, 1.0e-3]}\n"), "sweep.yaml"));
  });
  EXPECT_NE(dup.find("resolve to the same config"), std::string::npos) << dup;
}

TEST_F(SweepTest, RunIdsHashTheResolvedConfigNotTheAxisOrder) {
  const auto a = plan_sweep(SweepConfig::parse(
      sweep_yaml("axes:\n  grid:\n    model.preset: [pose_nano, pose_micro]\n    train.optimizer.lr: [1.0e-3, 2.0e-3]\n"),
      "a.yaml"));
  const auto b = plan_sweep(SweepConfig::parse(
      sweep_yaml("axes:\n  grid:\n    train.optimizer.lr: [0.002, 0.001]\n    model.preset: [pose_micro, pose_nano]\n"),
      "b.yaml"));
  ASSERT_EQ(a.size(), 4u);
  ASSERT_EQ(b.size(), 4u);
  auto sa = ids_of(a), sb = ids_of(b);
  std::sort(sa.begin(), sa.end());
  std::sort(sb.begin(), sb.end());
  EXPECT_EQ(sa, sb);
  EXPECT_EQ(std::set<std::string>(sa.begin(), sa.end()).size(), 4u);
  for (const auto& id : sa) EXPECT_EQ(id.size(), 12u);
  // A fixed override that restates the base's value resolves to the same config: the same run.
  const auto c = plan_sweep(SweepConfig::parse(
      sweep_yaml("set: [train.epochs=1]\naxes:\n  grid:\n    model.preset: [pose_nano, pose_micro]\n"
                 "    train.optimizer.lr: [1.0e-3, 2.0e-3]\n"),
      "c.yaml"));
  EXPECT_EQ(ids_of(c), ids_of(a));
  // The zip and seeds axes; the stage recipe is part of the identity.
  const auto z = plan_sweep(SweepConfig::parse(
      sweep_yaml("axes:\n  zip:\n    - {train.optimizer.lr: [1.0e-3, 2.0e-3], train.epochs: [1, 2]}\n  seeds: [0, 1, 2]\n"),
      "z.yaml"));
  ASSERT_EQ(z.size(), 6u);
  EXPECT_EQ(z[5].overrides, (std::vector<std::string>{"train.optimizer.lr=2.0e-3", "train.epochs=2", "seed=2"}));
  const auto zq = plan_sweep(SweepConfig::parse(
      sweep_yaml("stages: [train, ptq_static]\naxes:\n  zip:\n    - {train.optimizer.lr: [1.0e-3, 2.0e-3], train.epochs: [1, 2]}\n"
                 "  seeds: [0, 1, 2]\n"),
      "zq.yaml"));
  EXPECT_NE(zq[0].id, z[0].id);
  // The resolved sweep reads back to the same plan.
  const SweepConfig s = SweepConfig::parse(
      sweep_yaml("stages: [train, qat]\nqat: {set: [train.epochs=1]}\naxes:\n  grid: {model.preset: [pose_nano]}\n  seeds: [4, 5]\n"),
      "r.yaml");
  EXPECT_EQ(ids_of(plan_sweep(SweepConfig::parse(s.to_yaml(), "resolved"))), ids_of(plan_sweep(s)));
}

TEST_F(SweepTest, EveryStageFeedsTheReportAndDoneRunsAreSkipped) {
  TempDir d;
  const std::string cfg = sweep_file(d,
                                     "dir: \"" + d.file("sw") + "\"\naxes:\n  seeds: [0, 1]\n"
                                     "stages: [train, ptq_dynamic, ptq_static, qat, convert, eval, export]\n"
                                     "ptq: {calibration: 2, batch_size: 16, observer: minmax}\n"
                                     "qat: {set: [train.optimizer.lr=2.0e-4, train.init_output=none, qat.observer_update_epochs=1]}\n"
                                     "eval: {latency_iters: 5}\nexport: {budget: 100}\n");
  const auto r = run_csipose({"sweep", "--config", cfg, "--workers", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string sw = d.file("sw");
  const auto ids = plan_ids(sw);
  ASSERT_EQ(ids.size(), 2u);
  for (const auto& id : ids) {
    EXPECT_EQ(count_records(sw, id, "done"), 1);
    const Json res = Json::parse(read_text_file(sw + "/runs/" + id + "/result.json"));
    EXPECT_EQ(res.at("model").as_string(), "pose_nano");
    EXPECT_EQ(res.at("params").as_int(), 39971);  // README's pose_nano row
    EXPECT_EQ(res.at("fp32_bytes").as_int(), 159884);
    for (const char* k : {"pck20_fp32", "pck20_ptq_dynamic", "pck20_ptq_static_fq", "pck20_ptq_static_int8", "pck20_qat_fq",
                          "pck20_qat_int8", "gap_fp32_minus_int8_points", "gap_fq_minus_int8_points"})
      EXPECT_TRUE(res.at(k).is_number()) << k;
    EXPECT_EQ(res.at("int8_source").as_string(), "qat");
    EXPECT_GT(res.at("latency_ms_fp32").as_double(), 0.0);
    EXPECT_GT(res.at("latency_ms_int8").as_double(), 0.0);
    EXPECT_LT(res.at("int8_bytes").as_int(), res.at("fp32_bytes").as_int() / 2);  // int8 weights: about a quarter
    EXPECT_NEAR(res.at("gap_fp32_minus_int8_points").as_double(),
                100 * (res.at("pck20_fp32").as_double() - res.at("pck20_qat_int8").as_double()), 1e-9);
    // The QAT stage started from this run's fp32 best checkpoint.
    const Json q = Json::parse(read_text_file(sw + "/runs/" + id + "/qat/report.json")).at("quantization");
    EXPECT_EQ(q.at("init_from").as_string(), sw + "/runs/" + id + "/train/checkpoints/best.safetensors");
    // convert: the run's model.csq from the QAT best checkpoint evaluates to the QAT report's int8 row.
    const Json conv = Json::parse(read_text_file(sw + "/runs/" + id + "/convert.json"));
    EXPECT_EQ(conv.at("int8").at("clean").dump(), q.at("int8").at("clean").dump());
    EXPECT_TRUE(fs::exists(sw + "/runs/" + id + "/model.csq"));
    // export: the shipped .csq and its card, registered in the sweep's registry under s-<id>.
    const Json card = Json::parse(read_text_file(sw + "/runs/" + id + "/export/model_card.json"));
    EXPECT_EQ(card.at("registry").at("entry").as_string(), "s-" + id);
    EXPECT_EQ(read_text_file(sw + "/runs/" + id + "/export.done"), read_text_file(sw + "/runs/" + id + "/export/model_card.json"));
    EXPECT_TRUE(fs::exists(sw + "/runs/" + id + "/export/model.csq"));
  }
  // Both workers exported at the same time: neither entry was lost, and the lock is gone.
  const ModelRegistry reg = ModelRegistry::load(sw + "/registry.yaml");
  for (const auto& id : ids) EXPECT_TRUE(reg.find("s-" + id)) << id;
  EXPECT_FALSE(fs::exists(sw + "/registry.yaml.lock"));
  const std::string csv = read_text_file(sw + "/report/results.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3);
  EXPECT_EQ(csv.rfind("id,index,overrides,model,params,fp32_bytes,int8_bytes", 0), 0u) << csv;
  const std::string md = read_text_file(sw + "/report/pareto.md");
  EXPECT_NE(md.find("## Pareto front"), std::string::npos);
  EXPECT_NE(md.find("ms int8 (b=1)"), std::string::npos);
  EXPECT_NE(md.find("| " + ids[0] + " | seed=0 | pose_nano | 39971 | 159884 |"), std::string::npos) << md;
  const std::string svg = read_text_file(sw + "/report/pareto.svg");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("Pareto front"), std::string::npos);
  EXPECT_NE(svg.find("<polyline"), std::string::npos);
  // With latency measured: the front over batch-1 latency too.
  EXPECT_NE(md.find("## Pareto front: accuracy vs batch-1 latency"), std::string::npos) << md;
  const std::string lsvg = read_text_file(sw + "/report/pareto_latency.svg");
  EXPECT_NE(lsvg.find("batch-1 CPU latency"), std::string::npos);
  EXPECT_NE(lsvg.find(" ms</text>"), std::string::npos);

  // Re-running the same command (and --resume) skips the done runs: no new claims, no new stages.
  const size_t records = read_journal(sw).size();
  const auto again = run_csipose({"sweep", "--config", cfg});
  ASSERT_EQ(again.exit_code, 0) << again.output;
  const auto resumed = run_csipose({"sweep", "--resume", sw});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
  EXPECT_EQ(read_journal(sw).size(), records);
  for (const auto& id : ids) EXPECT_EQ(invocations(sw + "/runs/" + id + "/train").size(), 1u);
  EXPECT_EQ(read_text_file(sw + "/report/results.csv"), csv);
  const auto rep = run_csipose({"sweep", "report", sw});
  ASSERT_EQ(rep.exit_code, 0) << rep.output;
  EXPECT_EQ(read_text_file(sw + "/report/pareto.md"), md);
}

TEST_F(SweepTest, FailedRunsAreRetriedAtMostRetriesTimes) {
  TempDir d;
  const std::string cfg = sweep_file(d, "dir: \"" + d.file("sw") + "\"\naxes:\n  grid: {data.root: [\"" + d.file("missing") + "\"]}\n");
  const auto r = run_csipose({"sweep", "--config", cfg});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("1 run(s) failed 2 time(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("stage train exited with code 1: dataset directory"), std::string::npos) << r.output;
  const std::string id = plan_ids(d.file("sw"))[0];
  EXPECT_EQ(count_records(d.file("sw"), id, "failed"), 2);
  const auto st = journal_status(d.file("sw")).at(id);
  EXPECT_EQ(st.attempts, 2);
  EXPECT_EQ(st.state, RunState::failed);
  // Out of retries: running the sweep again does not try a third time.
  const auto again = run_csipose({"sweep", "--resume", d.file("sw")});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_EQ(count_records(d.file("sw"), id, "failed"), 2);
  // A config-level retry budget increase (--set on the sweep file) gives it another try.
  const auto more = run_csipose({"sweep", "--config", cfg, "--set", "execution.retries=2"});
  EXPECT_EQ(more.exit_code, 1);
  EXPECT_EQ(count_records(d.file("sw"), id, "failed"), 3);
}

TEST_F(SweepTest, LiveLocksAreLeftAloneAndStaleLocksTakenOver) {
  TempDir d;
  const std::string cfg = sweep_file(d, "dir: \"" + d.file("sw") + "\"\n");
  const std::string sw = d.file("sw");
  const std::string id = plan_sweep(SweepConfig::load(cfg))[0].id;
  fs::create_directories(sw + "/locks");
  const std::string lock = sw + "/locks/" + id + ".lock";
  write_file(lock, "otherhost 1 otherhost:1:0\n");  // a worker on another machine, heartbeat fresh
  const auto r = run_csipose({"sweep", "--config", cfg, "--no-wait"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("0/1 runs done (0 here), 0 failed, 1 pending"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(sw + "/runs/" + id + "/train"));
  // Its heartbeat goes stale (older than execution.stale_s = 5 s): the next worker takes the run over.
  struct timeval old[2];
  gettimeofday(&old[0], nullptr);
  old[0].tv_sec -= 60;
  old[1] = old[0];
  ASSERT_EQ(utimes(lock.c_str(), old), 0);
  const auto t = run_csipose({"sweep", "--config", cfg});
  ASSERT_EQ(t.exit_code, 0) << t.output;
  EXPECT_EQ(count_records(sw, id, "done"), 1);
  bool noted = false;
  for (const Json& rec : read_journal(sw))
    if (rec.contains("note") && rec.at("note").as_string().find("took over from otherhost 1 otherhost:1:0 (its heartbeat is") == 0)
      noted = true;
  EXPECT_TRUE(noted);
  EXPECT_FALSE(fs::exists(lock));  // released when done
}

TEST_F(SweepTest, AWorkerWhoseLockWasTakenOverStopsItsStage) {
  // A worker that looked dead (say, a network partition) finds its lock owned by another worker at
  // its next heartbeat: it kills its stage and journals nothing more; the run's new owner finishes it.
  TempDir d;
  const std::string cfg = sweep_file(d, "dir: \"" + d.file("sw") + "\"\nset: [train.epochs=20]\n");
  const std::string sw = d.file("sw");
  const std::string id = plan_sweep(SweepConfig::load(cfg))[0].id;
  const pid_t pid = start_sweep(cfg, d.file("log"), d.file("pid"));
  ASSERT_GT(pid, 0);
  const std::string last = sw + "/runs/" + id + "/train/checkpoints/last.safetensors";
  ASSERT_TRUE(wait_for_file(last, pid)) << read_text_file(d.file("log"));
  write_text_atomic(sw + "/locks/" + id + ".lock", "otherhost 1 otherhost:1:0\n");  // the "other worker" (then silent)
  for (int i = 0; i < 6000 && process_alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const std::string log = read_text_file(d.file("log"));
  EXPECT_NE(log.find("sweep_lock_lost"), std::string::npos) << log;
  // The fake owner never beats: after stale_s the same worker takes the run back and finishes it.
  EXPECT_NE(log.find("1/1 runs done"), std::string::npos) << log;
  EXPECT_EQ(count_records(sw, id, "done"), 1);
  EXPECT_EQ(count_records(sw, id, "running", true), 2);
  const Json inv = invocations(sw + "/runs/" + id + "/train");
  ASSERT_EQ(inv.size(), 2u);
  EXPECT_EQ(inv.at(1).at("kind").as_string(), "resume");
}

TEST_F(SweepTest, TwoWorkerProcessesRunEveryRunExactlyOnce) {
  TempDir d;
  const std::string cfg = sweep_file(d, "dir: \"" + d.file("sw") + "\"\naxes:\n  seeds: [0, 1, 2, 3]\n");
  const std::string bin = CSIPOSE_BINARY;
  const auto r = run_command("(" + bin + " sweep --config " + cfg + " > " + d.file("a.log") + " 2>&1 & " + bin +
                             " sweep --config " + cfg + " > " + d.file("b.log") + " 2>&1 & wait) && cat " + d.file("a.log") +
                             " " + d.file("b.log"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string sw = d.file("sw");
  const auto ids = plan_ids(sw);
  ASSERT_EQ(ids.size(), 4u);
  std::set<std::string> workers;
  for (const auto& id : ids) {
    EXPECT_EQ(count_records(sw, id, "done"), 1) << id;
    EXPECT_EQ(count_records(sw, id, "running", /*claims_only=*/true), 1) << id;
    EXPECT_EQ(invocations(sw + "/runs/" + id + "/train").size(), 1u) << id;  // trained once, never restarted
    for (const Json& rec : read_journal(sw))
      if (rec.at("run").as_string() == id && rec.at("state").as_string() == "done") workers.insert(rec.at("worker").as_string());
  }
  // Two journal files (one per process); the report covers all four runs.
  int files = 0;
  for (const auto& e : fs::directory_iterator(sw + "/journal")) files += e.path().extension() == ".jsonl";
  EXPECT_EQ(files, 2);
  const std::string csv = read_text_file(sw + "/report/results.csv");
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 5);
  std::printf("runs done by %zu worker(s)\n", workers.size());
}

TEST_F(SweepTest, KilledSweepResumesToTheUninterruptedReport) {
  TempDir d;
  const std::string body = "axes:\n  seeds: [0, 1, 2]\nset: [train.epochs=20]\nstages: [train, ptq_static]\n"
                           "ptq: {calibration: 2, batch_size: 16, observer: minmax}\n";
  const std::string straight = sweep_file(d, "dir: \"" + d.file("a") + "\"\n" + body, "a.yaml");
  const std::string killed = sweep_file(d, "dir: \"" + d.file("b") + "\"\n" + body, "b.yaml");
  const std::string a = d.file("a"), b = d.file("b");
  const auto ids = ids_of(plan_sweep(SweepConfig::load(killed)));
  ASSERT_EQ(ids.size(), 3u);

  // Start the sweep, wait until the second run has written its first epoch checkpoint, kill -9.
  const pid_t pid = start_sweep(killed, d.file("b.log"), d.file("pid"));
  ASSERT_GT(pid, 0);
  const std::string second_last = b + "/runs/" + ids[1] + "/train/checkpoints/last.safetensors";
  ASSERT_TRUE(wait_for_file(second_last, pid)) << read_text_file(d.file("b.log"));
  ::kill(pid, SIGKILL);  // the worker; its stage process dies with it (PR_SET_PDEATHSIG)
  for (int i = 0; i < 500 && process_alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // The kill landed in the second run: its training had not finished.
  ASSERT_FALSE(fs::exists(b + "/runs/" + ids[1] + "/train/report.json")) << "the kill came too late to test a resume";
  EXPECT_EQ(count_records(b, ids[0], "done"), 1);
  EXPECT_EQ(count_records(b, ids[1], "done"), 0);
  EXPECT_FALSE(fs::exists(b + "/runs/" + ids[2]));

  // The uninterrupted sweep, then the resume of the killed one.
  const auto ra = run_csipose({"sweep", "--config", straight});
  ASSERT_EQ(ra.exit_code, 0) << ra.output;
  const auto rb = run_csipose({"sweep", "--resume", b});
  ASSERT_EQ(rb.exit_code, 0) << rb.output;

  // Run 1 was not redone; run 2 continued from its checkpoint; run 3 ran once.
  EXPECT_EQ(count_records(b, ids[0], "running", true), 1);
  EXPECT_EQ(invocations(b + "/runs/" + ids[0] + "/train").size(), 1u);
  const Json inv = invocations(b + "/runs/" + ids[1] + "/train");
  ASSERT_EQ(inv.size(), 2u);
  EXPECT_EQ(inv.at(1).at("kind").as_string(), "resume");
  EXPECT_GE(inv.at(1).at("from_epoch").as_int(), 1);
  EXPECT_EQ(count_records(b, ids[1], "running", true), 2);  // claimed twice: the killed attempt, the resume
  EXPECT_EQ(count_records(b, ids[1], "failed"), 0);          // a crash is not a failure
  for (const auto& id : ids) EXPECT_EQ(count_records(b, id, "done"), 1) << id;

  // Bit-exact final training state and an identical report.
  for (const auto& id : ids) {
    const auto ta = load_safetensors(a + "/runs/" + id + "/train/checkpoints/last.safetensors").tensors;
    const auto tb = load_safetensors(b + "/runs/" + id + "/train/checkpoints/last.safetensors").tensors;
    ASSERT_EQ(ta.size(), tb.size()) << id;
    for (const auto& kv : ta) EXPECT_TRUE(torch::equal(kv.second, tb.at(kv.first))) << id << " " << kv.first;
    EXPECT_EQ(read_text_file(a + "/runs/" + id + "/result.json"), read_text_file(b + "/runs/" + id + "/result.json")) << id;
  }
  for (const char* f : {"results.csv", "pareto.md", "pareto.svg"})
    EXPECT_EQ(read_text_file(a + "/report/" + f), read_text_file(b + "/report/" + f)) << f;
}

TEST_F(SweepTest, Usr1StopsAfterTheNextCheckpointAndTheRunResumes) {
  TempDir d;
  const std::string cfg = sweep_file(d, "dir: \"" + d.file("sw") + "\"\nset: [train.epochs=20]\n");
  const std::string sw = d.file("sw");
  const std::string id = plan_sweep(SweepConfig::load(cfg))[0].id;
  const pid_t pid = start_sweep(cfg, d.file("log"), d.file("pid"));
  ASSERT_GT(pid, 0);
  const std::string last = sw + "/runs/" + id + "/train/checkpoints/last.safetensors";
  ASSERT_TRUE(wait_for_file(last, pid)) << read_text_file(d.file("log"));
  ::kill(pid, SIGUSR1);  // what Slurm's --signal=B:USR1 forwards
  // Up to 2 minutes: the worker stops after the NEXT checkpoint, and an epoch is slow on a loaded machine.
  for (int i = 0; i < 12000 && process_alive(pid); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const std::string log = read_text_file(d.file("log"));
  ASSERT_NE(log.find("stopped on a signal after the last checkpoint"), std::string::npos) << log;
  ASSERT_FALSE(fs::exists(sw + "/runs/" + id + "/train/report.json")) << "the signal came too late to test a stop";
  // Journaled pending (a preemption is not a failure), lock released.
  const RunStatus st = journal_status(sw).at(id);
  EXPECT_EQ(st.state, RunState::pending);
  EXPECT_EQ(st.failures, 0);
  EXPECT_FALSE(fs::exists(sw + "/locks/" + id + ".lock"));
  const auto r = run_csipose({"sweep", "--resume", sw});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json inv = invocations(sw + "/runs/" + id + "/train");
  ASSERT_EQ(inv.size(), 2u);
  EXPECT_GE(inv.at(1).at("from_epoch").as_int(), 2);  // the worker waited for the checkpoint after the signal
  EXPECT_EQ(count_records(sw, id, "done"), 1);
}

TEST_F(SweepTest, SlurmEmitWritesAnArrayScriptThatRequeuesOnUsr1) {
  TempDir d;
  write_file(d.file("s.yaml"), "name: s\nbase: \"" + base() + "\"\ndir: \"" + d.file("sw") +
                                   "\"\naxes:\n  seeds: [0, 1, 2]\nexecution: {threads: 2, preempt_grace_s: 90}\n");
  const auto r = run_csipose({"sweep", "slurm", "--emit", "--config", d.file("s.yaml"), "--time", "01:30:00", "--set",
                              "execution.retries=3"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string script = read_text_file(d.file("sw") + "/sweep.sbatch");
  for (const char* line : {"#SBATCH --array=0-2\n", "#SBATCH --time=01:30:00\n", "#SBATCH --cpus-per-task=2\n",
                           "#SBATCH --requeue\n", "#SBATCH --signal=B:USR1@120\n", "scontrol requeue",
                           " sweep --config ", " --set 'execution.retries=3' --dir ", "--workers 1 &\n", "kill -USR1 $worker"})
    EXPECT_NE(script.find(line), std::string::npos) << line << "\n" << script;
  EXPECT_TRUE(fs::is_directory(d.file("sw") + "/slurm"));
  const auto none = run_csipose({"sweep", "slurm", "--config", d.file("s.yaml")});
  EXPECT_EQ(none.exit_code, 1);
  EXPECT_NE(none.output.find("--emit"), std::string::npos);
}

TEST(SweepPareto, FrontKeepsOnlyUndominatedPoints) {
  std::vector<ParetoPoint> pts = {{"a", "fp32", "", 100, 0.5}, {"b", "fp32", "", 200, 0.4}, {"c", "int8", "", 50, 0.3},
                                  {"d", "int8", "", 100, 0.5}, {"e", "fp32", "", 300, 0.7}};
  const auto out = pareto_front(pts);
  std::vector<std::string> front;
  for (const auto& p : out)
    if (p.front) front.push_back(p.run);
  // b is beaten by a (smaller and better); a and d tie, both stay.
  EXPECT_EQ(front, (std::vector<std::string>{"c", "a", "d", "e"}));
}

}  // namespace
}  // namespace csipose
