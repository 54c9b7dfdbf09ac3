#include "cli/commands.h"
#include "common/check.h"
namespace csipose::cli {
int score(const Args&) { fail("score: in progress"); }
}  // namespace csipose::cli
