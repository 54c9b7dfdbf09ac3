// BatchLoader: every sample once per epoch, order a function of (seed, epoch) only (exact resume),
// drop_last, batches equal to x[index] bit for bit, resident and streaming paths agree, and CPU
// and CUDA batches agree (BatchLoader*_CUDA, skipped without a GPU).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>

#include "common/check.h"
#include "data/loader.h"
#include "data/npy_torch.h"
#include "testing.h"

namespace csipose {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

using testing::error_of;

constexpr int64_t kSamples = 23;

/// x[i] = 100 i + (0..11) as (3, 4); y[i] = -(10 i + (0..9)) as (5, 2): every sample is recognizable.
torch::Tensor make_x() {
  return (torch::arange(kSamples, torch::kFloat32).view({kSamples, 1, 1}) * 100 +
          torch::arange(12, torch::kFloat32).view({1, 3, 4}));
}
torch::Tensor make_y() {
  return -(torch::arange(kSamples, torch::kFloat32).view({kSamples, 1, 1}) * 10 +
           torch::arange(10, torch::kFloat32).view({1, 5, 2}));
}

/// A split of 17 of the 23 samples (2, 5, 8, 11, 14 and 20 are elsewhere).
std::vector<int64_t> split_indices() {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < kSamples; ++i)
    if (!(i == 2 || i == 5 || i == 8 || i == 11 || i == 14 || i == 20)) out.push_back(i);
  return out;
}

std::vector<int64_t> to_vec(const torch::Tensor& t) {
  const auto c = t.to(torch::kCPU, torch::kInt64).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

std::vector<Batch> all_batches(const BatchLoader& loader) {
  std::vector<Batch> out;
  for (int64_t b = 0; b < loader.num_batches(); ++b) out.push_back(loader.batch(b));
  return out;
}

/// The concatenated dataset indices of an epoch's batches.
std::vector<int64_t> visited(const std::vector<Batch>& batches) {
  std::vector<int64_t> out;
  for (const auto& b : batches) {
    const auto v = to_vec(b.index);
    out.insert(out.end(), v.begin(), v.end());
  }
  return out;
}

/// Checks a batch is exactly x[index], y[index] and that index is an int64 CPU tensor.
void expect_gathered(const Batch& b, const torch::Tensor& x, const torch::Tensor& y) {
  ASSERT_EQ(b.index.scalar_type(), torch::kInt64);
  ASSERT_TRUE(b.index.device().is_cpu());
  EXPECT_TRUE(torch::equal(b.x.cpu(), x.index_select(0, b.index)));
  EXPECT_TRUE(torch::equal(b.y.cpu(), y.index_select(0, b.index)));
}

void expect_same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i].index, b[i].index)) << what << " batch " << i;
    EXPECT_TRUE(torch::equal(a[i].x.cpu(), b[i].x.cpu())) << what << " batch " << i;
    EXPECT_TRUE(torch::equal(a[i].y.cpu(), b[i].y.cpu())) << what << " batch " << i;
  }
}

LoaderOptions options_with(int64_t batch_size, bool shuffle, uint64_t seed = 0, bool drop_last = false) {
  LoaderOptions o;
  o.batch_size = batch_size;
  o.shuffle = shuffle;
  o.seed = seed;
  o.drop_last = drop_last;
  return o;
}

TEST(BatchLoader, WithoutShuffleVisitsEverySampleOnceInOrder) {
  const auto x = make_x(), y = make_y();
  const auto idx = split_indices();
  BatchLoader loader(x, y, idx, options_with(5, /*shuffle=*/false));
  EXPECT_EQ(loader.num_samples(), 17);
  ASSERT_EQ(loader.num_batches(), 4);
  const auto batches = all_batches(loader);
  EXPECT_EQ(visited(batches), idx);
  EXPECT_EQ(loader.order(), idx);
  for (const auto& b : batches) {
    expect_gathered(b, x, y);
    EXPECT_EQ(b.x.sizes().slice(1), x.sizes().slice(1));
  }
  EXPECT_EQ(batches[0].x.size(0), 5);
  EXPECT_EQ(batches[3].x.size(0), 2);
  // Without shuffling the epoch does not matter.
  loader.set_epoch(5);
  EXPECT_EQ(loader.order(), idx);
}

TEST(BatchLoader, DropLastBatchCountsAndSizes) {
  struct Case {
    int64_t n, batch_size;
    bool drop_last;
    int64_t batches, last_size;
  };
  const Case cases[] = {
      {17, 5, false, 4, 2}, {17, 5, true, 3, 5}, {15, 5, false, 3, 5}, {15, 5, true, 3, 5},
      {3, 5, false, 1, 3},  {3, 5, true, 0, 0},  {17, 1, true, 17, 1}, {17, 17, false, 1, 17},
  };
  const auto x = make_x(), y = make_y();
  for (const auto& c : cases) {
    for (bool shuffle : {false, true}) {
      const std::string what = "n=" + std::to_string(c.n) + " bs=" + std::to_string(c.batch_size) +
                               (c.drop_last ? " drop_last" : "") + (shuffle ? " shuffle" : "");
      const auto all = split_indices();
      const std::vector<int64_t> idx(all.begin(), all.begin() + c.n);
      BatchLoader loader(x, y, idx, options_with(c.batch_size, shuffle, /*seed=*/3, c.drop_last));
      ASSERT_EQ(loader.num_batches(), c.batches) << what;
      const auto batches = all_batches(loader);
      if (c.batches > 0) {
        EXPECT_EQ(batches.back().x.size(0), c.last_size) << what;
      }
      for (const auto& b : batches) expect_gathered(b, x, y);
      // The visited samples are the first num_batches * batch_size of the epoch's order.
      auto order = loader.order();
      const auto kept = std::min<int64_t>(c.n, c.batches * c.batch_size);
      order.resize(static_cast<size_t>(kept));
      EXPECT_EQ(visited(batches), order) << what;
    }
  }
}

TEST(BatchLoader, ShuffleIsAPermutationDeterministicPerSeedAndEpoch) {
  const auto x = make_x(), y = make_y();
  const auto idx = split_indices();
  BatchLoader a(x, y, idx, options_with(4, /*shuffle=*/true, /*seed=*/11));
  BatchLoader b(x, y, idx, options_with(4, /*shuffle=*/true, /*seed=*/11));
  BatchLoader other_seed(x, y, idx, options_with(4, /*shuffle=*/true, /*seed=*/12));
  std::vector<std::vector<int64_t>> orders;
  for (int64_t epoch = 0; epoch < 4; ++epoch) {
    a.set_epoch(epoch);
    b.set_epoch(epoch);
    other_seed.set_epoch(epoch);
    const auto batches = all_batches(a);
    const auto order = visited(batches);
    EXPECT_EQ(order, a.order()) << "epoch " << epoch;
    EXPECT_EQ(order, b.order()) << "same (seed, epoch), same order; epoch " << epoch;
    EXPECT_NE(order, other_seed.order()) << "epoch " << epoch;
    EXPECT_NE(order, idx) << "epoch " << epoch << " is not shuffled";
    auto sorted = order;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(sorted, idx) << "every sample exactly once; epoch " << epoch;
    for (const auto& batch : batches) expect_gathered(batch, x, y);
    for (const auto& previous : orders) EXPECT_NE(order, previous) << "epoch " << epoch << " repeats";
    orders.push_back(order);
  }
}

TEST(BatchLoader, SetEpochResumesExactly) {
  const auto x = make_x(), y = make_y();
  const auto idx = split_indices();
  const auto options = options_with(6, /*shuffle=*/true, /*seed=*/5);
  BatchLoader run(x, y, idx, options);
  std::vector<std::vector<Batch>> epochs;
  for (int64_t e = 0; e < 4; ++e) {
    run.set_epoch(e);
    epochs.push_back(all_batches(run));
  }
  // A fresh loader (a resumed run) that jumps straight to epoch 2 sees epoch 2's batches.
  BatchLoader resumed(x, y, idx, options);
  resumed.set_epoch(2);
  expect_same_batches(all_batches(resumed), epochs[2], "resumed at epoch 2");
  // Going back to an earlier epoch after later ones reproduces it too.
  run.set_epoch(1);
  expect_same_batches(all_batches(run), epochs[1], "epoch 1 again");
  // A new loader starts at epoch 0.
  BatchLoader fresh(x, y, idx, options);
  expect_same_batches(all_batches(fresh), epochs[0], "fresh loader");
}

TEST(BatchLoader, ResidentAndStreamingGiveIdenticalBatches) {
  const auto x = make_x(), y = make_y();
  const auto idx = split_indices();
  for (bool shuffle : {false, true}) {
    auto resident_options = options_with(4, shuffle, /*seed=*/9);
    auto streaming_options = resident_options;
    streaming_options.resident_max_bytes = 0;
    BatchLoader resident(x, y, idx, resident_options);
    BatchLoader streaming(x, y, idx, streaming_options);
    EXPECT_TRUE(resident.resident());
    EXPECT_FALSE(streaming.resident());
    for (int64_t e = 0; e < 3; ++e) {
      resident.set_epoch(e);
      streaming.set_epoch(e);
      const auto a = all_batches(resident), b = all_batches(streaming);
      expect_same_batches(a, b, std::string(shuffle ? "shuffle" : "ordered") + " epoch " + std::to_string(e));
      for (const auto& batch : b) expect_gathered(batch, x, y);
    }
  }
}

TEST(BatchLoader, ResidentLimitIsInclusive) {
  const auto x = make_x(), y = make_y();
  const auto idx = split_indices();
  // 12 + 10 float32 per sample.
  const int64_t bytes = static_cast<int64_t>(idx.size()) * (12 + 10) * 4;
  auto options = options_with(4, false);
  options.resident_max_bytes = bytes;
  EXPECT_TRUE(BatchLoader(x, y, idx, options).resident());
  options.resident_max_bytes = bytes - 1;
  EXPECT_FALSE(BatchLoader(x, y, idx, options).resident());
}

TEST(BatchLoader, MemoryMappedInputs) {
  TempDir dir;
  save_npy(dir.file("x.npy"), make_x());
  save_npy(dir.file("y.npy"), make_y());
  const auto x = load_npy(dir.file("x.npy"), NpyLoad::mmap);
  const auto y = load_npy(dir.file("y.npy"), NpyLoad::mmap);
  for (int64_t limit : {int64_t{0}, int64_t{1} << 30}) {
    auto options = options_with(5, true, 2);
    options.resident_max_bytes = limit;
    BatchLoader loader(x, y, split_indices(), options);
    for (const auto& b : all_batches(loader)) expect_gathered(b, make_x(), make_y());
  }
}

TEST(BatchLoader, EmptySplit) {
  for (bool shuffle : {false, true}) {
    BatchLoader loader(make_x(), make_y(), {}, options_with(4, shuffle));
    EXPECT_EQ(loader.num_samples(), 0);
    EXPECT_EQ(loader.num_batches(), 0);
    EXPECT_TRUE(loader.order().empty());
    loader.set_epoch(3);
    EXPECT_EQ(loader.num_batches(), 0);
  }
}

TEST(BatchLoader, EmptyDataset) {
  // A dataset without samples (x[0] does not exist) still gives a loader with no batches.
  for (int64_t limit : {int64_t{0}, int64_t{1} << 20}) {
    auto options = options_with(4, true);
    options.resident_max_bytes = limit;
    BatchLoader loader(torch::zeros({0, 3, 4}), torch::zeros({0, 5, 2}), {}, options);
    EXPECT_EQ(loader.num_batches(), 0);
    EXPECT_TRUE(loader.order().empty());
  }
}

TEST(BatchLoader, Errors) {
  const auto x = make_x(), y = make_y();
  EXPECT_THAT(error_of([&] { BatchLoader(x, y, {0, 23}, options_with(4, false)); }),
              HasSubstr("loader: index 23 out of range for 23 samples"));
  EXPECT_THAT(error_of([&] { BatchLoader(x, y, {-1}, options_with(4, false)); }),
              HasSubstr("loader: index -1 out of range for 23 samples"));
  EXPECT_THAT(error_of([&] { BatchLoader(x, y, {0}, options_with(0, false)); }),
              HasSubstr("loader: batch_size must be > 0, got 0"));
  EXPECT_THAT(error_of([&] { BatchLoader(x, y.slice(0, 0, 20), {0}, options_with(4, false)); }),
              HasSubstr("loader: x has 23 samples but y has 20"));
  BatchLoader loader(x, y, split_indices(), options_with(5, false));
  EXPECT_THAT(error_of([&] { loader.batch(4); }), HasSubstr("loader: batch 4 out of range (4 batches)"));
  EXPECT_THAT(error_of([&] { loader.batch(-1); }), HasSubstr("loader: batch -1 out of range (4 batches)"));
}

TEST(BatchLoader, CpuAndCudaBatchesAgree_CUDA) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const auto x = make_x(), y = make_y();
  const auto idx = split_indices();
  for (bool shuffle : {false, true}) {
    const auto cpu_options = options_with(4, shuffle, /*seed=*/21);
    BatchLoader cpu(x, y, idx, cpu_options);
    for (int64_t limit : {int64_t{8} << 30, int64_t{0}}) {
      auto cuda_options = cpu_options;
      cuda_options.device = torch::Device(torch::kCUDA, 0);
      cuda_options.resident_max_bytes = limit;
      BatchLoader cuda(x, y, idx, cuda_options);
      EXPECT_EQ(cuda.resident(), limit > 0);
      for (int64_t e = 0; e < 2; ++e) {
        cpu.set_epoch(e);
        cuda.set_epoch(e);
        const auto a = all_batches(cpu), b = all_batches(cuda);
        for (const auto& batch : b) {
          EXPECT_TRUE(batch.x.is_cuda());
          EXPECT_TRUE(batch.y.is_cuda());
          EXPECT_TRUE(batch.index.device().is_cpu());
        }
        expect_same_batches(a, b, std::string(limit > 0 ? "resident" : "streaming") + " epoch " + std::to_string(e));
      }
    }
  }
}

}  // namespace
}  // namespace csipose
