#include "train/sweep.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <functional>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/config_node.h"
#include "common/hash.h"
#include "common/progress.h"
#include "data/synth/generator.h"
#include "data/synth/synth_config.h"
#include "train/sweep_report.h"
#include "train/train_config.h"

extern char** environ;

namespace csipose {
namespace fs = std::filesystem;
namespace {

std::atomic<int> g_stop{0};  // set by request_sweep_stop (a signal handler): lock-free, signal-safe

constexpr std::initializer_list<std::pair<const char*, SweepStage>> kStages = {
    {"train", SweepStage::train}, {"ptq_dynamic", SweepStage::ptq_dynamic}, {"ptq_static", SweepStage::ptq_static},
    {"qat", SweepStage::qat}, {"convert", SweepStage::convert}, {"eval", SweepStage::eval},
    {"export", SweepStage::export_}};

/// "file:line: path.key" of a key, for messages raised after parsing (ConfigNode::error's prefix).
std::string location(const ConfigNode& n, const std::string& key) {
  try {
    n.error(key, "");
  } catch (const Error& e) {
    std::string m = e.what();
    return m.size() >= 2 ? m.substr(0, m.size() - 2) : m;
  }
  return key;
}

std::string join(const std::vector<std::string>& parts, const std::string& sep) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : sep) + p;
  return out;
}

std::string yaml_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json_quote(items[i]);
  return out + "]";
}

std::string fmt(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  return host;
}

void sleep_s(double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); }

}  // namespace

const char* to_string(SweepStage s) {
  for (const auto& e : kStages)
    if (e.second == s) return e.first;
  return "?";
}

const char* to_string(RunState s) {
  switch (s) {
    case RunState::pending: return "pending";
    case RunState::running: return "running";
    case RunState::done: return "done";
    case RunState::failed: return "failed";
  }
  return "?";
}

bool SweepConfig::has(SweepStage s) const { return std::find(stages.begin(), stages.end(), s) != stages.end(); }

// ---- config ------------------------------------------------------------------------------------
SweepConfig SweepConfig::from_yaml(const ConfigNode& n) {
  SweepConfig c;
  c.source = n.source();
  c.name = n.get<std::string>("name");
  if (c.name.empty() || c.name.find('/') != std::string::npos) n.error("name", "expected a non-empty name without '/'");
  c.base = n.get<std::string>("base");
  if (!fs::is_regular_file(c.base)) n.error("base", "experiment config \"" + c.base + "\" does not exist");
  c.dir = n.get<std::string>("dir", "");
  c.set = n.get_list<std::string>("set", {});
  std::map<std::string, std::string> seen;  // axis key -> where it was first given
  auto add_key = [&](const ConfigNode& node, const std::string& key, const std::string& path) {
    const auto [it, inserted] = seen.emplace(path, location(node, key));
    if (!inserted) node.error(key, "axis key \"" + path + "\" is already an axis (" + it->second + ")");
  };
  auto read_axis = [&](const ConfigNode& node, const std::string& key) {
    SweepAxis a;
    a.key = key;
    a.values = node.get_list<std::string>(key);
    if (a.values.empty()) node.error(key, "an axis needs at least one value");
    add_key(node, key, key);
    return a;
  };
  if (n.has("axes")) {
    const ConfigNode axes = n.child("axes");
    if (axes.has("grid")) {
      const ConfigNode g = axes.child("grid");
      for (const auto& key : g.keys()) c.grid.push_back(read_axis(g, key));
    }
    if (axes.has("zip")) {
      for (const ConfigNode& z : axes.elements("zip")) {
        std::vector<SweepAxis> group;
        for (const auto& key : z.keys()) {
          group.push_back(read_axis(z, key));
          if (group.back().values.size() != group.front().values.size())
            z.error(key, "zipped lists must have one length: " + std::to_string(group.back().values.size()) + " values, " +
                             group.front().key + " has " + std::to_string(group.front().values.size()));
        }
        if (group.empty()) z.error("", "a zip group needs at least one key");
        c.zip.push_back(std::move(group));
      }
    }
    c.seeds = axes.get_list<int64_t>("seeds", {});
    if (!c.seeds.empty()) add_key(axes, "seeds", "seed");
  }
  const auto stage_names = n.get_list<std::string>("stages", {"train", "eval"});
  c.stages.clear();
  for (size_t i = 0; i < stage_names.size(); ++i) {
    const SweepStage s = parse_enum<SweepStage>(location(n, "stages") + "[" + std::to_string(i) + "]", stage_names[i], kStages);
    if (c.has(s)) n.error("stages", std::string("stage ") + to_string(s) + " is listed twice");
    c.stages.push_back(s);
  }
  if (!c.has(SweepStage::train)) n.error("stages", "every run needs the train stage (the fp32 model the others start from)");
  if (!c.has(SweepStage::eval)) c.stages.push_back(SweepStage::eval);  // the run's result row
  std::sort(c.stages.begin(), c.stages.end());  // the dependency order: train, ptq, qat, convert, eval, export
  if (c.has(SweepStage::convert) && !c.has(SweepStage::qat))
    n.error("stages", "the convert stage converts the QAT model; add the qat stage");
  if (n.has("ptq")) {
    const ConfigNode p = n.child("ptq");
    c.ptq_calibration = p.get_int("calibration", c.ptq_calibration, 1);
    c.ptq_batch_size = p.get_int("batch_size", c.ptq_batch_size, 1);
    c.ptq_observer = p.get<std::string>("observer", c.ptq_observer);
    if (c.ptq_observer != "histogram" && c.ptq_observer != "minmax")
      p.error("observer", "unknown value \"" + c.ptq_observer + "\"; expected one of: histogram, minmax");
  }
  if (n.has("qat")) c.qat_set = n.child("qat").get_list<std::string>("set", {});
  if (n.has("export")) {
    const ConfigNode e = n.child("export");
    c.export_budget = e.get_double("budget", c.export_budget, 0.0, 100.0);
    if (!c.has(SweepStage::export_)) e.error("budget", "set, but the stages have no export");
  }
  if (n.has("eval")) c.latency_iters = n.child("eval").get_int("latency_iters", c.latency_iters, 0, 100000);
  if (n.has("execution")) {
    const ConfigNode e = n.child("execution");
    c.threads = e.get_int("threads", c.threads, 1, 1024);
    c.retries = e.get_int("retries", c.retries, 0, 1000);
    c.heartbeat_s = e.get_double("heartbeat_s", c.heartbeat_s, 0.05, 3600);
    c.stale_s = e.get_double("stale_s", c.stale_s, 0.1, 1e6);
    c.preempt_grace_s = e.get_double("preempt_grace_s", c.preempt_grace_s, 0, 1e6);
    if (c.stale_s <= 2 * c.heartbeat_s)
      e.error("stale_s", "must exceed twice heartbeat_s (" + fmt(c.heartbeat_s) + "), got " + fmt(c.stale_s));
  }
  return c;
}

SweepConfig SweepConfig::parse(const std::string& yaml, const std::string& source, const std::vector<std::string>& overrides) {
  const ConfigNode root = ConfigNode::load_string(yaml, source, overrides);
  SweepConfig c = from_yaml(root);
  root.finish();
  return c;
}

SweepConfig SweepConfig::load(const std::string& path, const std::vector<std::string>& overrides) {
  const ConfigNode root = ConfigNode::load_file(path, overrides);
  SweepConfig c = from_yaml(root);
  root.finish();
  return c;
}

std::string SweepConfig::to_yaml() const {
  std::ostringstream o;
  o << "name: " << json_quote(name) << "\nbase: " << json_quote(fs::absolute(base).lexically_normal().string()) << "\n";
  if (!dir.empty()) o << "dir: " << json_quote(dir) << "\n";
  o << "set: " << yaml_list(set) << "\naxes:\n  grid:";
  if (grid.empty()) o << " {}";
  o << "\n";
  for (const auto& a : grid) o << "    " << json_quote(a.key) << ": " << yaml_list(a.values) << "\n";
  o << "  zip:" << (zip.empty() ? " []" : "") << "\n";
  for (const auto& group : zip)
    for (size_t i = 0; i < group.size(); ++i)
      o << (i ? "      " : "    - ") << json_quote(group[i].key) << ": " << yaml_list(group[i].values) << "\n";
  o << "  seeds: [";
  for (size_t i = 0; i < seeds.size(); ++i) o << (i ? ", " : "") << seeds[i];
  o << "]\nstages: [";
  for (size_t i = 0; i < stages.size(); ++i) o << (i ? ", " : "") << to_string(stages[i]);
  o << "]\nptq: {calibration: " << ptq_calibration << ", batch_size: " << ptq_batch_size << ", observer: " << ptq_observer
    << "}\n";
  o << "qat: {set: " << yaml_list(qat_set) << "}\neval: {latency_iters: " << latency_iters << "}\n";
  if (has(SweepStage::export_)) o << "export: {budget: " << fmt(export_budget) << "}\n";
  o << "execution: {threads: " << threads << ", retries: " << retries << ", heartbeat_s: " << fmt(heartbeat_s)
    << ", stale_s: " << fmt(stale_s) << ", preempt_grace_s: " << fmt(preempt_grace_s) << "}\n";
  return o.str();
}

// ---- plan --------------------------------------------------------------------------------------
namespace {
constexpr const char* kQatInitPlaceholder = "<run>/train/checkpoints/best.safetensors";

std::string resolve_qat(const SweepConfig& s, const std::string& config_yaml, const std::string& init_from,
                        const std::string& what) {
  std::vector<std::string> ov = s.qat_set;
  ov.push_back("qat.init_from=" + json_quote(init_from));
  try {
    return ExperimentConfig::parse(config_yaml, what, ov).to_yaml();
  } catch (const Error& e) {
    fail(s.source, ": qat.set: ", e.what());
  }
}
}  // namespace

std::vector<SweepRun> plan_sweep(const SweepConfig& s) {
  // Each axis alone first, so a bad key or value is reported at its line in the sweep file.
  auto check_axis = [&](const SweepAxis& a) {
    for (const auto& v : a.values) {
      std::vector<std::string> ov = s.set;
      ov.push_back(a.key + "=" + v);
      try {
        (void)ExperimentConfig::load(s.base, ov);
      } catch (const Error& e) {
        fail(s.source, ": axis ", a.key, " = ", v, ": ", e.what());
      }
    }
  };
  for (const auto& a : s.grid) check_axis(a);
  for (const auto& g : s.zip)
    for (const auto& a : g) check_axis(a);

  std::vector<std::vector<std::string>> combos{{}};
  auto expand = [&](size_t n, const std::function<std::vector<std::string>(size_t)>& assign) {
    std::vector<std::vector<std::string>> next;
    for (const auto& c : combos)
      for (size_t i = 0; i < n; ++i) {
        auto v = c;
        for (auto& a : assign(i)) v.push_back(std::move(a));
        next.push_back(std::move(v));
      }
    combos = std::move(next);
  };
  for (const auto& a : s.grid) expand(a.values.size(), [&](size_t i) { return std::vector<std::string>{a.key + "=" + a.values[i]}; });
  for (const auto& g : s.zip)
    expand(g.front().values.size(), [&](size_t i) {
      std::vector<std::string> out;
      for (const auto& a : g) out.push_back(a.key + "=" + a.values[i]);
      return out;
    });
  if (!s.seeds.empty())
    expand(s.seeds.size(), [&](size_t i) { return std::vector<std::string>{"seed=" + std::to_string(s.seeds[i])}; });

  std::string recipe = "stages: [";
  for (size_t i = 0; i < s.stages.size(); ++i) recipe += (i ? ", " : "") + std::string(to_string(s.stages[i]));
  recipe += "]\n";
  if (s.has(SweepStage::ptq_static) || s.has(SweepStage::ptq_dynamic))
    recipe += "ptq: {calibration: " + std::to_string(s.ptq_calibration) + ", batch_size: " + std::to_string(s.ptq_batch_size) +
              ", observer: " + s.ptq_observer + "}\n";
  if (s.has(SweepStage::export_)) recipe += "export: {budget: " + fmt(s.export_budget) + "}\n";

  std::vector<SweepRun> runs;
  std::map<std::string, size_t> by_id;
  for (size_t i = 0; i < combos.size(); ++i) {
    SweepRun r;
    r.index = static_cast<int64_t>(i);
    r.overrides = combos[i];
    std::vector<std::string> ov = s.set;
    ov.insert(ov.end(), combos[i].begin(), combos[i].end());
    try {
      r.config_yaml = ExperimentConfig::load(s.base, ov).to_yaml();
    } catch (const Error& e) {
      fail(s.source, ": run ", i, " [", join(combos[i], ", "), "]: ", e.what());
    }
    std::string run_recipe = recipe;
    if (s.has(SweepStage::qat)) {
      r.qat_yaml = resolve_qat(s, r.config_yaml, kQatInitPlaceholder, s.source + " [qat stage]");
      run_recipe += "qat:\n" + indent_yaml(r.qat_yaml, 2);
    }
    r.id = sha256_hex(r.config_yaml + "\n---\n" + run_recipe).substr(0, 12);
    const auto [it, inserted] = by_id.emplace(r.id, i);
    CSIPOSE_CHECK(inserted, s.source, ": runs ", it->second, " [", join(runs[it->second].overrides, ", "), "] and ", i, " [",
                  join(combos[i], ", "), "] resolve to the same config (id ", r.id, "); remove the duplicate axis value");
    runs.push_back(std::move(r));
  }
  return runs;
}

// ---- journal -----------------------------------------------------------------------------------
namespace {

/// One append-only journal file per worker process: a single writer, so appends never interleave,
/// even on NFS where O_APPEND from several clients is not atomic.
class JournalWriter {
 public:
  JournalWriter(const std::string& dir, const std::string& process) {
    fs::create_directories(fs::path(dir) / "journal");
    path_ = (fs::path(dir) / "journal" / (process + ".jsonl")).string();
    fd_ = ::open(path_.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    CSIPOSE_CHECK(fd_ >= 0, "cannot open the sweep journal ", path_, ": ", std::strerror(errno));
  }
  ~JournalWriter() { ::close(fd_); }
  JournalWriter(const JournalWriter&) = delete;
  JournalWriter& operator=(const JournalWriter&) = delete;

  void append(Json record) {
    std::lock_guard<std::mutex> lock(mu_);
    record.set("t", now_s()).set("seq", seq_++);
    const std::string line = record.dump() + "\n";
    size_t off = 0;
    while (off < line.size()) {
      const ssize_t n = ::write(fd_, line.data() + off, line.size() - off);
      if (n < 0 && errno == EINTR) continue;
      CSIPOSE_CHECK(n > 0, "cannot append to the sweep journal ", path_, ": ", std::strerror(errno));
      off += static_cast<size_t>(n);
    }
    CSIPOSE_CHECK(::fsync(fd_) == 0, "cannot fsync the sweep journal ", path_, ": ", std::strerror(errno));
  }

 private:
  std::string path_;
  int fd_ = -1;
  int64_t seq_ = 0;
  std::mutex mu_;
};

Json record(const std::string& run, RunState state, int64_t attempt, const std::string& worker) {
  Json r = Json::object();
  r.set("run", run).set("state", to_string(state)).set("attempt", attempt).set("worker", worker);
  return r;
}

}  // namespace

std::vector<Json> read_journal(const std::string& dir) {
  std::vector<Json> out;
  const fs::path jdir = fs::path(dir) / "journal";
  if (!fs::is_directory(jdir)) return out;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(jdir))
    if (e.path().extension() == ".jsonl") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::istringstream in(read_text_file(f.string()));
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      try {
        out.push_back(Json::parse(line));
      } catch (const Error&) {
        // a line torn by a crash mid-write (its writer is dead; the state it carried is re-derived)
      }
    }
  }
  return out;
}

std::map<std::string, RunStatus> journal_status(const std::string& dir) {
  std::vector<Json> recs = read_journal(dir);
  // Records of one run are written under its lock, so (attempt, time) orders them.
  std::stable_sort(recs.begin(), recs.end(), [](const Json& a, const Json& b) {
    const int64_t aa = a.at("attempt").as_int(), ba = b.at("attempt").as_int();
    return aa != ba ? aa < ba : a.at("t").as_double() < b.at("t").as_double();
  });
  std::map<std::string, RunStatus> st;
  for (const Json& r : recs) {
    RunStatus& s = st[r.at("run").as_string()];
    const std::string state = r.at("state").as_string();
    s.attempts = std::max(s.attempts, r.at("attempt").as_int());
    if (state == "done") ++s.done;
    if (state == "failed") {
      ++s.failures;
      s.error = r.contains("error") ? r.at("error").as_string() : "";
    }
    if (s.done > 0) {
      s.state = RunState::done;
      continue;
    }
    s.state = state == "running" ? RunState::running : state == "failed" ? RunState::failed : RunState::pending;
    s.worker = r.at("worker").as_string();
    if (r.contains("stage")) s.stage = r.at("stage").as_string();
  }
  return st;
}

Json SweepSummary::to_json() const {
  Json j = Json::object();
  j.set("total", total).set("done", done).set("running", running).set("failed", failed).set("pending", pending);
  return j;
}

SweepSummary summarize(const std::vector<SweepRun>& plan, const std::map<std::string, RunStatus>& status, int64_t retries) {
  SweepSummary s;
  s.total = static_cast<int64_t>(plan.size());
  for (const auto& r : plan) {
    const auto it = status.find(r.id);
    if (it == status.end()) {
      ++s.pending;
    } else if (it->second.state == RunState::done) {
      ++s.done;
    } else if (it->second.failures > retries) {
      ++s.failed;
    } else if (it->second.state == RunState::running) {
      ++s.running;
    } else {
      ++s.pending;
    }
  }
  return s;
}

// ---- locks -------------------------------------------------------------------------------------
namespace {

struct LockInfo {
  std::string content;
  double mtime = 0;
};

bool read_lock(const std::string& path, LockInfo& info) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return false;
  info.mtime = static_cast<double>(st.st_mtim.tv_sec) + 1e-9 * static_cast<double>(st.st_mtim.tv_nsec);
  try {
    info.content = read_text_file(path);
  } catch (const Error&) {
    return false;
  }
  return true;
}

/// O_EXCL create: atomic on local filesystems and on NFSv3+.
bool create_lock(const std::string& path, const std::string& content) {
  const int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) {
    CSIPOSE_CHECK(errno == EEXIST, "cannot create the lock file ", path, ": ", std::strerror(errno));
    return false;
  }
  const ssize_t n = ::write(fd, content.data(), content.size());
  ::fsync(fd);
  ::close(fd);
  CSIPOSE_CHECK(n == static_cast<ssize_t>(content.size()), "cannot write the lock file ", path);
  return true;
}

/// A live process (a zombie, killed but not yet reaped, is dead).
bool process_alive(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
  std::string stat;
  try {
    stat = read_text_file("/proc/" + std::to_string(pid) + "/stat");
  } catch (const Error&) {
    return true;  // no /proc: trust kill()
  }
  const auto paren = stat.rfind(')');
  return !(paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z');
}

/// Stale: its owner is a dead process on this host, or its heartbeat is older than stale_s.
bool lock_is_stale(const LockInfo& info, double stale_s, const std::string& host, std::string& why) {
  std::istringstream in(info.content);
  std::string owner_host;
  long long pid = 0;
  in >> owner_host >> pid;
  if (owner_host == host && pid > 0 && !process_alive(static_cast<pid_t>(pid))) {
    why = "its worker process " + std::to_string(pid) + " is gone";
    return true;
  }
  const double age = now_s() - info.mtime;
  if (age > stale_s) {
    why = "its heartbeat is " + std::to_string(static_cast<long long>(age)) + " s old";
    return true;
  }
  return false;
}

/// Claims a run's lock; takes over a stale one (renamed aside first, so of several workers that
/// judge it stale only one moves it). `note` says whose lock was taken over.
bool claim_lock(const std::string& path, const std::string& content, double stale_s, const std::string& host,
                std::string& note) {
  note.clear();
  if (create_lock(path, content)) return true;
  LockInfo info;
  if (!read_lock(path, info)) return create_lock(path, content);  // released meanwhile
  std::string why;
  if (!lock_is_stale(info, stale_s, host, why)) return false;
  const std::string aside = path + ".stale." + std::to_string(::getpid()) + "." + std::to_string(std::hash<std::string>{}(content));
  if (::rename(path.c_str(), aside.c_str()) != 0) return false;  // another worker moved it first
  LockInfo moved;
  if (read_lock(aside, moved) && moved.content != info.content) {
    // We moved a fresh lock another worker had just created: put it back (link fails if taken).
    if (::link(aside.c_str(), path.c_str()) == 0) ::unlink(aside.c_str());
    return false;
  }
  ::unlink(aside.c_str());
  std::string owner = info.content;
  while (!owner.empty() && owner.back() == '\n') owner.pop_back();
  note = "took over from " + owner + " (" + why + ")";
  return create_lock(path, content);
}

void release_lock(const std::string& path, const std::string& content) {
  LockInfo info;
  if (read_lock(path, info) && info.content == content) ::unlink(path.c_str());
}

// ---- stage processes ---------------------------------------------------------------------------

struct FileStamp {
  bool exists = false;
  int64_t ino = 0, sec = 0, nsec = 0;
  bool operator!=(const FileStamp& o) const { return exists != o.exists || ino != o.ino || sec != o.sec || nsec != o.nsec; }
};

FileStamp stamp(const std::string& path) {
  FileStamp f;
  struct stat st;
  if (path.empty() || ::stat(path.c_str(), &st) != 0) return f;
  f.exists = true;
  f.ino = static_cast<int64_t>(st.st_ino);
  f.sec = st.st_mtim.tv_sec;
  f.nsec = st.st_mtim.tv_nsec;
  return f;
}

struct ChildOutcome {
  bool preempted = false;
  bool lock_lost = false;  ///< another worker took the run over (this one looked stale): stage killed
  int exit_code = 0;  ///< exit status, or 128 + signal
};

/// Runs `exe args...` with stdout+stderr appended to `log`, OMP/MKL threads pinned, and SIGKILL
/// on the death of the worker thread that started it (PR_SET_PDEATHSIG), so a killed worker never
/// leaves a stage writing into a run another worker takes over. Calls `beat` every heartbeat_s; when
/// it returns false (the lock is no longer ours) the stage is killed at once.
/// On a stop request: waits up to `grace` s for `checkpoint` to change (the stage's next epoch
/// checkpoint), then kills the stage.
ChildOutcome run_child(const std::string& exe, const std::vector<std::string>& args, const std::string& log,
                       int64_t threads, const std::string& checkpoint, double heartbeat_s, double grace,
                       const std::function<bool()>& beat) {
  std::vector<std::string> argv_s{exe};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) {
    const std::string v = *e;
    if (v.rfind("OMP_NUM_THREADS=", 0) == 0 || v.rfind("MKL_NUM_THREADS=", 0) == 0 || v.rfind("CSIPOSE_NO_TTY=", 0) == 0) continue;
    env_s.push_back(v);
  }
  env_s.push_back("OMP_NUM_THREADS=" + std::to_string(threads));
  env_s.push_back("MKL_NUM_THREADS=" + std::to_string(threads));
  env_s.push_back("CSIPOSE_NO_TTY=1");  // stage logs are JSON lines
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  fs::create_directories(fs::path(log).parent_path());
  const int log_fd = ::open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
  CSIPOSE_CHECK(log_fd >= 0, "cannot open ", log, ": ", std::strerror(errno));
  const int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid == 0) {  // child: async-signal-safe calls only
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::setpgid(0, 0);  // a terminal's Ctrl-C reaches the worker, which stops the stage after its checkpoint
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(log_fd);
  ::close(null_fd);
  CSIPOSE_CHECK(pid > 0, "cannot start ", exe, ": ", std::strerror(errno));

  ChildOutcome out;
  auto last_beat = std::chrono::steady_clock::now();
  bool stopping = false;
  FileStamp at_stop;
  std::chrono::steady_clock::time_point deadline;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) {
      out.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      out.preempted = stopping && WIFSIGNALED(status);  // the stop signal reached the stage too
      return out;
    }
    const auto now = std::chrono::steady_clock::now();
    if (std::chrono::duration<double>(now - last_beat).count() >= heartbeat_s) {
      if (!beat()) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        out.lock_lost = true;
        return out;
      }
      last_beat = now;
    }
    if (!stopping && g_stop.load()) {
      stopping = true;
      at_stop = stamp(checkpoint);
      deadline = now + std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(grace));
    }
    if (stopping && (now >= deadline || (!checkpoint.empty() && stamp(checkpoint) != at_stop))) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      out.preempted = true;
      return out;
    }
    sleep_s(0.02);
  }
}

class StageFailure : public Error {
 public:
  using Error::Error;
};

/// The state a worker thread shares with the others of its process.
struct WorkerContext {
  const SweepConfig& sweep;
  const std::string& dir;
  const SweepOptions& options;
  const std::vector<SweepRun>& plan;
  JournalWriter& journal;
  std::string host, process;
  std::atomic<int64_t> ran_here{0};
};

enum class RunOutcome { done, failed, preempted, lost };

/// Runs every stage of `run` not yet complete in its directory; completed stages are skipped, a
/// training stage killed mid-epoch resumes from its last checkpoint.
RunOutcome execute_run(WorkerContext& ctx, const SweepRun& run, int64_t attempt, const std::string& worker,
                       const std::function<bool()>& beat) {
  const fs::path rd = fs::path(ctx.dir) / "runs" / run.id;
  fs::create_directories(rd / "logs");
  if (!fs::exists(rd / "config.yaml")) write_text_atomic((rd / "config.yaml").string(), run.config_yaml);
  const std::string train_dir = (rd / "train").string();
  const std::string best = (rd / "train" / "checkpoints" / "best.safetensors").string();
  for (SweepStage stage : ctx.sweep.stages) {
    std::vector<std::string> args;
    std::string done_file, checkpoint;
    switch (stage) {
      case SweepStage::train:
        done_file = train_dir + "/report.json";
        checkpoint = train_dir + "/checkpoints/last.safetensors";
        if (fs::exists(train_dir + "/config.yaml"))
          args = {"train", "--resume", train_dir};
        else
          args = {"train", "--config", (rd / "config.yaml").string(), "--run-dir", train_dir};
        break;
      case SweepStage::ptq_dynamic:
        done_file = (rd / "ptq_dynamic.json").string();
        args = {"ptq", "--checkpoint", best, "--mode", "dynamic", "--batch-size", std::to_string(ctx.sweep.ptq_batch_size),
                "--json", done_file};
        break;
      case SweepStage::ptq_static:
        done_file = (rd / "ptq_static.json").string();
        args = {"ptq", "--checkpoint", best, "--mode", "static", "--calibration", std::to_string(ctx.sweep.ptq_calibration),
                "--observer", ctx.sweep.ptq_observer, "--batch-size", std::to_string(ctx.sweep.ptq_batch_size),
                "--out", (rd / "ptq_static.csq").string(), "--json", done_file};
        break;
      case SweepStage::qat: {
        const std::string qat_dir = (rd / "qat").string();
        done_file = qat_dir + "/report.json";
        checkpoint = qat_dir + "/checkpoints/last.safetensors";
        if (fs::exists(qat_dir + "/config.yaml")) {
          args = {"qat", "--resume", qat_dir};
        } else {
          const std::string cfg = (rd / "qat_config.yaml").string();
          write_text_atomic(cfg, resolve_qat(ctx.sweep, run.config_yaml, best, cfg));
          args = {"qat", "--config", cfg, "--run-dir", qat_dir};
        }
        break;
      }
      case SweepStage::convert:
        // The run's deployable int8 model from the QAT run's best checkpoint, evaluated back.
        done_file = (rd / "convert.json").string();
        args = {"convert", "--checkpoint", (rd / "qat" / "checkpoints" / "best.safetensors").string(), "--out",
                (rd / "model.csq").string(), "--json", done_file};
        break;
      case SweepStage::eval:
        done_file = (rd / "result.json").string();
        break;
      case SweepStage::export_: {
        // Marked done by the sweep itself once export exits 0 (its card is written before the
        // registry entry; --replace makes a retry after a crash in between idempotent).
        done_file = (rd / "export.done").string();
        const bool csq = ctx.sweep.has(SweepStage::qat);
        args = {"export", "--run", rd.string(), "--format", csq ? "csq" : "safetensors", "--out", (rd / "export").string(),
                "--registry", (fs::path(ctx.dir) / "registry.yaml").string(), "--name",
                ctx.sweep.name + "-" + run.id, "--budget", fmt(ctx.sweep.export_budget), "--replace"};
        break;
      }
    }
    if (fs::exists(done_file)) continue;
    Json rec = record(run.id, RunState::running, attempt, worker);
    ctx.journal.append(rec.set("stage", to_string(stage)));
    if (stage == SweepStage::eval) {
      write_text_atomic(done_file, collect_run_result(rd.string(), run, ctx.sweep.latency_iters, ctx.sweep.threads).dump(2) + "\n");
      continue;
    }
    const std::string log = (rd / "logs" / (std::string(to_string(stage)) + ".log")).string();
    const ChildOutcome out = run_child(ctx.options.executable, args, log, ctx.sweep.threads, checkpoint,
                                       ctx.sweep.heartbeat_s, ctx.sweep.preempt_grace_s, beat);
    if (out.lock_lost) return RunOutcome::lost;
    if (out.preempted) return RunOutcome::preempted;
    if (out.exit_code != 0) {
      // The error line of the stage (csipose prints "error: ..." last).
      std::string last;
      std::istringstream in(read_text_file(log));
      for (std::string line; std::getline(in, line);)
        if (line.rfind("error: ", 0) == 0) last = line.substr(7);
      throw StageFailure(str_cat("stage ", to_string(stage), " exited with code ", out.exit_code,
                                 last.empty() ? "" : ": " + last, " (log ", log, ")"));
    }
    if (stage == SweepStage::export_) write_text_atomic(done_file, read_text_file((rd / "export" / "model_card.json").string()));
    CSIPOSE_CHECK(fs::exists(done_file), "stage ", to_string(stage), " finished without writing ", done_file);
    if (g_stop.load()) return RunOutcome::preempted;
  }
  return RunOutcome::done;
}

void worker_loop(WorkerContext& ctx, int64_t k) {
  const std::string worker = ctx.process + ":" + std::to_string(k);
  const std::string lock_content = ctx.host + " " + std::to_string(::getpid()) + " " + worker + "\n";
  const fs::path locks = fs::path(ctx.dir) / "locks";
  while (!g_stop.load()) {
    auto status = journal_status(ctx.dir);
    bool left = false, worked = false;
    for (const SweepRun& run : ctx.plan) {
      if (g_stop.load()) break;
      auto it = status.find(run.id);
      if (it != status.end() && (it->second.state == RunState::done || it->second.failures > ctx.sweep.retries)) continue;
      left = true;
      const std::string lock = (locks / (run.id + ".lock")).string();
      std::string note;
      if (!claim_lock(lock, lock_content, ctx.sweep.stale_s, ctx.host, note)) continue;
      // Under the lock: the journal is authoritative (another worker may have finished it).
      status = journal_status(ctx.dir);
      it = status.find(run.id);
      const RunStatus st = it == status.end() ? RunStatus{} : it->second;
      if (st.state == RunState::done || st.failures > ctx.sweep.retries) {
        release_lock(lock, lock_content);
        continue;
      }
      const int64_t attempt = st.attempts + 1;
      Json claim = record(run.id, RunState::running, attempt, worker);
      if (!note.empty()) claim.set("note", note);
      ctx.journal.append(claim);
      // The heartbeat; false once another worker has taken the lock over (this one looked dead).
      auto beat = [&] {
        LockInfo li;
        if (!read_lock(lock, li) || li.content != lock_content) return false;
        ::utimes(lock.c_str(), nullptr);
        return true;
      };
      RunOutcome outcome;
      std::string error;
      try {
        outcome = execute_run(ctx, run, attempt, worker, beat);
      } catch (const std::exception& e) {
        outcome = RunOutcome::failed;
        error = e.what();
      }
      if (outcome == RunOutcome::lost) {  // the new owner journals the run from here on
        log_event("sweep_lock_lost", Json::object().set("run", run.id).set("worker", worker));
        worked = true;
        break;
      }
      Json end = record(run.id, outcome == RunOutcome::done ? RunState::done
                                : outcome == RunOutcome::failed ? RunState::failed
                                                                : RunState::pending,
                        attempt, worker);
      if (outcome == RunOutcome::failed) end.set("error", error);
      if (outcome == RunOutcome::preempted) end.set("note", "preempted: stopped after its last checkpoint");
      ctx.journal.append(end);  // the state first, then the lock: a reader never sees it free and undone
      release_lock(lock, lock_content);
      if (outcome == RunOutcome::done) ++ctx.ran_here;
      worked = true;
      break;  // re-read the journal: plan order first
    }
    if (!left) return;
    if (!worked) {
      if (!ctx.options.wait_for_others) return;
      sleep_s(std::min(1.0, ctx.sweep.heartbeat_s));
    }
  }
}

std::string eta_text(double s) {
  if (s <= 0) return "--";
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%dh%02dm", static_cast<int>(s / 3600), static_cast<int>(s / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%dm%02ds", static_cast<int>(s / 60), static_cast<int>(s) % 60);
  return buf;
}

/// Synthetic datasets the runs generate on first use (data.synth) are generated here once, under
/// locks/dataset.lock, before any stage starts: two workers must never write one directory.
void ensure_datasets(const std::vector<SweepRun>& plan, const std::string& dir, const std::string& host,
                     double stale_s) {
  std::set<std::pair<std::string, std::string>> seen;
  for (const auto& r : plan) {
    const ExperimentConfig cfg = ExperimentConfig::parse(r.config_yaml, "runs/" + r.id + "/config.yaml");
    seen.emplace(cfg.data.root, cfg.data.synth);
  }
  const std::string lock = (fs::path(dir) / "locks" / "dataset.lock").string();
  const std::string content = host + " " + std::to_string(::getpid()) + " dataset\n";
  for (const auto& [root, synth] : seen) {
    auto present = [&] { return fs::exists(fs::path(root) / "csi_windows.npy") || fs::exists(fs::path(root) / "X.npy"); };
    if (synth.empty()) continue;  // a missing dataset is the train stage's error
    for (;;) {
      std::string note;
      if (claim_lock(lock, content, stale_s, host, note)) {
        try {
          if (!present()) {
            log_event("generate_dataset", Json::object().set("root", root).set("synth", synth));
            generate_synthetic(SynthConfig::from_yaml(ConfigNode::load_file(synth)), root);
          }
        } catch (...) {
          release_lock(lock, content);
          throw;
        }
        release_lock(lock, content);
        break;
      }
      sleep_s(1.0);  // another worker is generating it
    }
  }
}

}  // namespace

void request_sweep_stop() { g_stop.store(1); }
void clear_sweep_stop() { g_stop.store(0); }

SweepSummary run_sweep(const SweepConfig& sweep, const std::string& dir, const SweepOptions& options) {
  CSIPOSE_CHECK(options.workers >= 1, "sweep: --workers must be >= 1, got ", options.workers);
  CSIPOSE_CHECK(!options.executable.empty(), "sweep: no csipose executable to run the stages");
  const std::vector<SweepRun> plan = plan_sweep(sweep);
  fs::create_directories(fs::path(dir) / "locks");
  fs::create_directories(fs::path(dir) / "runs");
  write_text_atomic((fs::path(dir) / "sweep.yaml").string(), sweep.to_yaml());
  Json pj = Json::object();
  Json runs = Json::array();
  for (const auto& r : plan) {
    Json e = Json::object();
    e.set("id", r.id).set("index", r.index).set("overrides", r.overrides);
    runs.push(e);
  }
  pj.set("name", sweep.name).set("runs", runs);
  write_text_atomic((fs::path(dir) / "plan.json").string(), pj.dump(2) + "\n");

  JournalWriter journal(dir, hostname() + "." + std::to_string(::getpid()));
  WorkerContext ctx{sweep, dir, options, plan, journal, hostname(), hostname() + ":" + std::to_string(::getpid())};
  ensure_datasets(plan, dir, ctx.host, sweep.stale_s);
  {
    const auto status = journal_status(dir);
    for (const auto& r : plan)
      if (!status.count(r.id)) ctx.journal.append(record(r.id, RunState::pending, 0, ctx.process));
  }

  std::vector<std::thread> threads;
  std::atomic<int64_t> finished{0};
  for (int64_t k = 0; k < options.workers; ++k)
    threads.emplace_back([&ctx, &finished, k] {
      try {
        worker_loop(ctx, k);
      } catch (const std::exception& e) {
        log_event("sweep_worker_error", Json::object().set("worker", k).set("error", e.what()));
      }
      ++finished;
    });
  const bool tty = stderr_is_tty();
  const auto t0 = std::chrono::steady_clock::now();
  std::string last;
  auto draw = [&](bool final_line) {
    const SweepSummary s = summarize(plan, journal_status(dir), sweep.retries);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const int64_t here = ctx.ran_here.load();
    const double eta = here > 0 ? elapsed / static_cast<double>(here) * static_cast<double>(s.pending + s.running) : 0.0;
    const std::string key = s.to_json().dump();
    if (tty) {
      const int width = 24;
      const int filled = s.total > 0 ? static_cast<int>(width * s.done / s.total) : width;
      std::string bar(static_cast<size_t>(filled), '#');
      bar.resize(width, '.');
      std::fprintf(stderr, "\rsweep %s [%s] %lld/%lld done, %lld running, %lld failed  ETA %s\033[K%s", sweep.name.c_str(),
                   bar.c_str(), static_cast<long long>(s.done), static_cast<long long>(s.total),
                   static_cast<long long>(s.running), static_cast<long long>(s.failed), eta_text(eta).c_str(),
                   final_line ? "\n" : "");
      std::fflush(stderr);
    } else if (key != last || final_line) {
      Json f = s.to_json();
      f.set("sweep", sweep.name).set("eta_s", eta);
      log_event(final_line ? "sweep_done" : "sweep_progress", f);
    }
    last = key;
  };
  while (finished.load() < options.workers) {
    if (options.progress) draw(false);
    sleep_s(tty ? 0.5 : 1.0);
  }
  for (auto& t : threads) t.join();
  SweepSummary s = summarize(plan, journal_status(dir), sweep.retries);
  if (options.progress) draw(true);
  s.ran_here = ctx.ran_here.load();
  s.preempted = g_stop.load() != 0;
  if (s.done > 0 && s.pending == 0 && s.running == 0) write_sweep_report(dir);
  return s;
}

// ---- Slurm -------------------------------------------------------------------------------------
std::string slurm_script(const SweepConfig& sweep, const std::string& dir, int64_t num_runs, const SlurmOptions& o) {
  const int64_t array = o.array > 0 ? o.array : std::max<int64_t>(1, num_runs);
  const int grace = static_cast<int>(std::max(60.0, sweep.preempt_grace_s + 30));
  auto q = [](const std::string& s) {  // single-quoted for bash
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
  };
  std::ostringstream s;
  s << "#!/bin/bash\n"
    << "# csipose sweep worker array for " << sweep.name << " (" << num_runs << " runs), written by\n"
    << "# `csipose sweep slurm --emit`. Every task is one worker on the shared sweep directory: it claims\n"
    << "# runs through lock files (O_EXCL), so tasks never run a run twice, and a requeued or restarted\n"
    << "# task resumes the runs it held from their last checkpoint.\n"
    << "#SBATCH --job-name=csipose-" << sweep.name << "\n"
    << "#SBATCH --array=0-" << array - 1 << "\n"
    << "#SBATCH --time=" << o.time << "\n"
    << "#SBATCH --cpus-per-task=" << sweep.threads << "\n"
    << "#SBATCH --ntasks=1\n";
  if (!o.partition.empty()) s << "#SBATCH --partition=" << o.partition << "\n";
  s << "#SBATCH --requeue\n"
    << "#SBATCH --open-mode=append\n"
    << "# SIGUSR1 " << grace << " s before the time limit (and on preemption with a grace time): the worker\n"
    << "# waits for its stage's next checkpoint, stops, marks the run pending, and the task is requeued.\n"
    << "#SBATCH --signal=B:USR1@" << grace << "\n"
    << "#SBATCH --output=" << dir << "/slurm/%A_%a.out\n\n"
    << "set -u\n"
    << "cd " << q(o.workdir) << "\n"
    << "export OMP_NUM_THREADS=" << sweep.threads << " CSIPOSE_NO_TTY=1\n"
    << q(o.executable) << " sweep --config " << q(o.sweep_file);
  for (const auto& set : o.sets) s << " --set " << q(set);
  s << " --dir " << q(dir) << " --workers 1 &\n"
    << "worker=$!\n"
    << "preempted=0\n"
    << "trap 'preempted=1; kill -USR1 $worker' USR1   # preemption / time limit: checkpoint, then requeue\n"
    << "trap 'kill -USR1 $worker' TERM                # scancel: checkpoint, no requeue\n"
    << "rc=0\n"
    << "while kill -0 $worker 2>/dev/null; do wait $worker; rc=$?; done\n"
    << "if [ $preempted = 1 ]; then\n"
    << "  scontrol requeue \"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\n"
    << "fi\n"
    << "exit $rc\n";
  return s.str();
}

}  // namespace csipose
