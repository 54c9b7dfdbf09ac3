#pragma once
// Every checkpoint, array and report is written to a temp file beside the target and renamed over
// it, so a crash at any moment leaves either the old file or the new one, never half of one.
#include <functional>
#include <ostream>
#include <string>

namespace csipose {

/// Writes `path` atomically: `write` fills a stream to `path.tmp.<pid>`, which is flushed, fsynced
/// and renamed over `path`. Parent directories are created. Throws csipose::Error on failure and
/// removes the temp file.
void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write);

/// Convenience: atomically writes the given bytes.
void write_text_atomic(const std::string& path, const std::string& text);

/// Reads a whole file; throws csipose::Error naming the path when it cannot be opened.
std::string read_text_file(const std::string& path);

}  // namespace csipose
