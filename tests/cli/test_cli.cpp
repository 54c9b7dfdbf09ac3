// The csipose binary end to end: the command table and help, `data synth` -> `data inspect` ->
// `baseline` on a tiny synthetic set, and every user error as a non-zero exit with one
// "error: ..." line that names what was wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/json.h"
#include "testing.h"

namespace csipose {
namespace {
namespace fs = std::filesystem;
using testing::run_csipose;
using testing::RunResult;
using testing::TempDir;

// 2 subjects x 2 activities x 2 sessions = 8 files of 6 windows; split 6 / 1 / 1 files.
const char* kTinyConfig =
    "# tiny synthetic set for CLI tests\n"
    "layout: wiflow\n"
    "seed: 7\n"
    "subjects: 2\n"
    "activities: [wave, squat]\n"
    "sessions: 2\n"
    "windows_per_file: 6\n"
    "corruption:\n"
    "  files: [2]\n"
    "  window_fraction: 1.0\n";

using testing::line_with;

/// Whitespace-separated words of a line.
std::vector<std::string> words_of(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream in(line);
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

/// The words of the first line of `output` with exactly five words, the first being `first`.
std::vector<std::string> table_row(const std::string& output, const std::string& first) {
  std::istringstream lines(output);
  for (std::string line; std::getline(lines, line);) {
    const auto w = words_of(line);
    if (w.size() == 5 && w[0] == first) return w;
  }
  return {};
}

/// A failed run: non-zero exit and exactly one line, "error: ..." containing every part.
void expect_one_line_error(const RunResult& r, const std::vector<std::string>& parts) {
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << r.output;
  ASSERT_FALSE(r.output.empty());
  EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "expected one line, got:\n" << r.output;
  for (const auto& part : parts)
    EXPECT_NE(r.output.find(part), std::string::npos) << "missing \"" << part << "\" in: " << r.output;
}

void expect_contains(const std::string& output, const std::vector<std::string>& parts) {
  for (const auto& part : parts)
    EXPECT_NE(output.find(part), std::string::npos) << part << " missing from:\n" << output;
}

TEST(Cli, HelpListsAllCommands) {
  for (const char* flag : {"--help", "-h", "help"}) {
    const RunResult r = run_csipose({flag});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    expect_contains(r.output, {"usage: csipose", "data synth", "data inspect", "score", "baseline"});
  }
  // No command at all: the same list, but a failed exit (a script forgot its arguments).
  const RunResult none = run_csipose({});
  EXPECT_NE(none.exit_code, 0);
  expect_contains(none.output, {"data synth", "baseline"});
}

TEST(Cli, UnknownCommand) {
  expect_one_line_error(
      run_csipose({"trian", "--config", "x.yaml"}),
      {"error: unknown command \"trian\"", "expected one of: data synth, data inspect, score, baseline"});
  expect_one_line_error(run_csipose({"data", "synthesize"}),
                        {"error: unknown command \"data synthesize\"", "data synth"});
}

TEST(Cli, SubcommandHelpListsOptionsAndDefaults) {
  struct Case {
    std::vector<std::string> words;
    std::vector<std::string> expected;
  };
  const std::vector<Case> cases = {
      {{"data", "synth"}, {"usage: csipose data synth", "--config", "--out", "--set", "--threads", "(=0)"}},
      {{"data", "inspect"},
       {"usage: csipose data inspect", "--dir", "--split-file", "--split-seed", "(=42)", "--json"}},
      {{"score"}, {"--pred", "--gt", "--dataset", "--split", "unspecified", "--subset", "full", "--json"}},
      {{"baseline"}, {"usage: csipose baseline", "--data", "--split-file", "--max-train", "(=8000)", "--json"}},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args = c.words;
    args.push_back("--help");
    const RunResult r = run_csipose(args);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    expect_contains(r.output, c.expected);
  }
}

// --threads is a common option of the commands without their own (data synth keeps its workers):
// it is listed and range-checked with a one-line error (SynthInspectBaseline runs baseline with it).
TEST(Cli, CommonThreadsOption) {
  for (const char* command : {"eval", "predict", "train", "baseline"}) {
    const RunResult help = run_csipose({command, "--help"});
    expect_contains(help.output, {"--threads", "OpenBLAS"});
  }
  expect_one_line_error(run_csipose({"eval", "--threads", "5000", "--checkpoint", "c.ckpt"}), {"--threads", "5000"});
  expect_one_line_error(run_csipose({"baseline", "--threads", "-1", "--data", "x"}), {"--threads", "-1"});
}

class CliData : public ::testing::Test {
 protected:
  void SetUp() override { testing::write_file(config_, kTinyConfig); }
  TempDir dir_;
  const std::string config_ = dir_.file("tiny.yaml");
  const std::string data_ = dir_.file("data");
};

TEST_F(CliData, SynthInspectBaseline) {
  const RunResult synth = run_csipose({"data", "synth", "--config", config_, "--out", data_, "--threads", "2"});
  ASSERT_EQ(synth.exit_code, 0) << synth.output;
  EXPECT_NE(line_with(synth.output, "wrote " + data_).find("wiflow layout, 8 files, 48 windows (6 corrupted)"),
            std::string::npos)
      << synth.output;
  for (const char* name :
       {"csi_windows.npy", "all_keypoints.npy", "window_info.npz", "file_info.npz", "split.txt", "synth_meta.json"})
    EXPECT_TRUE(fs::exists(data_ + "/" + name)) << name;

  const std::string report = dir_.file("inspect.json");
  const RunResult inspect = run_csipose({"data", "inspect", data_, "--json", report});
  ASSERT_EQ(inspect.exit_code, 0) << inspect.output;
  expect_contains(inspect.output, {"(wiflow layout)", "(48, 540, 20)", "(48, 15, 2)", data_ + "/split.txt"});
  // The split table: files, windows, corrupted, clean per split (file 2, all corrupted, is in train).
  EXPECT_EQ(table_row(inspect.output, "split"),
            (std::vector<std::string>{"split", "files", "windows", "corrupted", "clean"}))
      << inspect.output;
  const auto train = table_row(inspect.output, "train");
  const auto val = table_row(inspect.output, "val");
  const auto test = table_row(inspect.output, "test");
  ASSERT_EQ(train.size(), 5u) << inspect.output;
  ASSERT_EQ(val.size(), 5u) << inspect.output;
  ASSERT_EQ(test.size(), 5u) << inspect.output;
  EXPECT_EQ(train[1], "6");
  EXPECT_EQ(train[2], "36");
  EXPECT_EQ(val[1] + " " + val[2], "1 6");
  EXPECT_EQ(test[1] + " " + test[2], "1 6");
  EXPECT_NE(line_with(inspect.output, "metric").find("(2,12)"), std::string::npos) << inspect.output;
  const Json ij = Json::parse(read_text_file(report));
  int64_t files = 0, windows = 0, corrupted = 0;
  for (const auto& kv : ij.at("splits").items()) {
    files += kv.second.at("files").as_int();
    windows += kv.second.at("windows").as_int();
    corrupted += kv.second.at("corrupted").as_int();
  }
  EXPECT_EQ(files, 8);
  EXPECT_EQ(windows, 48);
  EXPECT_EQ(corrupted, 6);

  const std::string out_json = dir_.file("reports/baselines.json");
  const RunResult base = run_csipose({"baseline", "--data", data_, "--json", out_json, "--threads", "1"});
  ASSERT_EQ(base.exit_code, 0) << base.output;
  expect_contains(base.output, {"metric: ", "mean_pose", "ridge", "test/clean", "val/clean"});
  const Json j = Json::parse(read_text_file(out_json));
  EXPECT_EQ(j.at("dataset").as_string(), data_);
  EXPECT_EQ(j.at("metric").at("dataset").as_string(), "wiflow");
  EXPECT_EQ(j.at("metric").at("torso_a").as_int(), 2);
  EXPECT_EQ(j.at("metric").at("torso_b").as_int(), 12);
  const Json& list = j.at("baselines");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list.at(0).at("name").as_string(), "mean_pose");
  EXPECT_EQ(list.at(1).at("name").as_string(), "ridge");
  for (size_t b = 0; b < 2; ++b) {
    const Json& ms = list.at(b).at("metrics");
    ASSERT_EQ(ms.size(), 3u);
    EXPECT_EQ(ms.at(0).at("split").as_string(), "test");
    EXPECT_EQ(ms.at(0).at("subset").as_string(), "full");
    EXPECT_EQ(ms.at(1).at("subset").as_string(), "clean");
    EXPECT_EQ(ms.at(2).at("split").as_string(), "val");
    EXPECT_EQ(ms.at(1).at("num_samples").as_int(), 6);
  }
  EXPECT_GT(list.at(1).at("details").at("features").as_int(), 0);
}

TEST_F(CliData, SetOverridesTheConfig) {
  const RunResult r = run_csipose(
      {"data", "synth", "--config", config_, "--out", data_, "--set", "layout=mmfi", "--set", "corruption.files=[]"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(line_with(r.output, "wrote").find("mmfi layout, 8 files, 48 frames (0 corrupted)"), std::string::npos)
      << r.output;
  EXPECT_TRUE(fs::exists(data_ + "/X.npy"));
  EXPECT_FALSE(fs::exists(data_ + "/csi_windows.npy"));
}

TEST_F(CliData, ConfigErrors) {
  expect_one_line_error(run_csipose({"data", "synth", "--config", dir_.file("missing.yaml"), "--out", data_}),
                        {"missing.yaml"});

  const std::string typo = dir_.file("typo.yaml");
  testing::write_file(typo, std::string(kTinyConfig) + "snr_bd: 20\n");
  expect_one_line_error(run_csipose({"data", "synth", "--config", typo, "--out", data_}),
                        {typo + ":11: snr_bd: unknown key"});

  expect_one_line_error(
      run_csipose({"data", "synth", "--config", config_, "--out", data_, "--set", "corruption.window_fractoin=0.5"}),
      {config_, "--set corruption.window_fractoin", "unknown key"});

  expect_one_line_error(run_csipose({"data", "synth", "--config", config_, "--out", data_, "--set", "subjects=0"}),
                        {config_, "subjects", "out of range"});
  // Nothing was generated by any failed run.
  EXPECT_FALSE(fs::exists(data_));

  expect_one_line_error(run_csipose({"data", "synth", "--out", data_}), {"data synth", "--config"});
  expect_one_line_error(run_csipose({"data", "synth", "--config", config_, "--out", data_, "--bogus", "2"}),
                        {"data synth", "--bogus"});
  // A prefix of a real option is not guessed: `--thread` is a typo, not `--threads`.
  expect_one_line_error(run_csipose({"data", "synth", "--config", config_, "--out", data_, "--thread", "2"}),
                        {"data synth", "unrecognised option '--thread'"});
  EXPECT_FALSE(fs::exists(data_));
}

TEST_F(CliData, DatasetErrors) {
  expect_one_line_error(run_csipose({"data", "inspect", dir_.path()}), {dir_.path(), "not a dataset directory"});
  expect_one_line_error(run_csipose({"data", "inspect", dir_.file("nowhere")}), {"nowhere", "does not exist"});
  expect_one_line_error(run_csipose({"data", "inspect"}), {"data inspect", "--dir"});
  expect_one_line_error(run_csipose({"baseline"}), {"baseline", "--data", "required"});
  expect_one_line_error(run_csipose({"baseline", "--data", dir_.path()}), {"not a dataset directory"});
}

}  // namespace
}  // namespace csipose
