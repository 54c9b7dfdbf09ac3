#pragma once
// A pose dataset in memory: inputs, labels, which file each window came from, which windows are
// corrupted, the file-level split and the MetricSpec the dataset declares. Loaded from the two
// real layouts (MODELS.md section 3); the synthetic generator writes those same layouts.
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "data/split.h"
#include "eval/metric_spec.h"

namespace csipose {

enum class Layout { wiflow, mmfi };
const char* to_string(Layout l);
Layout parse_layout(const std::string& text);  ///< "wiflow" | "mmfi"

enum class Subset { full, clean };
const char* to_string(Subset s);
Subset parse_subset(const std::string& text);

/// Which |x| counts as corrupted in a WiFlow window (MODELS.md: non-finite or |x| > 1.5).
constexpr float kWiFlowCorruptAbs = 1.5f;

struct PoseDataset {
  Layout layout = Layout::wiflow;
  std::string root;        ///< directory it was read from
  torch::Tensor x;         ///< (N, 540, 20) WiFlow | (N, 3, 114, 10) MM-Fi; float32, CPU
  torch::Tensor y;         ///< (N, J, 2) float32 keypoints in the spec's units
  torch::Tensor file_id;   ///< (N,) int64: source file (WiFlow) or group (MM-Fi; -1 if unknown)
  torch::Tensor corrupted; ///< (N,) bool: the window was corrupted (and has been zero-filled / repaired)
  FileSplit split;         ///< file-level split (MM-Fi: split.npy gives windows directly, see below)
  std::vector<int64_t> split_of_window;  ///< (N) 0 train, 1 val, 2 test
  MetricSpec spec;

  int64_t size() const { return x.defined() ? x.size(0) : 0; }
  int64_t num_joints() const { return y.size(1); }
  /// Window indices of a split; Subset::clean drops corrupted windows. Ascending order.
  std::vector<int64_t> indices(Split s, Subset subset = Subset::full) const;
  int64_t num_corrupted(Split s) const;
};

struct DatasetOptions {
  /// Split list file ("val: ..", "test: .."); empty: `<root>/split.txt` when present, else seed.
  std::string split_file;
  uint64_t split_seed = 42;
  /// Memory-map the CSI windows (WiFlow): required for the 13 GB real set; private mapping, so
  /// zero-filling corrupted windows never touches the file.
  bool mmap = true;
};

/// Detects the layout of a directory: csi_windows.npy -> wiflow, X.npy -> mmfi. Throws otherwise.
Layout detect_layout(const std::string& root);
/// Opens either layout (detect_layout) with the options.
PoseDataset open_dataset(const std::string& root, const DatasetOptions& options = {});

}  // namespace csipose
