#include "data/wiflow_dir.h"

#include <torch/torch.h>

#include <filesystem>
#include <map>

#include "common/check.h"
#include "data/npy_torch.h"

namespace csipose {
namespace fs = std::filesystem;

namespace {

/// An integer npz member as int64 tensor, with a clear error for float or missing members.
torch::Tensor int_member(std::map<std::string, NpyArray>& npz, const std::string& file, const std::string& key) {
  auto it = npz.find(key);
  if (it == npz.end()) {
    std::string have;
    for (const auto& kv : npz) have += (have.empty() ? "" : ", ") + kv.first;
    fail(file, ": missing array \"", key, "\" (has: ", have, ")");
  }
  const DType d = it->second.dtype;
  CSIPOSE_CHECK(d == DType::int32 || d == DType::int64 || d == DType::uint8, file, ": \"", key,
                "\" must be an integer array, got ", to_string(d));
  return to_tensor(it->second).to(torch::kInt64);
}

}  // namespace

torch::Tensor find_and_zero_corrupted(torch::Tensor& x, float abs_limit) {
  const int64_t n = x.size(0);
  auto flags = torch::zeros({n}, torch::kBool);
  const int64_t chunk = 2048;  // bounded temporaries even for the 13 GB set
  for (int64_t s = 0; s < n; s += chunk) {
    const int64_t e = std::min(n, s + chunk);
    auto block = x.slice(0, s, e);
    auto bad = (~torch::isfinite(block) | (block.abs() > abs_limit)).flatten(1).any(1);
    if (bad.any().item<bool>()) {
      flags.slice(0, s, e).copy_(bad);
      block.index_put_({bad}, 0.0f);
    }
  }
  return flags;
}

PoseDataset load_wiflow_dir(const std::string& root, const DatasetOptions& options) {
  const fs::path dir(root);
  for (const char* name : {"csi_windows.npy", "window_info.npz", "file_info.npz", "all_keypoints.npy"})
    CSIPOSE_CHECK(fs::exists(dir / name), root, ": WiFlow layout needs ", name, " (not found)");

  PoseDataset ds;
  ds.layout = Layout::wiflow;
  ds.root = root;
  ds.spec = metric_spec_for("wiflow");

  const std::string csi_path = (dir / "csi_windows.npy").string();
  NpyArray csi = read_npy(csi_path, options.mmap ? NpyLoad::mmap : NpyLoad::read);
  expect_dtype(csi, DType::float32, csi_path);
  expect_ndim(csi, 3, csi_path);
  CSIPOSE_CHECK(csi.shape[1] == 540 && csi.shape[2] == 20, csi_path, ": expected windows of shape (W, 540, 20), got ",
                csi.shape_string());
  ds.x = to_tensor(csi);
  const int64_t w = ds.x.size(0);

  const std::string winfo_path = (dir / "window_info.npz").string();
  auto winfo = read_npz(winfo_path);
  auto window_to_file = int_member(winfo, winfo_path, "window_to_file");
  auto window_to_frame = int_member(winfo, winfo_path, "window_to_frame");
  CSIPOSE_CHECK(window_to_file.dim() == 1 && window_to_file.size(0) == w, winfo_path,
                ": window_to_file has ", window_to_file.numel(), " entries for ", w, " windows");
  CSIPOSE_CHECK(window_to_frame.dim() == 1 && window_to_frame.size(0) == w, winfo_path,
                ": window_to_frame has ", window_to_frame.numel(), " entries for ", w, " windows");

  const std::string finfo_path = (dir / "file_info.npz").string();
  auto finfo = read_npz(finfo_path);
  auto file_ids = int_member(finfo, finfo_path, "file_ids");
  auto ranges = int_member(finfo, finfo_path, "window_ranges");
  CSIPOSE_CHECK(ranges.dim() == 2 && ranges.size(1) == 2 && ranges.size(0) == file_ids.numel(), finfo_path,
                ": window_ranges must be (F, 2) for ", file_ids.numel(), " files, got ", ranges.sizes());
  // Every window must lie in the range of the file it claims.
  std::map<int64_t, std::pair<int64_t, int64_t>> range_of;
  for (int64_t f = 0; f < file_ids.numel(); ++f) {
    const int64_t id = file_ids[f].item<int64_t>();
    const int64_t a = ranges[f][0].item<int64_t>(), b = ranges[f][1].item<int64_t>();
    CSIPOSE_CHECK(0 <= a && a <= b && b <= w, finfo_path, ": file ", id, " has window range [", a, ", ", b,
                  ") outside 0..", w);
    CSIPOSE_CHECK(range_of.emplace(id, std::make_pair(a, b)).second, finfo_path, ": file id ", id, " appears twice");
  }
  const int64_t* wf = window_to_file.data_ptr<int64_t>();
  for (int64_t i = 0; i < w; ++i) {
    auto it = range_of.find(wf[i]);
    CSIPOSE_CHECK(it != range_of.end(), winfo_path, ": window ", i, " belongs to file ", wf[i],
                  " which file_info.npz does not list");
    CSIPOSE_CHECK(it->second.first <= i && i < it->second.second, winfo_path, ": window ", i, " of file ", wf[i],
                  " lies outside that file's range [", it->second.first, ", ", it->second.second, ")");
  }

  const std::string kp_path = (dir / "all_keypoints.npy").string();
  NpyArray kp = read_npy(kp_path);
  expect_dtype(kp, DType::float32, kp_path);
  expect_ndim(kp, 3, kp_path);
  CSIPOSE_CHECK(kp.shape[1] == 15 && kp.shape[2] == 2, kp_path, ": expected (frames, 15, 2), got ", kp.shape_string());
  auto keypoints = to_tensor(kp);
  const int64_t frames = keypoints.size(0);
  // w == 0: min()/max() of an empty tensor throw; an empty set has nothing to check.
  CSIPOSE_CHECK(w == 0 || (window_to_frame.min().item<int64_t>() >= 0 &&
                           window_to_frame.max().item<int64_t>() < frames),
                winfo_path, ": window_to_frame points outside 0..", frames - 1);
  ds.y = keypoints.index_select(0, window_to_frame).contiguous();
  const auto bad_labels = (~torch::isfinite(ds.y)).flatten(1).any(1).nonzero();
  CSIPOSE_CHECK(bad_labels.numel() == 0, kp_path, ": non-finite keypoints for window ",
                bad_labels.numel() ? bad_labels[0].item<int64_t>() : -1, " (labels must be finite)");
  ds.file_id = window_to_file;

  ds.corrupted = find_and_zero_corrupted(ds.x, kWiFlowCorruptAbs);

  std::vector<int64_t> ids(file_ids.data_ptr<int64_t>(), file_ids.data_ptr<int64_t>() + file_ids.numel());
  std::string split_file = options.split_file;
  if (split_file.empty() && fs::exists(dir / "split.txt")) split_file = (dir / "split.txt").string();
  ds.split = split_file.empty() ? split_from_seed(ids, options.split_seed) : read_split_file(split_file, ids);
  std::map<int64_t, int> split_of_file;
  for (Split s : {Split::train, Split::val, Split::test})
    for (int64_t id : ds.split.files(s)) split_of_file[id] = static_cast<int>(s);
  ds.split_of_window.resize(static_cast<size_t>(w));
  for (int64_t i = 0; i < w; ++i) ds.split_of_window[static_cast<size_t>(i)] = split_of_file.at(wf[i]);
  return ds;
}

}  // namespace csipose
