// csipose score: scores a prediction array against ground truth under the locked metric
// (MODELS.md section 4) and prints / writes the result with its full definition.
#include <boost/program_options.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

#include "cli/commands.h"
#include "common/atomic_file.h"
#include "common/check.h"
#include "data/npy_torch.h"
#include "eval/metric_spec.h"
#include "eval/pck.h"

namespace csipose::cli {
namespace {
namespace po = boost::program_options;

struct ScoreOptions {
  std::string pred_path;
  std::string gt_path;
  std::string dataset;
  std::string split = "unspecified";
  std::string subset = "full";
  std::string json_path;  ///< empty: no JSON
};

/// "(10, 15, 2)", the way npy shapes are written elsewhere.
std::string shape_string(const torch::Tensor& t) {
  std::string out = "(";
  for (int64_t d = 0; d < t.dim(); ++d) out += (d ? ", " : "") + std::to_string(t.size(d));
  return out + (t.dim() == 1 ? ",)" : ")");
}

torch::Tensor load_keypoints(const std::string& flag, const std::string& path) {
  CSIPOSE_CHECK(std::filesystem::is_regular_file(path), flag, ": no such file: ", path);
  torch::Tensor t = load_npy(path);
  CSIPOSE_CHECK(t.is_floating_point(), flag, ": ", path, " holds ", t.scalar_type(),
                " values; expected float32 or float64 keypoints");
  return t;
}

/// pred may be (N, J, 2) or flat (N, 2J) laid out x0, y0, x1, y1, ... (row-major (N, J, 2)).
torch::Tensor pred_as_poses(const torch::Tensor& pred, const MetricSpec& spec) {
  const int64_t j = spec.num_joints;
  if (pred.dim() == 2 && pred.size(1) == 2 * j) return pred.reshape({pred.size(0), j, 2});
  CSIPOSE_CHECK(pred.dim() == 3 && pred.size(1) == j && pred.size(2) == 2, "--pred: shape ", shape_string(pred),
                " does not fit dataset ", spec.dataset, "; expected (N, ", j, ", 2) or (N, ", 2 * j, ")");
  return pred;
}

void check_ground_truth(const torch::Tensor& gt, const MetricSpec& spec) {
  CSIPOSE_CHECK(gt.dim() == 3 && gt.size(2) == 2, "--gt: shape ", shape_string(gt), " is not (N, J, 2)");
  CSIPOSE_CHECK(gt.size(1) == spec.num_joints, "--gt: shape ", shape_string(gt), " has ", gt.size(1),
                " joints; dataset ", spec.dataset, " (", spec.skeleton, ") has ", spec.num_joints);
  CSIPOSE_CHECK(gt.size(0) > 0, "--gt: no samples (shape ", shape_string(gt), ")");
  const torch::Tensor bad = torch::logical_not(torch::isfinite(gt));
  const int64_t num_bad = bad.sum().item<int64_t>();
  if (num_bad > 0) {
    const torch::Tensor first = bad.nonzero()[0];
    fail("--gt: ", num_bad, " non-finite values (first at sample ", first[0].item<int64_t>(), ", joint ",
         first[1].item<int64_t>(), "); ground truth must be finite");
  }
}

void print_report(const PoseMetrics& m) {
  std::printf("metric: %s\n", m.spec.describe().c_str());
  std::printf("split: %s   subset: %s\n", m.split.c_str(), m.subset.c_str());
  for (size_t i = 0; i < m.pck.size(); ++i) {
    const std::string name = "PCK" + pck_name(m.spec.thresholds[i]).substr(3);
    std::printf("  %-8s %7.2f%%\n", name.c_str(), 100.0 * m.pck[i]);
  }
  std::printf("  %-8s %.6g %s\n", "MPJPE", m.mpjpe, m.spec.units.c_str());
  std::printf("  %-8s %lld\n", "N", static_cast<long long>(m.num_samples));
  if (m.num_nonfinite > 0)
    std::printf("  non-finite predicted joints: %lld (counted as misses; MPJPE is inf)\n",
                static_cast<long long>(m.num_nonfinite));
}

}  // namespace

int score(const Args& args) {
  ScoreOptions o;
  po::options_description desc("csipose score: PCK/MPJPE of predictions under the locked metric\noptions");
  desc.add_options()
      ("help", "print this help")
      ("pred", po::value(&o.pred_path)->required(), "predictions .npy, (N, J, 2) or (N, 2J) float")
      ("gt", po::value(&o.gt_path)->required(), "ground truth .npy, (N, J, 2) float, finite")
      ("dataset", po::value(&o.dataset)->required(), "whose locked metric spec to use: wiflow | mmfi")
      ("split", po::value(&o.split)->default_value(o.split), "split label recorded in the report")
      ("subset", po::value(&o.subset)->default_value(o.subset), "full | clean")
      ("json", po::value(&o.json_path), "also write the result as JSON to this path (atomically)");

  po::variables_map vm;
  try {
    // No prefix guessing ("--pre" is an error, not "--pred") and no positional words.
    const int style = po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    const po::positional_options_description no_positionals;
    po::store(po::command_line_parser(args).options(desc).positional(no_positionals).style(style).run(), vm);
    if (vm.count("help")) {
      std::cout << desc << "\n";
      return 0;
    }
    po::notify(vm);
  } catch (const po::error& e) {
    fail("score: ", e.what(), " (see csipose score --help)");
  }
  CSIPOSE_CHECK(o.subset == "full" || o.subset == "clean", "--subset: unknown value \"", o.subset,
                "\"; expected one of: full, clean");
  const MetricSpec spec = metric_spec_for(o.dataset);

  const torch::Tensor gt = load_keypoints("--gt", o.gt_path);
  check_ground_truth(gt, spec);
  const torch::Tensor pred = pred_as_poses(load_keypoints("--pred", o.pred_path), spec);
  CSIPOSE_CHECK(pred.size(0) == gt.size(0), "--pred has ", pred.size(0), " samples but --gt has ", gt.size(0),
                " (pred shape ", shape_string(pred), ", gt shape ", shape_string(gt), ")");

  const PoseMetrics m = score_predictions(pred, gt, spec, o.split, o.subset);
  print_report(m);
  if (!o.json_path.empty()) {
    Json j = m.to_json();
    j.set("inputs", Json::object().set("pred", o.pred_path).set("gt", o.gt_path));
    write_text_atomic(o.json_path, j.dump(/*indent=*/2) + "\n");
    std::printf("wrote %s\n", o.json_path.c_str());
  }
  return 0;
}

}  // namespace csipose::cli
