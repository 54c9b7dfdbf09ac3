#include "data/split.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/rng.h"

namespace csipose {

const char* to_string(Split s) {
  switch (s) {
    case Split::train: return "train";
    case Split::val: return "val";
    case Split::test: return "test";
  }
  return "?";
}

Split parse_split(const std::string& text) {
  if (text == "train") return Split::train;
  if (text == "val") return Split::val;
  if (text == "test") return Split::test;
  fail("split: unknown value \"", text, "\"; expected one of: train, val, test");
}

const std::vector<int64_t>& FileSplit::files(Split s) const {
  switch (s) {
    case Split::train: return train;
    case Split::val: return val;
    case Split::test: return test;
  }
  return train;
}

FileSplit split_from_seed(std::vector<int64_t> file_ids, uint64_t seed, double train_fraction,
                          double val_fraction) {
  CSIPOSE_CHECK(train_fraction > 0 && val_fraction >= 0 && train_fraction + val_fraction < 1.0,
                "split fractions must satisfy train > 0, val >= 0, train + val < 1; got ", train_fraction,
                " and ", val_fraction);
  std::sort(file_ids.begin(), file_ids.end());
  CSIPOSE_CHECK(std::adjacent_find(file_ids.begin(), file_ids.end()) == file_ids.end(),
                "split: duplicate file ids");
  CSIPOSE_CHECK(file_ids.size() >= 3, "split: need at least 3 files for train/val/test, got ", file_ids.size());
  Rng rng(seed, /*stream=*/0x5b17);
  rng.shuffle(file_ids);
  const auto n = static_cast<double>(file_ids.size());
  auto n_train = static_cast<size_t>(std::llround(train_fraction * n));
  auto n_val = static_cast<size_t>(std::llround(val_fraction * n));
  n_train = std::max<size_t>(1, std::min(n_train, file_ids.size() - 2));
  n_val = std::max<size_t>(val_fraction > 0 ? 1 : 0, std::min(n_val, file_ids.size() - n_train - 1));
  FileSplit s;
  s.train.assign(file_ids.begin(), file_ids.begin() + static_cast<long>(n_train));
  s.val.assign(file_ids.begin() + static_cast<long>(n_train), file_ids.begin() + static_cast<long>(n_train + n_val));
  s.test.assign(file_ids.begin() + static_cast<long>(n_train + n_val), file_ids.end());
  std::ostringstream src;
  src << "seed " << seed << " (" << std::lround(train_fraction * 100) << "/" << std::lround(val_fraction * 100) << "/"
      << std::lround((1 - train_fraction - val_fraction) * 100) << ")";
  s.source = src.str();
  return s;
}

FileSplit read_split_file(const std::string& path, const std::vector<int64_t>& file_ids) {
  const std::string text = read_text_file(path);
  const std::set<int64_t> known(file_ids.begin(), file_ids.end());
  std::set<int64_t> listed;
  FileSplit s;
  s.source = path;
  bool saw_val = false, saw_test = false;
  std::istringstream lines(text);
  std::string line;
  int lineno = 0;
  while (std::getline(lines, line)) {
    ++lineno;
    const auto hash = line.find('#');
    if (hash != std::string::npos) line = line.substr(0, hash);
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto colon = line.find(':');
    CSIPOSE_CHECK(colon != std::string::npos, path, ":", lineno, ": expected \"val: ids...\" or \"test: ids...\"");
    std::string name = line.substr(0, colon);
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    std::vector<int64_t>* target = nullptr;
    if (name == "val") { target = &s.val; saw_val = true; }
    else if (name == "test") { target = &s.test; saw_test = true; }
    else fail(path, ":", lineno, ": unknown list \"", name, "\"; expected val or test (train is the rest)");
    std::istringstream ids(line.substr(colon + 1));
    std::string tok;
    while (ids >> tok) {
      char* end = nullptr;
      const long long id = std::strtoll(tok.c_str(), &end, 10);
      CSIPOSE_CHECK(end && *end == '\0', path, ":", lineno, ": \"", tok, "\" is not a file id");
      CSIPOSE_CHECK(known.count(id), path, ":", lineno, ": file id ", id, " is not in the dataset (",
                    file_ids.size(), " files)");
      CSIPOSE_CHECK(listed.insert(id).second, path, ":", lineno, ": file id ", id, " is listed twice");
      target->push_back(id);
    }
  }
  CSIPOSE_CHECK(saw_val && saw_test, path, ": needs both a \"val:\" and a \"test:\" line");
  for (int64_t id : file_ids)
    if (!listed.count(id)) s.train.push_back(id);
  std::sort(s.train.begin(), s.train.end());
  CSIPOSE_CHECK(!s.train.empty() && !s.test.empty(), path, ": the split leaves train or test empty");
  return s;
}

void write_split_file(const std::string& path, const FileSplit& split, const std::string& comment) {
  std::ostringstream out;
  out << "# " << comment << "\n# train = every file id not listed below.\n";
  for (Split which : {Split::val, Split::test}) {
    out << to_string(which) << ":";
    for (int64_t id : split.files(which)) out << " " << id;
    out << "\n";
  }
  write_text_atomic(path, out.str());
}

}  // namespace csipose
