#pragma once
// The MM-Fi npy layout (MODELS.md section 3):
//   X.npy      float32 (N, 3, 114, 10)   CSI amplitude: 3 antennas, 114 subcarriers, 10 packets
//   Y.npy      float32 (N, 17, 2)        COCO-17 2D keypoints in [0,1]
//   split.npy  integer or bool (N,)      0/false = train, 1/true = test, 2 = val
//   groups.npy int (N,), optional        subject/session group of each frame (csipose's synthetic
//                                        data writes it; used by `data inspect` and leakage checks)
// Official per-frame preprocessing, applied at load: inf -> NaN; NaN -> mean of the finite values
// of that time slice (same packet, all antennas and subcarriers); then per-frame min-max to [0,1].
// Frames that needed repair are flagged corrupted (excluded from the clean subset).
#include <string>

#include "data/dataset.h"

namespace csipose {

PoseDataset load_mmfi_npy(const std::string& root, const DatasetOptions& options);

/// The official preprocessing on (N, 3, 114, 10) in place; returns (N,) bool "had non-finite".
torch::Tensor mmfi_preprocess(torch::Tensor& x);

}  // namespace csipose
