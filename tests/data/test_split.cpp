// File-level splits: the seeded split (deterministic, disjoint, complete, 70/15/15 sizes), the
// split list file (the shipped published seed-42 split, precise file:line errors) and the
// write/read round trip.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>
#include <sstream>

#include "common/check.h"
#include "data/split.h"
#include "testing.h"

namespace csipose {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

using testing::error_of;

std::vector<int64_t> iota_ids(int64_t n, int64_t first = 0) {
  std::vector<int64_t> ids(static_cast<size_t>(n));
  std::iota(ids.begin(), ids.end(), first);
  return ids;
}

std::vector<int64_t> sorted(std::vector<int64_t> v) {
  std::sort(v.begin(), v.end());
  return v;
}

/// Every id exactly once over train + val + test.
void expect_partition(const FileSplit& s, const std::vector<int64_t>& ids) {
  std::vector<int64_t> all;
  for (Split which : {Split::train, Split::val, Split::test})
    all.insert(all.end(), s.files(which).begin(), s.files(which).end());
  EXPECT_EQ(sorted(all), sorted(ids)) << "the three lists must partition the file ids";
}

// ---- split_from_seed ----------------------------------------------------------------------------

TEST(SplitFromSeed, FiveHundredFilesGive350_75_75) {
  const auto ids = iota_ids(500);
  const FileSplit s = split_from_seed(ids, 42);
  EXPECT_EQ(s.train.size(), 350u);
  EXPECT_EQ(s.val.size(), 75u);
  EXPECT_EQ(s.test.size(), 75u);
  expect_partition(s, ids);
  EXPECT_EQ(s.source, "seed 42 (70/15/15)");
}

TEST(SplitFromSeed, DeterministicAndIndependentOfInputOrder) {
  const auto ids = iota_ids(500, /*first=*/1000);
  const FileSplit a = split_from_seed(ids, 42);
  const FileSplit b = split_from_seed(ids, 42);
  EXPECT_EQ(a.train, b.train);
  EXPECT_EQ(a.val, b.val);
  EXPECT_EQ(a.test, b.test);
  // The ids are sorted before shuffling: the order they are listed in does not matter.
  auto reversed = ids;
  std::reverse(reversed.begin(), reversed.end());
  const FileSplit c = split_from_seed(reversed, 42);
  EXPECT_EQ(a.train, c.train);
  EXPECT_EQ(a.val, c.val);
  EXPECT_EQ(a.test, c.test);
}

TEST(SplitFromSeed, DifferentSeedsGiveDifferentSplits) {
  const auto ids = iota_ids(500);
  const FileSplit a = split_from_seed(ids, 42);
  const FileSplit b = split_from_seed(ids, 43);
  expect_partition(b, ids);
  EXPECT_NE(sorted(a.test), sorted(b.test));
  EXPECT_NE(sorted(a.val), sorted(b.val));
}

TEST(SplitFromSeed, ShufflesRatherThanCuttingSortedIds) {
  const FileSplit s = split_from_seed(iota_ids(500), 42);
  EXPECT_NE(sorted(s.train), iota_ids(350)) << "train must not simply be the first 350 ids";
}

TEST(SplitFromSeed, CustomFractionsAndSource) {
  const auto ids = iota_ids(100);
  const FileSplit s = split_from_seed(ids, 7, /*train_fraction=*/0.8, /*val_fraction=*/0.1);
  EXPECT_EQ(s.train.size(), 80u);
  EXPECT_EQ(s.val.size(), 10u);
  EXPECT_EQ(s.test.size(), 10u);
  expect_partition(s, ids);
  EXPECT_EQ(s.source, "seed 7 (80/10/10)");
}

TEST(SplitFromSeed, TinySetsKeepEverySplitNonEmpty) {
  for (int64_t n : {3, 4, 5, 6, 7}) {
    const auto ids = iota_ids(n);
    const FileSplit s = split_from_seed(ids, 1);
    EXPECT_GE(s.train.size(), 1u) << n << " files";
    EXPECT_GE(s.val.size(), 1u) << n << " files";
    EXPECT_GE(s.test.size(), 1u) << n << " files";
    expect_partition(s, ids);
  }
  // val_fraction 0 is allowed and leaves val empty.
  const FileSplit no_val = split_from_seed(iota_ids(10), 1, 0.7, 0.0);
  EXPECT_TRUE(no_val.val.empty());
  EXPECT_EQ(no_val.train.size(), 7u);
  EXPECT_EQ(no_val.test.size(), 3u);
}

TEST(SplitFromSeed, RejectsBadInput) {
  EXPECT_THAT(error_of([] { split_from_seed({1, 2, 2, 3}, 0); }), HasSubstr("duplicate file ids"));
  EXPECT_THAT(error_of([] { split_from_seed({1, 2}, 0); }), HasSubstr("need at least 3 files"));
  EXPECT_THAT(error_of([] { split_from_seed(iota_ids(10), 0, 0.9, 0.1); }), HasSubstr("split fractions"));
  EXPECT_THAT(error_of([] { split_from_seed(iota_ids(10), 0, 0.0, 0.1); }), HasSubstr("split fractions"));
  EXPECT_THAT(error_of([] { split_from_seed(iota_ids(10), 0, 0.7, -0.1); }), HasSubstr("split fractions"));
}

TEST(SplitNames, ParseAndPrint) {
  for (Split s : {Split::train, Split::val, Split::test}) EXPECT_EQ(parse_split(to_string(s)), s);
  EXPECT_THAT(error_of([] { parse_split("validation"); }),
              HasSubstr("unknown value \"validation\"; expected one of: train, val, test"));
}

// ---- read_split_file -----------------------------------------------------------------------------

/// The ids on the `name:` line of a split file, parsed here independently of read_split_file.
std::vector<int64_t> listed_ids(const std::string& path, const std::string& name) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + ":", 0) != 0) continue;
    std::istringstream ss(line.substr(name.size() + 1));
    std::vector<int64_t> out;
    int64_t id;
    while (ss >> id) out.push_back(id);
    return out;
  }
  ADD_FAILURE() << path << " has no " << name << ": line";
  return {};
}

TEST(SplitFile, ShippedPublishedSeed42Split) {
  const std::string path = testing::source_path("data/wiflow_split_seed42.txt");
  const auto ids = iota_ids(500);
  const FileSplit s = read_split_file(path, ids);
  ASSERT_EQ(s.train.size(), 350u);
  ASSERT_EQ(s.val.size(), 75u);
  ASSERT_EQ(s.test.size(), 75u);
  EXPECT_EQ(s.val.front(), 46);
  EXPECT_EQ(s.test.front(), 98);
  // The listed order is the published split's own (shuffled) order and is kept as is.
  EXPECT_EQ(s.val, listed_ids(path, "val"));
  EXPECT_EQ(s.test, listed_ids(path, "test"));
  EXPECT_TRUE(std::is_sorted(s.train.begin(), s.train.end()));
  expect_partition(s, ids);
  EXPECT_EQ(s.source, path);
}

TEST(SplitFile, CommentsBlankLinesCrlfAndSpacing) {
  TempDir dir;
  const std::string path = dir.file("split.txt");
  testing::write_file(path,
                      "# a comment\r\n"
                      "\r\n"
                      "   \t\n"
                      "  val :  4  2 # trailing comment 9\r\n"
                      "test:\t7\n"
                      "test: 1\n");  // a second line for a list appends to it
  const FileSplit s = read_split_file(path, iota_ids(10));
  EXPECT_EQ(s.val, (std::vector<int64_t>{4, 2}));
  EXPECT_EQ(s.test, (std::vector<int64_t>{7, 1}));
  EXPECT_EQ(s.train, (std::vector<int64_t>{0, 3, 5, 6, 8, 9}));
}

TEST(SplitFile, EmptyValListIsAllowed) {
  TempDir dir;
  const std::string path = dir.file("split.txt");
  testing::write_file(path, "val:\ntest: 3\n");
  const FileSplit s = read_split_file(path, iota_ids(5));
  EXPECT_TRUE(s.val.empty());
  EXPECT_EQ(s.test, (std::vector<int64_t>{3}));
  EXPECT_EQ(s.train, (std::vector<int64_t>{0, 1, 2, 4}));
}

/// The error read_split_file gives for a file with this text and ids 0..9.
std::string split_file_error(const TempDir& dir, const std::string& text, std::string* path_out = nullptr) {
  const std::string path = dir.file("bad_split.txt");
  testing::write_file(path, text);
  if (path_out) *path_out = path;
  return error_of([&] { read_split_file(path, iota_ids(10)); });
}

TEST(SplitFile, ErrorsNameFileAndLine) {
  TempDir dir;
  std::string path;
  EXPECT_THAT(split_file_error(dir, "# header\nval: 1 2\ntest: 3 12\n", &path),
              HasSubstr(path + ":3: file id 12 is not in the dataset (10 files)"));
  EXPECT_THAT(split_file_error(dir, "val: 1 2\ntest: 3 2\n", &path),
              HasSubstr(path + ":2: file id 2 is listed twice"));
  EXPECT_THAT(split_file_error(dir, "val: 1 1\ntest: 3\n", &path),
              HasSubstr(path + ":1: file id 1 is listed twice"));
  EXPECT_THAT(split_file_error(dir, "val: 1 x2\ntest: 3\n", &path), HasSubstr(path + ":1: \"x2\" is not a file id"));
  EXPECT_THAT(split_file_error(dir, "val: 1\n\ntest: 3 4.5\n", &path),
              HasSubstr(path + ":3: \"4.5\" is not a file id"));
  EXPECT_THAT(split_file_error(dir, "val: 1,2\ntest: 3\n", &path), HasSubstr(path + ":1: \"1,2\" is not a file id"));
  EXPECT_THAT(split_file_error(dir, "val: 1\ntrain: 2\ntest: 3\n", &path),
              HasSubstr(path + ":2: unknown list \"train\"; expected val or test"));
  EXPECT_THAT(split_file_error(dir, "val: 1\n5 6\n", &path),
              HasSubstr(path + ":2: expected \"val: ids...\" or \"test: ids...\""));
}

TEST(SplitFile, ErrorsForMissingListsFilesAndEmptySplits) {
  TempDir dir;
  std::string path;
  EXPECT_THAT(split_file_error(dir, "val: 1 2\n", &path),
              HasSubstr(path + ": needs both a \"val:\" and a \"test:\" line"));
  EXPECT_THAT(split_file_error(dir, "test: 1 2\n", &path), HasSubstr("needs both"));
  EXPECT_THAT(split_file_error(dir, "# nothing\n", &path), HasSubstr("needs both"));
  EXPECT_THAT(split_file_error(dir, "val: 0 1 2 3 4\ntest: 5 6 7 8 9\n", &path),
              HasSubstr(path + ": the split leaves train or test empty"));
  EXPECT_THAT(split_file_error(dir, "val: 0 1\ntest:\n", &path), HasSubstr("leaves train or test empty"));
  const std::string missing = dir.file("no_such_split.txt");
  EXPECT_THAT(error_of([&] { read_split_file(missing, iota_ids(10)); }), HasSubstr(missing));
}

TEST(SplitFile, WriteReadRoundTrip) {
  TempDir dir;
  const auto ids = iota_ids(100, /*first=*/500);
  const FileSplit s = split_from_seed(ids, 9);
  const std::string path = dir.file("out/split.txt");
  std::filesystem::create_directories(dir.file("out"));
  write_split_file(path, s, "seed 9 split of 100 files");
  const FileSplit r = read_split_file(path, ids);
  EXPECT_EQ(r.val, s.val) << "listed order is preserved";
  EXPECT_EQ(r.test, s.test) << "listed order is preserved";
  EXPECT_EQ(r.train, sorted(s.train)) << "train is the rest, in ascending order";
  EXPECT_EQ(r.source, path);

  std::ifstream in(path);
  std::string first;
  std::getline(in, first);
  EXPECT_EQ(first, "# seed 9 split of 100 files");

  // Writing what was read gives the same file again.
  const std::string again = dir.file("out/again.txt");
  write_split_file(again, r, "seed 9 split of 100 files");
  std::ifstream a(path), b(again);
  std::stringstream sa, sb;
  sa << a.rdbuf();
  sb << b.rdbuf();
  EXPECT_EQ(sa.str(), sb.str());
}

}  // namespace
}  // namespace csipose
