#include "testing.h"

#include <cstdlib>

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "common/check.h"

namespace csipose::testing {
namespace fs = std::filesystem;

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  const fs::path base = fs::temp_directory_path() / "csipose-tests";
  path_ = (base / (std::to_string(::getpid()) + "-" + std::to_string(counter++))).string();
  fs::remove_all(path_);
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

static std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

RunResult run_command(const std::string& command) {
  const std::string cmd = command + " 2>&1 </dev/null";
  FILE* pipe = ::popen(cmd.c_str(), "r");
  CSIPOSE_CHECK(pipe != nullptr, "popen failed for ", cmd);
  std::string output;
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) output.append(buf.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

RunResult run_csipose(const std::vector<std::string>& args) {
  std::string cmd = shell_quote(CSIPOSE_BINARY);
  for (const auto& a : args) cmd += " " + shell_quote(a);
  return run_command(cmd);
}

std::string source_path(const std::string& relative) { return std::string(CSIPOSE_SOURCE_DIR) + "/" + relative; }

void write_file(const std::string& path, const std::string& text) {
  const fs::path p(path);
  if (p.has_parent_path()) fs::create_directories(p.parent_path());
  std::ofstream out(path, std::ios::binary);
  out << text;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a csipose::Error";
  return "";
}

std::string line_with(const std::string& output, const std::string& prefix) {
  size_t start = 0;
  while (start < output.size()) {
    size_t end = output.find('\n', start);
    if (end == std::string::npos) end = output.size();
    const std::string line = output.substr(start, end - start);
    const size_t first = line.find_first_not_of(' ');
    if (first != std::string::npos && line.compare(first, prefix.size(), prefix) == 0) return line;
    start = end + 1;
  }
  return "";
}

bool system_python_has_torch() {
  static const bool ok = std::system((std::string("env -u PYTHONPATH -u PYTHONHOME ") + kSystemPython +
                                      " -c 'import torch' >/dev/null 2>&1")
                                         .c_str()) == 0;
  return ok;
}

RunResult run_python_script(const TempDir& dir, const std::string& script) {
  const std::string path = dir.file("script.py");
  write_file(path, script);
  return run_command("cd '" + dir.path() + "' && env -u PYTHONPATH -u PYTHONHOME " + kSystemPython + " '" + path + "'");
}

}  // namespace csipose::testing
