#pragma once
// The synthetic CSI dataset generator: subjects (Body) x activities x sessions (Motion) are
// simulated packet by packet through the RadioScene, windowed, labelled by the Camera, and written
// in the real WiFlow or MM-Fi layout. Deterministic: file f only draws from Rng(seed, stream(f)),
// so the bytes do not depend on thread count or order.
#include <cstdint>
#include <string>

#include "data/synth/synth_config.h"

namespace csipose {

struct SynthSummary {
  std::string out_dir;
  int64_t files = 0;
  int64_t windows = 0;          ///< WiFlow windows or MM-Fi frames
  int64_t corrupted = 0;        ///< windows / frames with injected corruption
  double seconds = 0.0;
};

/// Generates the dataset into `out_dir` (created; existing dataset files are replaced atomically).
/// `threads` <= 0 uses the hardware concurrency.
SynthSummary generate_synthetic(const SynthConfig& config, const std::string& out_dir, int threads = 0);

}  // namespace csipose
