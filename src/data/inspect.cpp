#include "data/inspect.h"

#include <torch/torch.h>

#include <cstdio>
#include <sstream>

namespace csipose {

Json inspect_dataset(const PoseDataset& ds) {
  Json r = Json::object();
  r.set("root", ds.root).set("layout", to_string(ds.layout));
  std::vector<int64_t> xs(ds.x.sizes().begin(), ds.x.sizes().end());
  r.set("x_shape", Json(xs)).set("y_shape", Json(std::vector<int64_t>(ds.y.sizes().begin(), ds.y.sizes().end())));
  r.set("windows", ds.size());
  r.set("corrupted", ds.corrupted.sum().item<int64_t>());
  r.set("split_source", ds.split.source);
  Json splits = Json::object();
  for (Split s : {Split::train, Split::val, Split::test}) {
    const auto full = ds.indices(s, Subset::full);
    const auto clean = ds.indices(s, Subset::clean);
    splits.set(to_string(s), Json::object()
                                 .set("files", static_cast<int64_t>(ds.split.files(s).size()))
                                 .set("windows", static_cast<int64_t>(full.size()))
                                 .set("corrupted", static_cast<int64_t>(full.size() - clean.size()))
                                 .set("clean", static_cast<int64_t>(clean.size())));
  }
  r.set("splits", splits);
  // Input statistics over clean windows, in chunks (the real WiFlow set is 13 GB, memory-mapped).
  double lo = 1e300, hi = -1e300, sum = 0, sum2 = 0;
  int64_t count = 0;
  const bool* bad = ds.corrupted.data_ptr<bool>();
  const int64_t chunk = 1024;
  for (int64_t s = 0; s < ds.size(); s += chunk) {
    const int64_t e = std::min(ds.size(), s + chunk);
    std::vector<int64_t> keep;
    for (int64_t i = s; i < e; ++i)
      if (!bad[i]) keep.push_back(i);
    if (keep.empty()) continue;
    auto block = ds.x.index_select(0, torch::tensor(keep, torch::kInt64)).to(torch::kFloat64);
    lo = std::min(lo, block.min().item<double>());
    hi = std::max(hi, block.max().item<double>());
    sum += block.sum().item<double>();
    sum2 += block.square().sum().item<double>();
    count += block.numel();
  }
  const double mean = count ? sum / static_cast<double>(count) : 0.0;
  const double var = count ? std::max(0.0, sum2 / static_cast<double>(count) - mean * mean) : 0.0;
  r.set("x_clean", Json::object().set("min", lo).set("max", hi).set("mean", mean).set("std", std::sqrt(var)));
  auto yx = ds.y.select(2, 0), yy = ds.y.select(2, 1);
  r.set("y_range", Json::object()
                       .set("x_min", yx.min().item<double>())
                       .set("x_max", yx.max().item<double>())
                       .set("y_min", yy.min().item<double>())
                       .set("y_max", yy.max().item<double>()));
  // Median torso length: the scale PCK thresholds are relative to.
  auto torso = (ds.y.select(1, ds.spec.torso_a) - ds.y.select(1, ds.spec.torso_b)).norm(2, 1);
  r.set("torso_median", torso.median().item<double>());
  r.set("metric", ds.spec.to_json());
  return r;
}

std::string format_inspection(const Json& r) {
  std::ostringstream o;
  char buf[256];
  o << "dataset   " << r.at("root").as_string() << " (" << r.at("layout").as_string() << " layout)\n";
  auto shape = [](const Json& s) {
    std::string t = "(";
    for (size_t i = 0; i < s.size(); ++i) t += (i ? ", " : "") + std::to_string(s.at(i).as_int());
    return t + ")";
  };
  o << "inputs    " << shape(r.at("x_shape")) << " float32\n";
  o << "labels    " << shape(r.at("y_shape")) << " float32\n";
  o << "split     " << r.at("split_source").as_string() << "\n\n";
  std::snprintf(buf, sizeof buf, "%-6s %7s %9s %10s %9s\n", "split", "files", "windows", "corrupted", "clean");
  o << buf;
  for (const auto& kv : r.at("splits").items()) {
    const Json& s = kv.second;
    std::snprintf(buf, sizeof buf, "%-6s %7lld %9lld %10lld %9lld\n", kv.first.c_str(),
                  static_cast<long long>(s.at("files").as_int()), static_cast<long long>(s.at("windows").as_int()),
                  static_cast<long long>(s.at("corrupted").as_int()), static_cast<long long>(s.at("clean").as_int()));
    o << buf;
  }
  const Json& xc = r.at("x_clean");
  std::snprintf(buf, sizeof buf, "\ninputs (clean windows)  min %.4g  max %.4g  mean %.4g  std %.4g\n",
                xc.at("min").as_double(), xc.at("max").as_double(), xc.at("mean").as_double(), xc.at("std").as_double());
  o << buf;
  const Json& yr = r.at("y_range");
  std::snprintf(buf, sizeof buf, "labels  x in [%.4g, %.4g]  y in [%.4g, %.4g]  median torso %.4g\n",
                yr.at("x_min").as_double(), yr.at("x_max").as_double(), yr.at("y_min").as_double(),
                yr.at("y_max").as_double(), r.at("torso_median").as_double());
  o << buf;
  return o.str();
}

}  // namespace csipose
