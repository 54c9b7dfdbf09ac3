#pragma once
// File-level splits. Windows of one file (one subject doing one activity in one session) overlap
// in time, so splitting by window would leak; every split here assigns whole files.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace csipose {

enum class Split { train, val, test };
const char* to_string(Split s);
Split parse_split(const std::string& text);  ///< "train" | "val" | "test"

struct FileSplit {
  std::vector<int64_t> train, val, test;  ///< file ids, in assignment order
  std::string source;                     ///< "seed 42 (70/15/15)" or the split file's path
  const std::vector<int64_t>& files(Split s) const;
};

/// Shuffles the file ids with csipose::Rng(seed) and cuts train/val/test by the fractions
/// (rounded; test takes the rest). The order is csipose's own, not Python's random.shuffle: to
/// reproduce a published split, use its list file.
FileSplit split_from_seed(std::vector<int64_t> file_ids, uint64_t seed, double train_fraction = 0.7,
                          double val_fraction = 0.15);

/// Reads a split list file: lines "val: 1 2 3" and "test: 4 5" ('#' comments); train is every id
/// in `file_ids` not listed. Ids listed that are not in file_ids, or listed twice, are errors.
FileSplit read_split_file(const std::string& path, const std::vector<int64_t>& file_ids);
/// Writes the same format (val and test lines), atomically.
void write_split_file(const std::string& path, const FileSplit& split, const std::string& comment);

}  // namespace csipose
