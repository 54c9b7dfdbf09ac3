#pragma once
// What built this binary: the csipose version and the git commit of the source tree at build time
// ("<sha>-dirty" when it had uncommitted changes, "unknown" outside a git checkout). Run
// directories and reports record both.

namespace csipose {

const char* version();
const char* git_sha();

}  // namespace csipose
