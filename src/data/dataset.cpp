#include "data/dataset.h"

#include <torch/torch.h>

#include <filesystem>

#include "common/check.h"
#include "data/mmfi_npy.h"
#include "data/wiflow_dir.h"

namespace csipose {
namespace fs = std::filesystem;

const char* to_string(Layout l) { return l == Layout::wiflow ? "wiflow" : "mmfi"; }

Layout parse_layout(const std::string& text) {
  if (text == "wiflow") return Layout::wiflow;
  if (text == "mmfi") return Layout::mmfi;
  fail("dataset layout: unknown value \"", text, "\"; expected one of: wiflow, mmfi");
}

const char* to_string(Subset s) { return s == Subset::full ? "full" : "clean"; }

Subset parse_subset(const std::string& text) {
  if (text == "full") return Subset::full;
  if (text == "clean") return Subset::clean;
  fail("subset: unknown value \"", text, "\"; expected one of: full, clean");
}

std::vector<int64_t> PoseDataset::indices(Split s, Subset subset) const {
  const int want = static_cast<int>(s);
  const bool* bad = corrupted.data_ptr<bool>();
  std::vector<int64_t> out;
  for (int64_t i = 0; i < size(); ++i) {
    if (split_of_window[static_cast<size_t>(i)] != want) continue;
    if (subset == Subset::clean && bad[i]) continue;
    out.push_back(i);
  }
  return out;
}

int64_t PoseDataset::num_corrupted(Split s) const {
  return static_cast<int64_t>(indices(s, Subset::full).size() - indices(s, Subset::clean).size());
}

Layout detect_layout(const std::string& root) {
  CSIPOSE_CHECK(fs::is_directory(root), "dataset directory ", root, " does not exist");
  if (fs::exists(fs::path(root) / "csi_windows.npy")) return Layout::wiflow;
  if (fs::exists(fs::path(root) / "X.npy")) return Layout::mmfi;
  fail(root, ": not a dataset directory (expected csi_windows.npy for the WiFlow layout or X.npy for MM-Fi)");
}

PoseDataset open_dataset(const std::string& root, const DatasetOptions& options) {
  return detect_layout(root) == Layout::wiflow ? load_wiflow_dir(root, options) : load_mmfi_npy(root, options);
}

}  // namespace csipose
