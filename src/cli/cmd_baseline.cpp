#include "cli/commands.h"
#include "common/check.h"
namespace csipose::cli {
int baseline(const Args&) { fail("baseline: in progress"); }
}  // namespace csipose::cli
