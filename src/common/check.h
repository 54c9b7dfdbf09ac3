#pragma once
// Errors: library code throws csipose::Error with what failed, the offending value and what was
// expected; only main() turns it into a one-line message and a non-zero exit code.
#include <sstream>
#include <stdexcept>
#include <string>

namespace csipose {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append(os, rest...);
}
}  // namespace detail

/// Concatenates the streamable parts into one message.
template <typename... Parts>
std::string str_cat(const Parts&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  return os.str();
}

template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  throw Error(str_cat(parts...));
}

}  // namespace csipose

/// CSIPOSE_CHECK(cond, parts...): throws csipose::Error(parts...) when cond is false.
#define CSIPOSE_CHECK(cond, ...)                   \
  do {                                             \
    if (!(cond)) ::csipose::fail(__VA_ARGS__);     \
  } while (0)
