#pragma once
// Test helpers: scratch directories and running the csipose binary.
#include <functional>
#include <string>
#include <vector>

namespace csipose::testing {

/// A fresh empty directory under the build's temp area, unique per call; removed at exit of the
/// TempDir object.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

struct RunResult {
  int exit_code;
  std::string output;  ///< stdout and stderr together
};

/// Runs a shell command line (stdin from /dev/null, stderr merged into the output).
RunResult run_command(const std::string& command);

/// Runs the csipose binary with the given arguments (shell-quoted for you).
RunResult run_csipose(const std::vector<std::string>& args);

/// Debian's python3 with python3-torch: the interpreter of the PyTorch cross-checks.
constexpr const char* kSystemPython = "/usr/bin/python3";
/// True when kSystemPython can import torch (cross-checks skip otherwise).
bool system_python_has_torch();
/// Writes `script` to a file in `dir` and runs it there with kSystemPython (PYTHONPATH unset).
RunResult run_python_script(const TempDir& dir, const std::string& script);

/// Path of a file in the source tree ("configs/data/synth_small.yaml").
std::string source_path(const std::string& relative);

/// Writes text to a file (creating parent directories).
void write_file(const std::string& path, const std::string& text);

/// The message of the csipose::Error that `f` throws ("" and a test failure when it does not).
std::string error_of(const std::function<void()>& f);

/// The line of `output` that starts (after spaces) with `prefix`, or "" when none does.
std::string line_with(const std::string& output, const std::string& prefix);

}  // namespace csipose::testing
