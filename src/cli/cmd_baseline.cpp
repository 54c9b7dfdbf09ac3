// csipose baseline: mean-pose and ridge-regression baselines under the locked metric.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "common/atomic_file.h"
#include "data/dataset.h"
#include "train/baselines.h"

namespace csipose::cli {

int baseline(const Args& args) {
  po::options_description desc("options");
  std::string dir, split_file, json;
  int64_t max_train = 8000;
  desc.add_options()
      ("data", po::value(&dir)->required(), "dataset directory (WiFlow or MM-Fi layout)")
      ("split-file", po::value(&split_file)->default_value(""), "split list; default DIR/split.txt or seed 42")
      ("max-train", po::value(&max_train)->default_value(8000), "ridge: subsample train windows beyond this")
      ("json", po::value(&json)->default_value(""), "write all results as JSON here");
  po::variables_map vm;
  if (!parse_options("baseline", "--data DIR [--json OUT]", desc, args, vm)) return 0;
  DatasetOptions opt;
  opt.split_file = split_file;
  const PoseDataset ds = open_dataset(dir, opt);
  RidgeOptions ro;
  ro.max_train = max_train;
  const auto results = run_baselines(ds, ro);

  std::printf("metric: %s\n", ds.spec.describe().c_str());
  std::printf("%-10s %-11s %8s %8s %8s %8s %8s %10s %7s\n", "baseline", "split", "PCK@10", "PCK@20", "PCK@30",
              "PCK@40", "PCK@50", "MPJPE", "N");
  Json all = Json::object();
  all.set("dataset", dir).set("metric", ds.spec.to_json());
  Json list = Json::array();
  for (const auto& r : results) {
    for (const auto& m : r.metrics) {
      std::printf("%-10s %-11s", r.name.c_str(), (m.split + "/" + m.subset).c_str());
      for (double p : m.pck) std::printf(" %7.2f%%", 100.0 * p);
      std::printf(" %10.6f %7lld\n", m.mpjpe, static_cast<long long>(m.num_samples));
    }
    list.push(r.to_json());
  }
  all.set("baselines", list);
  if (!json.empty()) write_text_atomic(json, all.dump(2) + "\n");
  return 0;
}

}  // namespace csipose::cli
