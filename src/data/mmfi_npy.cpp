#include "data/mmfi_npy.h"

#include <torch/torch.h>

#include <filesystem>
#include <set>

#include "common/check.h"
#include "data/npy_torch.h"

namespace csipose {
namespace fs = std::filesystem;

torch::Tensor mmfi_preprocess(torch::Tensor& x) {
  CSIPOSE_CHECK(x.dim() == 4, "mmfi_preprocess: expected (N, 3, 114, 10), got ", x.sizes());
  // In place through views below: a non-contiguous x would need a copy and lose the result.
  CSIPOSE_CHECK(x.is_contiguous(), "mmfi_preprocess: x must be contiguous (got strides ", x.strides(), ")");
  auto finite = torch::isfinite(x);
  auto corrupted = (~finite).flatten(1).any(1);
  if (corrupted.any().item<bool>()) {
    // inf -> NaN -> mean of the finite values of the same time slice (antennas x subcarriers).
    auto zeroed = torch::where(finite, x, torch::zeros_like(x));
    auto count = finite.sum({1, 2}, /*keepdim=*/true).to(torch::kFloat32);
    auto mean = zeroed.sum({1, 2}, /*keepdim=*/true) / count.clamp_min(1.0f);  // no finite value -> 0
    x.copy_(torch::where(finite, x, mean.expand_as(x)));
  }
  // Per-frame min-max to [0, 1]; a constant frame becomes all zeros.
  auto flat = x.view({x.size(0), x.size(1) * x.size(2) * x.size(3)});  // not -1: N may be 0
  auto lo = std::get<0>(flat.min(1, /*keepdim=*/true));
  auto hi = std::get<0>(flat.max(1, /*keepdim=*/true));
  auto range = hi - lo;
  flat.copy_(torch::where(range > 0, (flat - lo) / range.clamp_min(1e-30f), torch::zeros_like(flat)));
  return corrupted;
}

PoseDataset load_mmfi_npy(const std::string& root, const DatasetOptions& options) {
  const fs::path dir(root);
  for (const char* name : {"X.npy", "Y.npy", "split.npy"})
    CSIPOSE_CHECK(fs::exists(dir / name), root, ": MM-Fi layout needs ", name, " (not found)");
  PoseDataset ds;
  ds.layout = Layout::mmfi;
  ds.root = root;
  ds.spec = metric_spec_for("mmfi");

  const std::string x_path = (dir / "X.npy").string();
  NpyArray xa = read_npy(x_path, NpyLoad::read);  // preprocessing rewrites every value: load, don't map
  expect_dtype(xa, DType::float32, x_path);
  expect_ndim(xa, 4, x_path);
  CSIPOSE_CHECK(xa.shape[1] == 3 && xa.shape[2] == 114 && xa.shape[3] == 10, x_path,
                ": expected (N, 3, 114, 10), got ", xa.shape_string());
  ds.x = to_tensor(xa);
  const int64_t n = ds.x.size(0);

  const std::string y_path = (dir / "Y.npy").string();
  NpyArray ya = read_npy(y_path);
  expect_dtype(ya, DType::float32, y_path);
  expect_ndim(ya, 3, y_path);
  CSIPOSE_CHECK(ya.shape[0] == n && ya.shape[1] == 17 && ya.shape[2] == 2, y_path, ": expected (", n,
                ", 17, 2) to match X.npy, got ", ya.shape_string());
  ds.y = to_tensor(ya);
  const auto bad_labels = (~torch::isfinite(ds.y)).flatten(1).any(1).nonzero();
  CSIPOSE_CHECK(bad_labels.numel() == 0, y_path, ": non-finite keypoints for frame ",
                bad_labels.numel() ? bad_labels[0].item<int64_t>() : -1, " (labels must be finite)");

  const std::string s_path = (dir / "split.npy").string();
  NpyArray sa = read_npy(s_path);
  expect_ndim(sa, 1, s_path);
  CSIPOSE_CHECK(sa.shape[0] == n, s_path, ": has ", sa.shape[0], " entries for ", n, " frames");
  CSIPOSE_CHECK(sa.dtype != DType::float32 && sa.dtype != DType::float64, s_path,
                ": must be bool or integer (0 train, 1 test, 2 val), got ", to_string(sa.dtype));
  auto split = to_tensor(sa).to(torch::kInt64);
  const int64_t* sp = split.data_ptr<int64_t>();
  ds.split_of_window.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    CSIPOSE_CHECK(sp[i] >= 0 && sp[i] <= 2, s_path, ": entry ", i, " is ", sp[i], "; expected 0 train, 1 test, 2 val");
    ds.split_of_window[static_cast<size_t>(i)] = sp[i] == 0 ? 0 : (sp[i] == 1 ? 2 : 1);
  }

  if (fs::exists(dir / "groups.npy")) {
    const std::string g_path = (dir / "groups.npy").string();
    NpyArray ga = read_npy(g_path);
    expect_ndim(ga, 1, g_path);
    CSIPOSE_CHECK(ga.shape[0] == n, g_path, ": has ", ga.shape[0], " entries for ", n, " frames");
    ds.file_id = to_tensor(ga).to(torch::kInt64);
    std::set<int64_t> per_split[3];
    const int64_t* g = ds.file_id.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) per_split[ds.split_of_window[static_cast<size_t>(i)]].insert(g[i]);
    ds.split.train.assign(per_split[0].begin(), per_split[0].end());
    ds.split.val.assign(per_split[1].begin(), per_split[1].end());
    ds.split.test.assign(per_split[2].begin(), per_split[2].end());
  } else {
    ds.file_id = torch::full({n}, -1, torch::kInt64);
  }
  ds.split.source = s_path;
  (void)options;
  ds.corrupted = mmfi_preprocess(ds.x);
  return ds;
}

}  // namespace csipose
