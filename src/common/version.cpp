#include "common/version.h"

#include "git_sha.h"  // generated at build time by cmake/git_sha.cmake

namespace csipose {

const char* version() { return CSIPOSE_VERSION; }
const char* git_sha() { return CSIPOSE_GIT_SHA; }

}  // namespace csipose
