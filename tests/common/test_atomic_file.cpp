// write_file_atomic: parent directories, replacement, and a failed write leaving the old file and
// no temp file behind.
#include "common/atomic_file.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/check.h"
#include "testing.h"

namespace csipose {
namespace {
namespace fs = std::filesystem;

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(AtomicFile, WriteCreatesParentDirectories) {
  testing::TempDir dir;
  const std::string path = dir.file("a/b/c/out.txt");
  write_text_atomic(path, "hello\n");
  EXPECT_EQ(read_text_file(path), "hello\n");
  EXPECT_EQ(entries(dir.file("a/b/c")), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, ReplacesExistingFile) {
  testing::TempDir dir;
  const std::string path = dir.file("out.txt");
  write_text_atomic(path, "a much longer first version\n");
  write_text_atomic(path, "v2");
  EXPECT_EQ(read_text_file(path), "v2");
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"out.txt"});
}

TEST(AtomicFile, StreamWriterAndBinaryBytes) {
  testing::TempDir dir;
  const std::string path = dir.file("bin.dat");
  const std::string bytes = std::string("a\0b\r\n\xff", 6);
  write_file_atomic(path, [&](std::ostream& out) {
    out << "head:";
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  });
  EXPECT_EQ(read_text_file(path), "head:" + bytes);
  write_text_atomic(path, "");
  EXPECT_EQ(read_text_file(path), "");
}

TEST(AtomicFile, ThrowingWriterLeavesOldFileAndNoTemp) {
  testing::TempDir dir;
  const std::string path = dir.file("ckpt.bin");
  write_text_atomic(path, "old contents");
  EXPECT_THROW(write_file_atomic(path,
                                 [](std::ostream& out) {
                                   out << "half of the new";
                                   throw std::runtime_error("writer failed");
                                 }),
               std::runtime_error);
  EXPECT_EQ(read_text_file(path), "old contents");
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"ckpt.bin"});
}

TEST(AtomicFile, ThrowingWriterWithoutOldFileLeavesNothing) {
  testing::TempDir dir;
  const std::string path = dir.file("sub/new.bin");
  EXPECT_THROW(write_file_atomic(path, [](std::ostream&) { throw Error("nope"); }), Error);
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(entries(dir.file("sub")).empty());
}

TEST(AtomicFile, StreamFailureIsReported) {
  testing::TempDir dir;
  const std::string path = dir.file("bad.txt");
  write_text_atomic(path, "old");
  // A writer that leaves the stream failed (as a full disk would) must not replace the file.
  EXPECT_THROW(write_file_atomic(path, [](std::ostream& out) { out.setstate(std::ios::badbit); }), Error);
  EXPECT_EQ(read_text_file(path), "old");
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"bad.txt"});
}

TEST(AtomicFile, TargetIsADirectory) {
  testing::TempDir dir;
  fs::create_directories(dir.file("taken/inner"));
  EXPECT_THROW(write_text_atomic(dir.file("taken"), "x"), Error);
  EXPECT_EQ(entries(dir.path()), std::vector<std::string>{"taken"});
}

TEST(AtomicFile, ParentIsAFile) {
  testing::TempDir dir;
  write_text_atomic(dir.file("file"), "x");
  try {
    write_text_atomic(dir.file("file/child.txt"), "y");
    FAIL() << "expected csipose::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot create directory " + dir.file("file")), std::string::npos)
        << e.what();
  }
}

TEST(AtomicFile, ReadErrorsNameThePath) {
  testing::TempDir dir;
  try {
    read_text_file(dir.file("missing.txt"));
    FAIL() << "expected csipose::Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot open " + dir.file("missing.txt") + ": No such file or directory");
  }
  try {
    read_text_file(dir.path());
    FAIL() << "expected csipose::Error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot read " + dir.path() + ": it is a directory");
  }
}

TEST(AtomicFile, RelativePathWithoutParent) {
  testing::TempDir dir;
  struct RestoreCwd {
    fs::path cwd = fs::current_path();
    ~RestoreCwd() { fs::current_path(cwd); }
  } restore;
  fs::current_path(dir.path());
  write_text_atomic("plain.txt", "here");
  EXPECT_EQ(read_text_file(dir.file("plain.txt")), "here");
}

}  // namespace
}  // namespace csipose
