#include "data/loader.h"

#include <torch/torch.h>

#include <algorithm>

#include "common/check.h"
#include "common/rng.h"

namespace csipose {

BatchLoader::BatchLoader(const torch::Tensor& x, const torch::Tensor& y, std::vector<int64_t> indices,
                         LoaderOptions options)
    : options_(options), indices_(std::move(indices)) {
  CSIPOSE_CHECK(options_.batch_size > 0, "loader: batch_size must be > 0, got ", options_.batch_size);
  CSIPOSE_CHECK(x.size(0) == y.size(0), "loader: x has ", x.size(0), " samples but y has ", y.size(0));
  for (int64_t i : indices_)
    CSIPOSE_CHECK(0 <= i && i < x.size(0), "loader: index ", i, " out of range for ", x.size(0), " samples");
  index_cpu_ = torch::tensor(indices_, torch::kInt64);
  // Per-sample sizes from numel, not x[0]: a dataset may have no samples at all.
  const int64_t n_all = std::max<int64_t>(1, x.size(0));
  const int64_t per_sample = x.numel() / n_all * static_cast<int64_t>(x.element_size()) +
                             y.numel() / n_all * static_cast<int64_t>(y.element_size());
  const int64_t bytes = per_sample * static_cast<int64_t>(indices_.size());
  resident_ = bytes <= options_.resident_max_bytes;
  if (resident_) {
    // One gather of the split (CPU), one transfer: afterwards everything stays on the device.
    x_ = x.index_select(0, index_cpu_).to(options_.device);
    y_ = y.index_select(0, index_cpu_).to(options_.device);
  } else {
    x_ = x;
    y_ = y;
  }
  set_epoch(0);
}

void BatchLoader::set_epoch(int64_t epoch) {
  const auto n = static_cast<int64_t>(indices_.size());
  if (options_.shuffle) {
    auto perm = permutation(n, options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(epoch));
    order_cpu_ = torch::tensor(perm, torch::kInt64);
  } else {
    order_cpu_ = torch::arange(n, torch::kInt64);
  }
  order_ = resident_ ? order_cpu_.to(options_.device) : order_cpu_;
}

int64_t BatchLoader::num_batches() const {
  const int64_t n = num_samples(), b = options_.batch_size;
  return options_.drop_last ? n / b : (n + b - 1) / b;
}

Batch BatchLoader::batch(int64_t b) const {
  CSIPOSE_CHECK(0 <= b && b < num_batches(), "loader: batch ", b, " out of range (", num_batches(), " batches)");
  const int64_t start = b * options_.batch_size;
  const int64_t end = std::min(num_samples(), start + options_.batch_size);
  Batch out;
  auto pos_cpu = order_cpu_.slice(0, start, end);
  out.index = index_cpu_.index_select(0, pos_cpu);
  if (resident_) {
    auto pos = order_.slice(0, start, end);
    out.x = x_.index_select(0, pos);
    out.y = y_.index_select(0, pos);
  } else {
    const bool cuda = options_.device.is_cuda();
    auto xb = x_.index_select(0, out.index), yb = y_.index_select(0, out.index);
    if (cuda) {
      xb = xb.pin_memory();
      yb = yb.pin_memory();
    }
    out.x = xb.to(options_.device, /*non_blocking=*/cuda);
    out.y = yb.to(options_.device, /*non_blocking=*/cuda);
  }
  return out;
}

std::vector<int64_t> BatchLoader::order() const {
  auto idx = index_cpu_.index_select(0, order_cpu_);
  return std::vector<int64_t>(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
}

}  // namespace csipose
