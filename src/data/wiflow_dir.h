#pragma once
// The WiFlow `preprocessed_csi_data/` layout (MODELS.md section 3):
//   csi_windows.npy   float32 (W, 540, 20)         memory-mapped
//   window_info.npz   {window_to_file (W,), window_to_frame (W,)}   integer
//   file_info.npz     {file_ids (F,), window_ranges (F, 2) [start, end)}
//   all_keypoints.npy float32 (frames, 15, 2)  BODY_25 order (first 15), pixels/1000
// Corrupted windows (non-finite or |x| > 1.5) are zero-filled in memory, flagged and counted.
#include <string>

#include "data/dataset.h"

namespace csipose {

PoseDataset load_wiflow_dir(const std::string& root, const DatasetOptions& options);

/// Scans (N, C, T) windows in chunks; returns (N,) bool corrupted flags and zero-fills them in place.
torch::Tensor find_and_zero_corrupted(torch::Tensor& x, float abs_limit);

}  // namespace csipose
