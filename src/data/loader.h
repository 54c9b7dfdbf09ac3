#pragma once
// Batches from a dataset split. The split's windows are gathered once into one tensor that lives on
// the training device when it fits (`resident_max_bytes`); each batch is then a single index_select
// on that device: no per-sample copies, no host round trip. The order is a function of
// (seed, epoch) only, so a resumed run sees exactly the batches it would have seen.
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace csipose {

struct LoaderOptions {
  int64_t batch_size = 64;
  bool shuffle = true;
  uint64_t seed = 0;
  bool drop_last = false;               ///< evaluation must keep the last partial batch
  c10::Device device = c10::kCPU;
  int64_t resident_max_bytes = int64_t{8} << 30;  ///< gather the split onto the device when <= this
};

struct Batch {
  torch::Tensor x;        ///< (B, ...) on the loader's device
  torch::Tensor y;        ///< (B, J, 2)
  torch::Tensor index;    ///< (B,) int64 dataset window indices, on CPU
};

class BatchLoader {
 public:
  /// x, y: the whole dataset (CPU, may be memory-mapped); indices: the windows of this split.
  BatchLoader(const torch::Tensor& x, const torch::Tensor& y, std::vector<int64_t> indices, LoaderOptions options);

  /// Fixes the order for an epoch: permutation from (seed, epoch) when shuffling, else ascending.
  void set_epoch(int64_t epoch);
  int64_t num_batches() const;
  int64_t num_samples() const { return static_cast<int64_t>(indices_.size()); }
  Batch batch(int64_t b) const;
  bool resident() const { return resident_; }
  const LoaderOptions& options() const { return options_; }
  /// The epoch's order as dataset indices (for checkpoints and tests).
  std::vector<int64_t> order() const;

 private:
  LoaderOptions options_;
  std::vector<int64_t> indices_;
  bool resident_ = false;
  torch::Tensor x_, y_;        // resident: the split gathered on device; else the full CPU tensors
  torch::Tensor index_cpu_;    // (n,) dataset indices of the split
  torch::Tensor order_;        // (n,) positions into the split for this epoch, on the data device
  torch::Tensor order_cpu_;
};

}  // namespace csipose
