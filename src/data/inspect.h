#pragma once
// `csipose data inspect`: what a dataset holds, as a table for people and JSON for machines.
#include <string>

#include "common/json.h"
#include "data/dataset.h"

namespace csipose {

/// Sizes, split (files / windows / corrupted / clean per split), input value statistics over clean
/// windows, label ranges and the declared MetricSpec.
Json inspect_dataset(const PoseDataset& ds);
/// The same as aligned text.
std::string format_inspection(const Json& report);

}  // namespace csipose
