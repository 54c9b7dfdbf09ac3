#include "common/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/check.h"

namespace csipose {
namespace fs = std::filesystem;

void write_file_atomic(const std::string& path, const std::function<void(std::ostream&)>& write) {
  const fs::path target(path);
  if (target.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    CSIPOSE_CHECK(!ec, "cannot create directory ", target.parent_path().string(), ": ", ec.message());
  }
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      CSIPOSE_CHECK(out.good(), "cannot open ", tmp, " for writing: ", std::strerror(errno));
      write(out);
      out.close();  // close() flushes; its failure (disk full, quota) must not pass as success
      CSIPOSE_CHECK(!out.fail(), "write to ", tmp, " failed (disk full?)");
    }
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd >= 0) {
      ::fsync(fd);
      ::close(fd);
    }
    std::error_code ec;
    fs::rename(tmp, target, ec);
    CSIPOSE_CHECK(!ec, "cannot rename ", tmp, " to ", path, ": ", ec.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw;
  }
}

void write_text_atomic(const std::string& path, const std::string& text) {
  write_file_atomic(path, [&](std::ostream& out) { out.write(text.data(), static_cast<std::streamsize>(text.size())); });
}

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  CSIPOSE_CHECK(!fs::is_directory(path, ec), "cannot read ", path, ": it is a directory");
  std::ifstream in(path, std::ios::binary);
  CSIPOSE_CHECK(in.good(), "cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace csipose
