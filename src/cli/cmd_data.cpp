#include "cli/commands.h"
#include "common/check.h"
namespace csipose::cli {
int data_synth(const Args&) { fail("data synth: in progress"); }
int data_inspect(const Args&) { fail("data inspect: in progress"); }
}  // namespace csipose::cli
