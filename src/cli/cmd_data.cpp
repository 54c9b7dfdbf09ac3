// csipose data synth | data inspect
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "common/atomic_file.h"
#include "common/config_node.h"
#include "data/dataset.h"
#include "data/inspect.h"
#include "data/synth/generator.h"
#include "data/synth/synth_config.h"

namespace csipose::cli {

int data_synth(const Args& args) {
  po::options_description desc("options");
  std::string config, out;
  std::vector<std::string> sets;
  int threads = 0;
  desc.add_options()
      ("config", po::value(&config)->required(), "synthetic data config (configs/data/synth_*.yaml)")
      ("out", po::value(&out)->required(), "output dataset directory")
      ("set", po::value(&sets)->composing(), "override a config key: --set key.path=value (repeatable)")
      ("threads", po::value(&threads)->default_value(0), "worker threads (0 = all cores; output is identical)");
  po::variables_map vm;
  if (!parse_options("data synth", "--config FILE --out DIR [--set k=v ...]", desc, args, vm)) return 0;
  const SynthConfig cfg = SynthConfig::from_yaml(ConfigNode::load_file(config, sets));
  const SynthSummary s = generate_synthetic(cfg, out, threads);
  std::printf("wrote %s: %s layout, %lld files, %lld %s (%lld corrupted) in %.1f s\n", s.out_dir.c_str(),
              to_string(cfg.layout), static_cast<long long>(s.files), static_cast<long long>(s.windows),
              cfg.layout == Layout::wiflow ? "windows" : "frames", static_cast<long long>(s.corrupted), s.seconds);
  return 0;
}

int data_inspect(const Args& args) {
  po::options_description desc("options");
  std::string dir, split_file, json;
  int64_t seed = 42;
  desc.add_options()
      ("dir", po::value(&dir)->required(), "dataset directory (WiFlow or MM-Fi layout; also positional)")
      ("split-file", po::value(&split_file)->default_value(""),
       "split list (val:/test: lines); default: DIR/split.txt if present, else --split-seed")
      ("split-seed", po::value(&seed)->default_value(42), "seed of the 70/15/15 file-level split")
      ("json", po::value(&json)->default_value(""), "also write the report as JSON here");
  po::variables_map vm;
  if (!parse_options("data inspect", "DIR [--split-file F] [--json OUT]", desc, args, vm, {"dir"})) return 0;
  DatasetOptions opt;
  opt.split_file = split_file;
  opt.split_seed = static_cast<uint64_t>(seed);
  const PoseDataset ds = open_dataset(dir, opt);
  const Json report = inspect_dataset(ds);
  std::cout << format_inspection(report) << "metric    " << ds.spec.describe() << "\n";
  if (!json.empty()) write_text_atomic(json, report.dump(2) + "\n");
  return 0;
}

}  // namespace csipose::cli
