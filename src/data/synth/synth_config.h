#pragma once
// Configuration of the synthetic CSI generator (configs/data/synth_*.yaml). Every field has its
// default here; the YAML may set any of them and nothing else (unknown keys are errors).
#include <cstdint>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace csipose {
class ConfigNode;

/// Activities a synthetic subject performs; each file is one subject x activity x session.
enum class Activity { walk_in_place, wave, arms_raise, squat, jumping_jacks, bend, kick, boxing };
const char* to_string(Activity a);
const std::vector<Activity>& all_activities();

struct SynthCorruption {
  std::vector<int64_t> files;      ///< file ids whose windows get corrupted (as WiFlow files 487-499)
  double window_fraction = 0.3;    ///< fraction of those files' windows corrupted
  double nan_share = 0.5;          ///< of corrupted windows: share with NaN (the rest get |x| = 1e3 spikes; inf for MM-Fi)
};

struct SynthConfig {
  Layout layout = Layout::wiflow;  ///< which real layout to write: wiflow (W,540,20) | mmfi (N,3,114,10)
  uint64_t seed = 1234;            ///< everything below is a function of this seed
  int64_t subjects = 8;            ///< distinct bodies (height, proportions)
  std::vector<Activity> activities = all_activities();
  int64_t sessions = 2;            ///< sessions per subject x activity (position, tempo, style vary)
  int64_t windows_per_file = 40;   ///< WiFlow windows (or MM-Fi frames) per file
  int64_t window_stride = 5;       ///< packets between consecutive window starts (WiFlow)
  double packet_rate_hz = 50.0;    ///< CSI packets per second
  // Radio: a 3-antenna transmitter and receiver on opposite sides of the subject area.
  double carrier_ghz = 5.32;       ///< centre frequency
  double bandwidth_mhz = 40.0;     ///< subcarriers span this band evenly
  int64_t reflectors = 6;          ///< static scatterers (walls, furniture) in the room
  double snr_db = 27.0;            ///< receiver noise relative to the line-of-sight amplitude
  double gain_jitter_db = 0.6;     ///< per-packet, per-receive-chain AGC gain jitter (std, dB)
  double session_gain_db = 0.0;    ///< per-file gain offset, uniform in +-this (tx power / AGC state of a session)
  double body_scatter = 0.7;       ///< gain of the body's own scattered paths (speckle)
  double shadow_depth = 0.55;      ///< max attenuation a body part causes on a path it blocks
  // Camera that produces the labels.
  double focal_px = 1000.0;
  double image_width_px = 1920.0;
  double image_height_px = 1080.0;
  // Subject placement (metres, per file).
  double position_jitter_m = 0.2;  ///< uniform lateral / depth offset of a file's standing spot
  double drift_m = 0.25;           ///< slow wandering of the spot within a session (amplitude)
  SynthCorruption corruption;
  // File-level split written to split.txt (WiFlow) or split.npy (MM-Fi).
  uint64_t split_seed = 42;
  double train_fraction = 0.7;
  double val_fraction = 0.15;

  static SynthConfig from_yaml(const ConfigNode& node);  ///< calls node.finish()
  std::string to_yaml() const;
  int64_t num_files() const { return subjects * static_cast<int64_t>(activities.size()) * sessions; }
};

}  // namespace csipose
