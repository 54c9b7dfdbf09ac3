// The MM-Fi npy loader (MODELS.md section 3): the official per-frame preprocessing checked against
// an independent double-precision implementation here, corrupted flags, split.npy codes and
// dtypes, groups.npy, and the input errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>

#include "common/check.h"
#include "data/dataset.h"
#include "data/mmfi_npy.h"
#include "data/npy_torch.h"
#include "testing.h"

namespace csipose {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::TempDir;

using testing::error_of;

constexpr int64_t kFrames = 5;
constexpr int64_t kAnt = 3, kSub = 114, kPkt = 10;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

/// Frames of the fixture: 0 and 4 clean, 1 with scattered NaN / +-inf, 2 constant, 3 with one
/// time slice (packet 0) entirely non-finite.
struct MmfiFixture {
  torch::Tensor x;       // (N, 3, 114, 10) float32
  torch::Tensor y;       // (N, 17, 2) float32
  torch::Tensor split;   // (N,) 0 train, 1 test, 2 val
  torch::Tensor groups;  // (N,) or undefined: no groups.npy

  static MmfiFixture make() {
    MmfiFixture f;
    // Positive amplitudes in [0.5, 1.5], different in every frame.
    f.x = (1.0 + 0.5 * torch::sin(torch::arange(kFrames * kAnt * kSub * kPkt, torch::kFloat64) * 0.37))
              .to(torch::kFloat32)
              .reshape({kFrames, kAnt, kSub, kPkt});
    f.x.index_put_({1, 0, 5, 3}, kNaN);
    f.x.index_put_({1, 2, 100, 3}, kNaN);
    f.x.index_put_({1, 1, 7, 3}, kInf);
    f.x.index_put_({1, 0, 0, 7}, -kInf);
    f.x.index_put_({1, 1, 50, 9}, kNaN);
    f.x[2].fill_(4.0f);
    f.x.index_put_({3, torch::indexing::Slice(), torch::indexing::Slice(), 0}, kNaN);
    f.x.index_put_({3, 1, 3, 0}, kInf);
    f.y = (torch::arange(kFrames * 17 * 2, torch::kFloat32) / (kFrames * 17 * 2)).reshape({kFrames, 17, 2});
    f.split = torch::tensor({0, 1, 2, 0, 1}, torch::kInt64);
    f.groups = torch::tensor({10, 11, 12, 10, 13}, torch::kInt64);
    return f;
  }

  void write(const std::string& dir) const {
    fs::create_directories(dir);
    save_npy(dir + "/X.npy", x);
    save_npy(dir + "/Y.npy", y);
    save_npy(dir + "/split.npy", split);
    if (groups.defined()) save_npy(dir + "/groups.npy", groups);
  }
};

/// The official preprocessing, written out element by element in double precision:
/// inf -> NaN; NaN -> mean of the finite values of the same packet over antennas x subcarriers
/// (no finite value: 0, csipose's documented choice); then (v - min) / (max - min) over the frame,
/// all zeros for a constant frame.
std::vector<double> reference_frame(const torch::Tensor& frame) {
  const auto c = frame.contiguous();
  const float* p = c.data_ptr<float>();
  auto at = [](int64_t a, int64_t s, int64_t t) { return static_cast<size_t>((a * kSub + s) * kPkt + t); };
  std::vector<double> v(static_cast<size_t>(kAnt * kSub * kPkt));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::isinf(p[i]) ? std::nan("") : p[i];
  for (int64_t t = 0; t < kPkt; ++t) {
    double sum = 0;
    int64_t count = 0;
    for (int64_t a = 0; a < kAnt; ++a)
      for (int64_t s = 0; s < kSub; ++s)
        if (!std::isnan(v[at(a, s, t)])) {
          sum += v[at(a, s, t)];
          ++count;
        }
    const double mean = count > 0 ? sum / static_cast<double>(count) : 0.0;
    for (int64_t a = 0; a < kAnt; ++a)
      for (int64_t s = 0; s < kSub; ++s)
        if (std::isnan(v[at(a, s, t)])) v[at(a, s, t)] = mean;
  }
  const double lo = *std::min_element(v.begin(), v.end());
  const double hi = *std::max_element(v.begin(), v.end());
  for (double& e : v) e = hi > lo ? (e - lo) / (hi - lo) : 0.0;
  return v;
}

/// Largest |got - want| over a preprocessed frame.
double max_abs_diff(const torch::Tensor& got, const std::vector<double>& want) {
  const auto c = got.contiguous();
  const float* p = c.data_ptr<float>();
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::abs(static_cast<double>(p[i]) - want[i]));
  return worst;
}

// ---- preprocessing -------------------------------------------------------------------------------

TEST(MmfiNpy, PreprocessingMatchesAnIndependentReference) {
  TempDir dir;
  const auto f = MmfiFixture::make();
  f.write(dir.path());
  const PoseDataset ds = load_mmfi_npy(dir.path(), {});
  ASSERT_EQ(ds.x.sizes(), (std::vector<int64_t>{kFrames, kAnt, kSub, kPkt}));
  EXPECT_TRUE(torch::isfinite(ds.x).all().item<bool>());
  for (int64_t n = 0; n < kFrames; ++n) {
    const auto want = reference_frame(f.x[n]);
    EXPECT_LT(max_abs_diff(ds.x[n], want), 1e-6) << "frame " << n;
    if (n != 2) {
      EXPECT_EQ(ds.x[n].min().item<float>(), 0.0f) << "frame " << n;
      EXPECT_EQ(ds.x[n].max().item<float>(), 1.0f) << "frame " << n;
    }
  }
}

TEST(MmfiNpy, RepairUsesTheSamePacketsFiniteMean) {
  // Frame 1, packet 3: the repaired NaN and +inf entries all equal the mean of the finite values
  // of packet 3 (3 x 114 - 3 of them), scaled like every other value of the frame.
  TempDir dir;
  const auto f = MmfiFixture::make();
  f.write(dir.path());
  const PoseDataset ds = load_mmfi_npy(dir.path(), {});
  const auto raw = f.x[1].to(torch::kFloat64);
  const auto packet = raw.select(2, 3);
  const auto finite = torch::isfinite(packet);
  ASSERT_EQ(finite.sum().item<int64_t>(), kAnt * kSub - 3);
  const double mean = packet.masked_select(finite).mean().item<double>();
  // Scale with the frame's min and max after repair (the reference computes both).
  const auto ref = reference_frame(f.x[1]);
  const double lo = raw.masked_select(torch::isfinite(raw)).min().item<double>();
  const double hi = raw.masked_select(torch::isfinite(raw)).max().item<double>();
  const double scaled = (mean - lo) / (hi - lo);
  for (auto [a, s] : {std::pair<int64_t, int64_t>{0, 5}, {2, 100}, {1, 7}})
    EXPECT_NEAR(ds.x[1][a][s][3].item<float>(), scaled, 1e-6) << "antenna " << a << " subcarrier " << s;
  // A value at another packet is untouched apart from the scaling.
  EXPECT_NEAR(ds.x[1][0][5][4].item<float>(), (raw[0][5][4].item<double>() - lo) / (hi - lo), 1e-6);
  EXPECT_NEAR(ref[static_cast<size_t>((0 * kSub + 5) * kPkt + 3)], scaled, 1e-12);
}

TEST(MmfiNpy, ConstantFrameBecomesZerosAndIsNotCorrupted) {
  TempDir dir;
  MmfiFixture::make().write(dir.path());
  const PoseDataset ds = load_mmfi_npy(dir.path(), {});
  EXPECT_EQ(ds.x[2].abs().max().item<float>(), 0.0f);
  EXPECT_FALSE(ds.corrupted[2].item<bool>());
}

TEST(MmfiNpy, CorruptedFlagsAndCleanIndices) {
  TempDir dir;
  MmfiFixture::make().write(dir.path());
  const PoseDataset ds = load_mmfi_npy(dir.path(), {});
  ASSERT_EQ(ds.corrupted.scalar_type(), torch::kBool);
  EXPECT_TRUE(torch::equal(ds.corrupted, torch::tensor({false, true, false, true, false})));
  // split codes 0 1 2 0 1 -> train {0, 3}, test {1, 4}, val {2}.
  EXPECT_EQ(ds.indices(Split::train), (std::vector<int64_t>{0, 3}));
  EXPECT_EQ(ds.indices(Split::val), (std::vector<int64_t>{2}));
  EXPECT_EQ(ds.indices(Split::test), (std::vector<int64_t>{1, 4}));
  EXPECT_EQ(ds.indices(Split::train, Subset::clean), (std::vector<int64_t>{0}));
  EXPECT_EQ(ds.indices(Split::val, Subset::clean), (std::vector<int64_t>{2}));
  EXPECT_EQ(ds.indices(Split::test, Subset::clean), (std::vector<int64_t>{4}));
  EXPECT_EQ(ds.num_corrupted(Split::train), 1);
  EXPECT_EQ(ds.num_corrupted(Split::val), 0);
  EXPECT_EQ(ds.num_corrupted(Split::test), 1);
}

TEST(MmfiNpy, LabelsLayoutAndSpec) {
  TempDir dir;
  const auto f = MmfiFixture::make();
  f.write(dir.path());
  const PoseDataset ds = open_dataset(dir.path());
  EXPECT_EQ(detect_layout(dir.path()), Layout::mmfi);
  EXPECT_EQ(ds.layout, Layout::mmfi);
  EXPECT_EQ(ds.root, dir.path());
  EXPECT_EQ(ds.size(), kFrames);
  EXPECT_EQ(ds.num_joints(), 17);
  EXPECT_TRUE(torch::equal(ds.y, f.y));
  EXPECT_EQ(ds.spec, metric_spec_for("mmfi"));
  EXPECT_EQ(ds.split.source, dir.file("split.npy"));
}

TEST(MmfiNpy, GroupsGiveFileIdsAndPerSplitGroups) {
  TempDir dir;
  auto f = MmfiFixture::make();
  f.write(dir.path());
  const PoseDataset ds = load_mmfi_npy(dir.path(), {});
  EXPECT_TRUE(torch::equal(ds.file_id, f.groups));
  EXPECT_EQ(ds.split.train, (std::vector<int64_t>{10}));
  EXPECT_EQ(ds.split.val, (std::vector<int64_t>{12}));
  EXPECT_EQ(ds.split.test, (std::vector<int64_t>{11, 13}));

  // int32 groups are fine too.
  f.groups = f.groups.to(torch::kInt32);
  f.write(dir.path());
  EXPECT_TRUE(torch::equal(load_mmfi_npy(dir.path(), {}).file_id, f.groups.to(torch::kInt64)));

  // Without groups.npy: file_id -1 everywhere and no file lists.
  TempDir plain;
  f.groups = torch::Tensor();
  f.write(plain.path());
  const PoseDataset p = load_mmfi_npy(plain.path(), {});
  EXPECT_TRUE(torch::equal(p.file_id, torch::full({kFrames}, -1, torch::kInt64)));
  EXPECT_TRUE(p.split.train.empty() && p.split.val.empty() && p.split.test.empty());
  EXPECT_EQ(p.indices(Split::test), (std::vector<int64_t>{1, 4}));
}

TEST(MmfiNpy, SplitCodesAndDtypes) {
  struct Case {
    torch::Tensor split;
    std::vector<int64_t> expected;  // 0 train, 1 val, 2 test
  };
  const std::vector<Case> cases = {
      {torch::tensor({0, 1, 2, 2, 0}, torch::kInt64), {0, 2, 1, 1, 0}},
      {torch::tensor({0, 1, 2, 2, 0}, torch::kInt32), {0, 2, 1, 1, 0}},
      {torch::tensor({2, 2, 1, 0, 0}, torch::kUInt8), {1, 1, 2, 0, 0}},
      {torch::tensor({false, true, false, false, true}), {0, 2, 0, 0, 2}},  // bool: true = test
  };
  for (const auto& c : cases) {
    TempDir dir;
    auto f = MmfiFixture::make();
    f.split = c.split;
    f.write(dir.path());
    const PoseDataset ds = load_mmfi_npy(dir.path(), {});
    std::vector<int64_t> got(ds.split_of_window.begin(), ds.split_of_window.end());
    EXPECT_EQ(got, c.expected) << c.split.scalar_type();
  }
}

TEST(MmfiPreprocess, InPlaceOnATensorAndRejectsOtherRanks) {
  auto x = MmfiFixture::make().x;
  const auto original = x.clone();
  const auto flags = mmfi_preprocess(x);
  EXPECT_TRUE(torch::equal(flags, torch::tensor({false, true, false, true, false})));
  for (int64_t n = 0; n < kFrames; ++n) EXPECT_LT(max_abs_diff(x[n], reference_frame(original[n])), 1e-6);
  // Scaling is per frame: a frame multiplied by 7 and shifted by 3 preprocesses to the same values.
  auto y = original.slice(0, 0, 1) * 7.0f + 3.0f;
  mmfi_preprocess(y);
  EXPECT_LT((y[0] - x[0]).abs().max().item<float>(), 1e-5);

  auto flat = torch::zeros({2, 3, 114});
  EXPECT_THAT(error_of([&] { mmfi_preprocess(flat); }), HasSubstr("mmfi_preprocess: expected (N, 3, 114, 10)"));
  // The result is written through views of x: a non-contiguous x is refused, not silently copied.
  auto permuted = torch::rand({2, 10, 114, 3}).permute({0, 3, 2, 1});
  EXPECT_THAT(error_of([&] { mmfi_preprocess(permuted); }), HasSubstr("mmfi_preprocess: x must be contiguous"));
}

TEST(MmfiNpy, NoFramesGivesAnEmptyDataset) {
  TempDir dir;
  MmfiFixture f;
  f.x = torch::zeros({0, kAnt, kSub, kPkt});
  f.y = torch::zeros({0, 17, 2});
  f.split = torch::zeros({0}, torch::kInt64);
  f.write(dir.path());
  const PoseDataset ds = load_mmfi_npy(dir.path(), {});
  EXPECT_EQ(ds.size(), 0);
  EXPECT_EQ(ds.corrupted.numel(), 0);
  EXPECT_TRUE(ds.indices(Split::test).empty());
}

// ---- errors --------------------------------------------------------------------------------------

std::string load_error(const TempDir& dir, const std::function<void(MmfiFixture&)>& edit) {
  auto f = MmfiFixture::make();
  edit(f);
  f.write(dir.path());
  return error_of([&] { load_mmfi_npy(dir.path(), {}); });
}

TEST(MmfiNpyErrors, MissingFiles) {
  for (const char* name : {"X.npy", "Y.npy", "split.npy"}) {
    TempDir dir;
    MmfiFixture::make().write(dir.path());
    fs::remove(dir.file(name));
    EXPECT_THAT(error_of([&] { load_mmfi_npy(dir.path(), {}); }),
                HasSubstr(dir.path() + ": MM-Fi layout needs " + name + " (not found)"));
  }
}

TEST(MmfiNpyErrors, InputsShapesAndDtypes) {
  TempDir dir;
  const std::string x = dir.file("X.npy");
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.x = f.x.slice(3, 0, 9); }),
              HasSubstr(x + ": expected (N, 3, 114, 10), got (5, 3, 114, 9)"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.x = f.x.reshape({kFrames, 114, 3, 10}); }),
              HasSubstr(x + ": expected (N, 3, 114, 10), got (5, 114, 3, 10)"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.x = f.x.reshape({kFrames, 342, 10}); }),
              HasSubstr(x + ": expected 4 dims, got shape (5, 342, 10)"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.x = f.x.to(torch::kFloat64); }),
              HasSubstr(x + ": expected dtype float32, got float64"));
}

TEST(MmfiNpyErrors, Labels) {
  TempDir dir;
  const std::string y = dir.file("Y.npy");
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.y = f.y.slice(0, 0, 4); }),
              HasSubstr(y + ": expected (5, 17, 2) to match X.npy, got (4, 17, 2)"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.y = torch::zeros({kFrames, 15, 2}); }),
              HasSubstr(y + ": expected (5, 17, 2) to match X.npy, got (5, 15, 2)"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.y.index_put_({3, 16, 1}, kNaN); }),
              HasSubstr(y + ": non-finite keypoints for frame 3"));
}

TEST(MmfiNpyErrors, SplitAndGroups) {
  TempDir dir;
  const std::string s = dir.file("split.npy");
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.split = f.split.to(torch::kFloat32); }),
              HasSubstr(s + ": must be bool or integer (0 train, 1 test, 2 val), got float32"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.split = f.split.to(torch::kFloat64); }),
              HasSubstr("got float64"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.split.index_put_({2}, 3); }),
              HasSubstr(s + ": entry 2 is 3; expected 0 train, 1 test, 2 val"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.split.index_put_({4}, -1); }),
              HasSubstr(s + ": entry 4 is -1"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.split = f.split.slice(0, 0, 4); }),
              HasSubstr(s + ": has 4 entries for 5 frames"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.split = f.split.reshape({5, 1}); }),
              HasSubstr(s + ": expected 1 dims"));
  EXPECT_THAT(load_error(dir, [](MmfiFixture& f) { f.groups = f.groups.slice(0, 0, 4); }),
              HasSubstr(dir.file("groups.npy") + ": has 4 entries for 5 frames"));
}

}  // namespace
}  // namespace csipose
