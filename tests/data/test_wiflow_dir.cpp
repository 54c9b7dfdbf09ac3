// The WiFlow `preprocessed_csi_data/` loader (MODELS.md section 3) on a tiny hand-built directory:
// 6 files x 4 windows of (540, 20). Checks the label gather, the file-level split of every window,
// corrupted windows (flagged and zero-filled in memory, file untouched) and every input error.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>

#include "common/check.h"
#include "data/dataset.h"
#include "data/npy.h"
#include "data/npy_torch.h"
#include "data/wiflow_dir.h"
#include "testing.h"

namespace csipose {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using testing::TempDir;

using testing::error_of;

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Writes tensors as an uncompressed .npz (member names as given).
void save_npz(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& arrays) {
  std::vector<torch::Tensor> keep;
  keep.reserve(arrays.size());
  std::vector<NpzMember> members;
  for (const auto& [name, t] : arrays) {
    keep.push_back(t.contiguous());
    members.push_back({name, to_dtype(t.scalar_type()), keep.back().sizes().vec(), keep.back().data_ptr()});
  }
  write_npz(path, members);
}

constexpr int64_t kFiles = 6;
constexpr int64_t kPerFile = 4;
constexpr int64_t kWindows = kFiles * kPerFile;
constexpr int64_t kFrames = 30;
constexpr int64_t kFirstFileId = 100;  // file ids are not positions: 100..105

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

/// Corrupted windows of the fixture and the window that holds exactly +-1.5 (not corrupted).
const std::vector<int64_t> kCorrupted = {5, 9, 13, 21};
constexpr int64_t kBoundaryWindow = 17;

/// A WiFlow directory's arrays; tests change one of them and write the directory.
struct WiFlowFixture {
  torch::Tensor x;                // (W, 540, 20) float32
  torch::Tensor window_to_file;   // (W,) int64, file ids
  torch::Tensor window_to_frame;  // (W,) int32 (the loader accepts any integer type)
  torch::Tensor file_ids;         // (F,) int64
  torch::Tensor window_ranges;    // (F, 2) int64 [start, end)
  torch::Tensor keypoints;        // (frames, 15, 2) float32

  static WiFlowFixture make() {
    WiFlowFixture f;
    // Deterministic values in [-1, 1]: sin of a non-periodic ramp.
    f.x = torch::sin(torch::arange(kWindows * 540 * 20, torch::kFloat64) * 0.37).to(torch::kFloat32)
              .reshape({kWindows, 540, 20});
    f.x.index_put_({5, 100, 3}, kNaN);
    f.x.index_put_({9, 0, 0}, kInf);
    f.x.index_put_({13, 539, 19}, 1.6f);
    f.x.index_put_({kBoundaryWindow, 200, 10}, 1.5f);   // |x| == 1.5 is allowed
    f.x.index_put_({kBoundaryWindow, 201, 10}, -1.5f);
    f.x.index_put_({21, 7, 7}, -2.0f);
    f.window_to_file = torch::arange(kWindows, torch::kInt64).div(kPerFile, "floor") + kFirstFileId;
    // 7 is invertible mod 30: every window gets a different frame, in a scrambled order.
    f.window_to_frame = (torch::arange(kWindows, torch::kInt64) * 7).remainder(kFrames).to(torch::kInt32);
    f.file_ids = torch::arange(kFirstFileId, kFirstFileId + kFiles, torch::kInt64);
    auto start = torch::arange(kFiles, torch::kInt64) * kPerFile;
    f.window_ranges = torch::stack({start, start + kPerFile}, 1);
    f.keypoints = (torch::arange(kFrames * 15 * 2, torch::kFloat32) / 1000).reshape({kFrames, 15, 2});
    return f;
  }

  void write(const std::string& dir) const {
    fs::create_directories(dir);
    save_npy(dir + "/csi_windows.npy", x);
    save_npz(dir + "/window_info.npz", {{"window_to_file", window_to_file}, {"window_to_frame", window_to_frame}});
    save_npz(dir + "/file_info.npz", {{"file_ids", file_ids}, {"window_ranges", window_ranges}});
    save_npy(dir + "/all_keypoints.npy", keypoints);
  }

  std::vector<int64_t> ids() const {
    return std::vector<int64_t>(file_ids.data_ptr<int64_t>(), file_ids.data_ptr<int64_t>() + file_ids.numel());
  }
};

/// The split (0 train, 1 val, 2 test) of a file id in a FileSplit; -1 if absent.
int split_code_of(const FileSplit& s, int64_t id) {
  for (Split which : {Split::train, Split::val, Split::test}) {
    const auto& v = s.files(which);
    if (std::find(v.begin(), v.end(), id) != v.end()) return static_cast<int>(which);
  }
  return -1;
}

std::vector<int64_t> window_range(int64_t a, int64_t b) {
  std::vector<int64_t> out;
  for (int64_t i = a; i < b; ++i) out.push_back(i);
  return out;
}

std::vector<int64_t> concat(std::vector<int64_t> a, const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---- loading -------------------------------------------------------------------------------------

TEST(WiFlowDir, ShapesLabelsAndFileIds) {
  TempDir dir;
  const auto f = WiFlowFixture::make();
  f.write(dir.path());
  for (bool mmap : {true, false}) {
    DatasetOptions options;
    options.mmap = mmap;
    const PoseDataset ds = load_wiflow_dir(dir.path(), options);
    EXPECT_EQ(ds.layout, Layout::wiflow);
    EXPECT_EQ(ds.root, dir.path());
    EXPECT_EQ(ds.size(), kWindows);
    EXPECT_EQ(ds.x.sizes(), (std::vector<int64_t>{kWindows, 540, 20}));
    EXPECT_EQ(ds.x.scalar_type(), torch::kFloat32);
    ASSERT_EQ(ds.y.sizes(), (std::vector<int64_t>{kWindows, 15, 2}));
    EXPECT_EQ(ds.num_joints(), 15);
    // y[i] = all_keypoints[window_to_frame[i]], gathered by hand here.
    for (int64_t i = 0; i < kWindows; ++i) {
      const int64_t frame = f.window_to_frame[i].item<int64_t>();
      EXPECT_TRUE(torch::equal(ds.y[i], f.keypoints[frame])) << "window " << i << " frame " << frame;
    }
    EXPECT_EQ(ds.file_id.scalar_type(), torch::kInt64);
    EXPECT_TRUE(torch::equal(ds.file_id, f.window_to_file));
    EXPECT_EQ(ds.corrupted.sizes(), (std::vector<int64_t>{kWindows}));
    EXPECT_EQ(ds.spec, metric_spec_for("wiflow"));
    EXPECT_EQ(ds.spec.num_joints, 15);
    // Clean windows keep their values bit for bit.
    for (int64_t i = 0; i < kWindows; ++i) {
      if (std::count(kCorrupted.begin(), kCorrupted.end(), i)) continue;
      EXPECT_TRUE(torch::equal(ds.x[i], f.x[i])) << "window " << i << (mmap ? " (mmap)" : " (read)");
    }
  }
}

TEST(WiFlowDir, SplitOfWindowFollowsTheSeededFileSplit) {
  TempDir dir;
  const auto f = WiFlowFixture::make();
  f.write(dir.path());
  for (uint64_t seed : {42u, 7u}) {
    DatasetOptions options;
    options.split_seed = seed;
    const PoseDataset ds = load_wiflow_dir(dir.path(), options);
    const FileSplit expected = split_from_seed(f.ids(), seed);
    EXPECT_EQ(ds.split.train, expected.train);
    EXPECT_EQ(ds.split.val, expected.val);
    EXPECT_EQ(ds.split.test, expected.test);
    EXPECT_EQ(ds.split.source, expected.source);
    EXPECT_EQ(ds.split.train.size() + ds.split.val.size() + ds.split.test.size(), static_cast<size_t>(kFiles));
    ASSERT_EQ(ds.split_of_window.size(), static_cast<size_t>(kWindows));
    for (int64_t i = 0; i < kWindows; ++i)
      EXPECT_EQ(ds.split_of_window[static_cast<size_t>(i)], split_code_of(ds.split, kFirstFileId + i / kPerFile))
          << "window " << i;
    // indices() lists each window once, ascending, in the split of its file.
    std::vector<int64_t> all;
    for (Split s : {Split::train, Split::val, Split::test}) {
      const auto idx = ds.indices(s);
      EXPECT_TRUE(std::is_sorted(idx.begin(), idx.end()));
      for (int64_t i : idx) EXPECT_EQ(ds.split_of_window[static_cast<size_t>(i)], static_cast<int>(s));
      all = concat(all, idx);
    }
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all, window_range(0, kWindows));
  }
}

TEST(WiFlowDir, CorruptedWindowsAreFlaggedAndZeroFilled) {
  TempDir dir;
  const auto f = WiFlowFixture::make();
  f.write(dir.path());
  for (bool mmap : {true, false}) {
    DatasetOptions options;
    options.mmap = mmap;
    const PoseDataset ds = load_wiflow_dir(dir.path(), options);
    for (int64_t i = 0; i < kWindows; ++i) {
      const bool bad = std::count(kCorrupted.begin(), kCorrupted.end(), i) > 0;
      EXPECT_EQ(ds.corrupted[i].item<bool>(), bad) << "window " << i;
      if (bad) {
        EXPECT_EQ(ds.x[i].abs().max().item<float>(), 0.0f) << "window " << i << " must be zero-filled";
      }
    }
    EXPECT_TRUE(torch::isfinite(ds.x).all().item<bool>());
    EXPECT_LE(ds.x.abs().max().item<float>(), kWiFlowCorruptAbs);
    EXPECT_EQ(ds.x[kBoundaryWindow][200][10].item<float>(), 1.5f);
    EXPECT_EQ(ds.x[kBoundaryWindow][201][10].item<float>(), -1.5f);
  }
}

TEST(WiFlowDir, ZeroFillingAMappedFileLeavesTheFileUnchanged) {
  TempDir dir;
  const auto f = WiFlowFixture::make();
  f.write(dir.path());
  const std::string csi = dir.file("csi_windows.npy");
  const std::string before = file_bytes(csi);
  DatasetOptions options;
  options.mmap = true;
  const PoseDataset ds = load_wiflow_dir(dir.path(), options);
  ASSERT_TRUE(ds.corrupted[5].item<bool>());
  EXPECT_EQ(ds.x[5][100][3].item<float>(), 0.0f);
  // While the private mapping is alive and modified, the file (and another reader) see the original.
  EXPECT_EQ(file_bytes(csi), before);
  const auto again = load_npy(csi, NpyLoad::read);
  EXPECT_TRUE(std::isnan(again[5][100][3].item<float>()));
  EXPECT_EQ(again[21][7][7].item<float>(), -2.0f);
  // A second mapped load sees the original values too (and flags the same windows).
  const PoseDataset ds2 = load_wiflow_dir(dir.path(), options);
  EXPECT_TRUE(torch::equal(ds2.corrupted, ds.corrupted));
  EXPECT_TRUE(torch::equal(ds2.x, ds.x));
  EXPECT_EQ(file_bytes(csi), before);
}

/// The fixture with a split list: val = file 101, test = files 105 and 102.
constexpr const char* kSplitText = "# test split\nval: 101\ntest: 105 102\n";

TEST(WiFlowDir, CleanIndicesExcludeCorruptedWindows) {
  TempDir dir;
  WiFlowFixture::make().write(dir.path());
  testing::write_file(dir.file("split.txt"), kSplitText);
  const PoseDataset ds = load_wiflow_dir(dir.path(), {});
  EXPECT_EQ(ds.split.train, (std::vector<int64_t>{100, 103, 104}));
  EXPECT_EQ(ds.split.val, (std::vector<int64_t>{101}));
  EXPECT_EQ(ds.split.test, (std::vector<int64_t>{105, 102}));
  EXPECT_EQ(ds.split.source, dir.file("split.txt"));

  const auto train = concat(window_range(0, 4), window_range(12, 20));
  const auto val = window_range(4, 8);
  const auto test = concat(window_range(8, 12), window_range(20, 24));
  EXPECT_EQ(ds.indices(Split::train), train);
  EXPECT_EQ(ds.indices(Split::val), val);
  EXPECT_EQ(ds.indices(Split::test), test);
  EXPECT_EQ(ds.indices(Split::train, Subset::full), train);
  // Window 13 (train), 5 (val), 9 and 21 (test) are corrupted; 17 (exactly 1.5) is not.
  EXPECT_EQ(ds.indices(Split::train, Subset::clean),
            (std::vector<int64_t>{0, 1, 2, 3, 12, 14, 15, 16, 17, 18, 19}));
  EXPECT_EQ(ds.indices(Split::val, Subset::clean), (std::vector<int64_t>{4, 6, 7}));
  EXPECT_EQ(ds.indices(Split::test, Subset::clean), (std::vector<int64_t>{8, 10, 11, 20, 22, 23}));
  EXPECT_EQ(ds.num_corrupted(Split::train), 1);
  EXPECT_EQ(ds.num_corrupted(Split::val), 1);
  EXPECT_EQ(ds.num_corrupted(Split::test), 2);
}

TEST(WiFlowDir, SplitFileOptionAndSplitTxt) {
  TempDir data, other;
  WiFlowFixture::make().write(data.path());
  const auto seeded = split_from_seed(WiFlowFixture::make().ids(), 42);
  // No split.txt, no option: the seed.
  EXPECT_EQ(load_wiflow_dir(data.path(), {}).split.source, seeded.source);

  // DatasetOptions.split_file is used.
  const std::string list = other.file("my_split.txt");
  testing::write_file(list, "val: 104\ntest: 100\n");
  DatasetOptions options;
  options.split_file = list;
  const PoseDataset a = load_wiflow_dir(data.path(), options);
  EXPECT_EQ(a.split.source, list);
  EXPECT_EQ(a.split.val, (std::vector<int64_t>{104}));
  EXPECT_EQ(a.split.test, (std::vector<int64_t>{100}));
  EXPECT_EQ(a.indices(Split::test), window_range(0, 4));
  EXPECT_EQ(a.indices(Split::val), window_range(16, 20));

  // <root>/split.txt is picked up when no split_file is given ...
  testing::write_file(data.file("split.txt"), kSplitText);
  const PoseDataset b = load_wiflow_dir(data.path(), {});
  EXPECT_EQ(b.split.source, data.file("split.txt"));
  EXPECT_EQ(b.split.val, (std::vector<int64_t>{101}));
  // ... and an explicit split_file wins over it.
  const PoseDataset c = load_wiflow_dir(data.path(), options);
  EXPECT_EQ(c.split.source, list);
  EXPECT_EQ(c.split.val, (std::vector<int64_t>{104}));
}

TEST(WiFlowDir, NoWindowsGivesAnEmptyDataset) {
  TempDir dir;
  auto f = WiFlowFixture::make();
  f.x = torch::zeros({0, 540, 20});
  f.window_to_file = torch::zeros({0}, torch::kInt64);
  f.window_to_frame = torch::zeros({0}, torch::kInt64);
  f.window_ranges = torch::zeros({kFiles, 2}, torch::kInt64);  // every file [0, 0)
  f.write(dir.path());
  const PoseDataset ds = load_wiflow_dir(dir.path(), {});
  EXPECT_EQ(ds.size(), 0);
  EXPECT_EQ(ds.y.sizes(), (std::vector<int64_t>{0, 15, 2}));
  EXPECT_EQ(ds.corrupted.numel(), 0);
  EXPECT_TRUE(ds.indices(Split::train).empty());
  EXPECT_EQ(ds.split.train.size() + ds.split.val.size() + ds.split.test.size(), static_cast<size_t>(kFiles));
}

TEST(WiFlowDir, OpenDatasetDetectsTheLayout) {
  TempDir dir;
  WiFlowFixture::make().write(dir.path());
  EXPECT_EQ(detect_layout(dir.path()), Layout::wiflow);
  const PoseDataset ds = open_dataset(dir.path());
  EXPECT_EQ(ds.layout, Layout::wiflow);
  EXPECT_EQ(ds.size(), kWindows);

  TempDir empty;
  EXPECT_THAT(error_of([&] { detect_layout(empty.path()); }),
              HasSubstr(empty.path() + ": not a dataset directory (expected csi_windows.npy"));
  EXPECT_THAT(error_of([&] { open_dataset(empty.path() + "/nope"); }),
              HasSubstr("dataset directory " + empty.path() + "/nope does not exist"));
  EXPECT_EQ(parse_layout(to_string(Layout::mmfi)), Layout::mmfi);
  EXPECT_EQ(parse_subset(to_string(Subset::clean)), Subset::clean);
  EXPECT_THAT(error_of([] { parse_layout("coco"); }), HasSubstr("expected one of: wiflow, mmfi"));
  EXPECT_THAT(error_of([] { parse_subset("dirty"); }), HasSubstr("expected one of: full, clean"));
}

TEST(WiFlowCorrupted, FindAndZeroAcrossChunkBoundaries) {
  // The scan works in chunks of 2048 windows: put corrupted windows on both sides of each edge.
  auto x = torch::full({4100, 2, 3}, 0.5f);
  const std::vector<int64_t> bad = {0, 2047, 2048, 4095, 4096, 4099};
  x.index_put_({0, 0, 0}, kNaN);
  x.index_put_({2047, 1, 2}, 2.0f);
  x.index_put_({2048, 0, 1}, -kInf);
  x.index_put_({4095, 1, 1}, -1.51f);
  x.index_put_({4096, 0, 0}, kInf);
  x.index_put_({4099, 1, 2}, kNaN);
  x.index_put_({3000, 0, 0}, 1.5f);
  auto flags = find_and_zero_corrupted(x, 1.5f);
  ASSERT_EQ(flags.sizes(), (std::vector<int64_t>{4100}));
  ASSERT_EQ(flags.scalar_type(), torch::kBool);
  EXPECT_EQ(flags.sum().item<int64_t>(), static_cast<int64_t>(bad.size()));
  for (int64_t i : bad) {
    EXPECT_TRUE(flags[i].item<bool>()) << i;
    EXPECT_EQ(x[i].abs().max().item<float>(), 0.0f) << i;
  }
  EXPECT_FALSE(flags[3000].item<bool>());
  EXPECT_EQ(x[3000][0][0].item<float>(), 1.5f);
  EXPECT_EQ(x[1].sum().item<float>(), 3.0f);
}

// ---- errors --------------------------------------------------------------------------------------

/// Writes the fixture after `edit` and returns the error load_wiflow_dir gives for it.
std::string load_error(const TempDir& dir, const std::function<void(WiFlowFixture&)>& edit,
                       const DatasetOptions& options = {}) {
  auto f = WiFlowFixture::make();
  edit(f);
  f.write(dir.path());
  return error_of([&] { load_wiflow_dir(dir.path(), options); });
}

TEST(WiFlowDirErrors, MissingFiles) {
  for (const char* name : {"csi_windows.npy", "window_info.npz", "file_info.npz", "all_keypoints.npy"}) {
    TempDir dir;
    WiFlowFixture::make().write(dir.path());
    fs::remove(dir.file(name));
    EXPECT_THAT(error_of([&] { load_wiflow_dir(dir.path(), {}); }),
                HasSubstr(dir.path() + ": WiFlow layout needs " + name + " (not found)"));
  }
}

TEST(WiFlowDirErrors, WindowShapeAndDtype) {
  TempDir dir;
  const std::string csi = dir.file("csi_windows.npy");
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.x = f.x.slice(2, 0, 10); }),
              HasSubstr(csi + ": expected windows of shape (W, 540, 20), got (24, 540, 10)"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.x = f.x.reshape({kWindows, 20, 540}); }),
              HasSubstr("expected windows of shape (W, 540, 20), got (24, 20, 540)"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.x = f.x.reshape({kWindows, 10800}); }),
              HasSubstr(csi + ": expected 3 dims"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.x = f.x.to(torch::kFloat64); }),
              HasSubstr(csi + ": expected dtype float32, got float64"));
}

TEST(WiFlowDirErrors, WindowInfo) {
  TempDir dir;
  const std::string winfo = dir.file("window_info.npz");
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_to_file = f.window_to_file.slice(0, 0, 23); }),
              HasSubstr(winfo + ": window_to_file has 23 entries for 24 windows"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_to_frame = f.window_to_frame.slice(0, 1); }),
              HasSubstr(winfo + ": window_to_frame has 23 entries for 24 windows"));
  // Window 4 is in file 101's range [4, 8); claiming file 100 puts it outside [0, 4).
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_to_file.index_put_({4}, 100); }),
              HasSubstr(winfo + ": window 4 of file 100 lies outside that file's range [0, 4)"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_to_file.index_put_({3}, 999); }),
              HasSubstr(winfo + ": window 3 belongs to file 999 which file_info.npz does not list"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_to_file = f.window_to_file.to(torch::kFloat32); }),
              HasSubstr(winfo + ": \"window_to_file\" must be an integer array, got float32"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_to_frame.index_put_({6}, kFrames); }),
              HasSubstr(winfo + ": window_to_frame points outside 0..29"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_to_frame.index_put_({6}, -1); }),
              HasSubstr("window_to_frame points outside 0..29"));

  // A missing member names what the archive has.
  auto f = WiFlowFixture::make();
  f.write(dir.path());
  save_npz(winfo, {{"window_to_file", f.window_to_file}});
  EXPECT_THAT(error_of([&] { load_wiflow_dir(dir.path(), {}); }),
              HasSubstr(winfo + ": missing array \"window_to_frame\" (has: window_to_file)"));
}

TEST(WiFlowDirErrors, FileInfo) {
  TempDir dir;
  const std::string finfo = dir.file("file_info.npz");
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_ranges.index_put_({5, 1}, kWindows + 1); }),
              HasSubstr(finfo + ": file 105 has window range [20, 25) outside 0..24"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_ranges.index_put_({2, 0}, 9); }),
              HasSubstr(dir.file("window_info.npz") + ": window 8 of file 102 lies outside that file's range [9, 12)"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_ranges.index_put_({2, 0}, 13); }),
              HasSubstr(finfo + ": file 102 has window range [13, 12) outside 0..24"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.file_ids.index_put_({1}, 100); }),
              HasSubstr(finfo + ": file id 100 appears twice"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.window_ranges = f.window_ranges.slice(0, 0, 5); }),
              HasSubstr(finfo + ": window_ranges must be (F, 2) for 6 files"));
}

TEST(WiFlowDirErrors, Keypoints) {
  TempDir dir;
  const std::string kp = dir.file("all_keypoints.npy");
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.keypoints = torch::zeros({kFrames, 17, 2}); }),
              HasSubstr(kp + ": expected (frames, 15, 2), got (30, 17, 2)"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.keypoints = torch::zeros({kFrames, 30}); }),
              HasSubstr(kp + ": expected 3 dims"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.keypoints = f.keypoints.to(torch::kFloat64); }),
              HasSubstr(kp + ": expected dtype float32, got float64"));
  // Window 6 reads frame 6 * 7 % 30 = 12.
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.keypoints.index_put_({12, 3, 1}, kNaN); }),
              HasSubstr(kp + ": non-finite keypoints for window 6"));
  EXPECT_THAT(load_error(dir, [](WiFlowFixture& f) { f.keypoints.index_put_({12, 0, 0}, kInf); }),
              HasSubstr("non-finite keypoints for window 6"));
}

TEST(WiFlowDirErrors, TruncatedCsiWindows) {
  TempDir dir;
  WiFlowFixture::make().write(dir.path());
  const std::string csi = dir.file("csi_windows.npy");
  fs::resize_file(csi, fs::file_size(csi) - 100);
  for (bool mmap : {true, false}) {
    DatasetOptions options;
    options.mmap = mmap;
    const std::string msg = error_of([&] { load_wiflow_dir(dir.path(), options); });
    EXPECT_THAT(msg, HasSubstr(csi)) << (mmap ? "mmap" : "read");
    EXPECT_THAT(msg, HasSubstr("truncated")) << (mmap ? "mmap" : "read");
    EXPECT_THAT(msg, HasSubstr("(24, 540, 20)")) << (mmap ? "mmap" : "read");
  }
}

TEST(WiFlowDirErrors, SplitFileProblemsPropagate) {
  TempDir dir;
  WiFlowFixture::make().write(dir.path());
  testing::write_file(dir.file("split.txt"), "val: 101\ntest: 7\n");
  EXPECT_THAT(error_of([&] { load_wiflow_dir(dir.path(), {}); }),
              HasSubstr(dir.file("split.txt") + ":2: file id 7 is not in the dataset (6 files)"));
  DatasetOptions options;
  options.split_file = dir.file("missing.txt");
  EXPECT_THAT(error_of([&] { load_wiflow_dir(dir.path(), options); }), HasSubstr(dir.file("missing.txt")));
}

}  // namespace
}  // namespace csipose
