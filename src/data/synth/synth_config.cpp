#include "data/synth/synth_config.h"

#include <charconv>
#include <sstream>

#include "common/config_node.h"

namespace csipose {

const char* to_string(Activity a) {
  switch (a) {
    case Activity::walk_in_place: return "walk_in_place";
    case Activity::wave: return "wave";
    case Activity::arms_raise: return "arms_raise";
    case Activity::squat: return "squat";
    case Activity::jumping_jacks: return "jumping_jacks";
    case Activity::bend: return "bend";
    case Activity::kick: return "kick";
    case Activity::boxing: return "boxing";
  }
  return "?";
}

const std::vector<Activity>& all_activities() {
  static const std::vector<Activity> all = {Activity::walk_in_place, Activity::wave, Activity::arms_raise,
                                            Activity::squat, Activity::jumping_jacks, Activity::bend,
                                            Activity::kick, Activity::boxing};
  return all;
}

SynthConfig SynthConfig::from_yaml(const ConfigNode& n) {
  SynthConfig c;
  c.layout = n.get_enum<Layout>("layout", c.layout, {{"wiflow", Layout::wiflow}, {"mmfi", Layout::mmfi}});
  c.seed = static_cast<uint64_t>(n.get_int("seed", static_cast<int64_t>(c.seed), 0));
  c.subjects = n.get_int("subjects", c.subjects, 1, 1000);
  if (n.has("activities")) {
    c.activities.clear();
    const auto names = n.get_list<std::string>("activities");
    if (names.empty()) n.error("activities", "must list at least one activity");
    for (const auto& name : names) {
      bool found = false;
      std::string known;
      for (Activity a : all_activities()) {
        known += std::string(known.empty() ? "" : ", ") + to_string(a);
        if (name == to_string(a)) {
          c.activities.push_back(a);
          found = true;
        }
      }
      if (!found) n.error("activities", "unknown activity \"" + name + "\"; expected one of: " + known);
    }
  }
  c.sessions = n.get_int("sessions", c.sessions, 1, 100);
  c.windows_per_file = n.get_int("windows_per_file", c.windows_per_file, 1, 100000);
  c.window_stride = n.get_int("window_stride", c.window_stride, 1, 1000);
  c.packet_rate_hz = n.get_double("packet_rate_hz", c.packet_rate_hz, 1.0, 10000.0);
  c.carrier_ghz = n.get_double("carrier_ghz", c.carrier_ghz, 0.5, 100.0);
  c.bandwidth_mhz = n.get_double("bandwidth_mhz", c.bandwidth_mhz, 1.0, 2000.0);
  c.reflectors = n.get_int("reflectors", c.reflectors, 0, 64);
  c.snr_db = n.get_double("snr_db", c.snr_db, -10.0, 100.0);
  c.gain_jitter_db = n.get_double("gain_jitter_db", c.gain_jitter_db, 0.0, 10.0);
  c.session_gain_db = n.get_double("session_gain_db", c.session_gain_db, 0.0, 20.0);
  c.body_scatter = n.get_double("body_scatter", c.body_scatter, 0.0, 100.0);
  c.shadow_depth = n.get_double("shadow_depth", c.shadow_depth, 0.0, 0.95);
  c.focal_px = n.get_double("focal_px", c.focal_px, 10.0, 1e5);
  c.image_width_px = n.get_double("image_width_px", c.image_width_px, 16.0, 1e5);
  c.image_height_px = n.get_double("image_height_px", c.image_height_px, 16.0, 1e5);
  c.position_jitter_m = n.get_double("position_jitter_m", c.position_jitter_m, 0.0, 1.0);
  c.drift_m = n.get_double("drift_m", c.drift_m, 0.0, 1.0);
  if (n.has("corruption")) {
    const ConfigNode k = n.child("corruption");
    c.corruption.files = k.get_list<int64_t>("files", {});
    c.corruption.window_fraction = k.get_double("window_fraction", c.corruption.window_fraction, 0.0, 1.0);
    c.corruption.nan_share = k.get_double("nan_share", c.corruption.nan_share, 0.0, 1.0);
    for (int64_t f : c.corruption.files)
      if (f < 0 || f >= c.num_files())
        k.error("files", "file id " + std::to_string(f) + " is out of range 0.." + std::to_string(c.num_files() - 1));
  }
  if (n.has("split")) {
    const ConfigNode s = n.child("split");
    c.split_seed = static_cast<uint64_t>(s.get_int("seed", static_cast<int64_t>(c.split_seed), 0));
    c.train_fraction = s.get_double("train", c.train_fraction, 0.05, 0.95);
    c.val_fraction = s.get_double("val", c.val_fraction, 0.0, 0.9);
    if (c.train_fraction + c.val_fraction >= 1.0) s.error("val", "train + val must be < 1 (test takes the rest)");
  }
  if (c.num_files() < 3) n.error("subjects", "subjects x activities x sessions must give at least 3 files (train/val/test)");
  n.finish();
  return c;
}

namespace {
/// The shortest text that reads back as the same double: the resolved config in synth_meta.json
/// must regenerate the same bytes (the stream default of 6 digits rounded 0.123456789 to 0.123457).
std::string num(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}
}  // namespace

std::string SynthConfig::to_yaml() const {
  std::ostringstream o;
  o << "layout: " << csipose::to_string(layout) << "\nseed: " << seed << "\nsubjects: " << subjects << "\nactivities: [";
  for (size_t i = 0; i < activities.size(); ++i) o << (i ? ", " : "") << csipose::to_string(activities[i]);
  o << "]\nsessions: " << sessions << "\nwindows_per_file: " << windows_per_file << "\nwindow_stride: " << window_stride
    << "\npacket_rate_hz: " << num(packet_rate_hz) << "\ncarrier_ghz: " << num(carrier_ghz)
    << "\nbandwidth_mhz: " << num(bandwidth_mhz) << "\nreflectors: " << reflectors << "\nsnr_db: " << num(snr_db)
    << "\ngain_jitter_db: " << num(gain_jitter_db) << "\nsession_gain_db: " << num(session_gain_db) << "\nbody_scatter: " << num(body_scatter)
    << "\nshadow_depth: " << num(shadow_depth) << "\nfocal_px: " << num(focal_px)
    << "\nimage_width_px: " << num(image_width_px) << "\nimage_height_px: " << num(image_height_px)
    << "\nposition_jitter_m: " << num(position_jitter_m) << "\ndrift_m: " << num(drift_m)
    << "\ncorruption:\n  files: [";
  for (size_t i = 0; i < corruption.files.size(); ++i) o << (i ? ", " : "") << corruption.files[i];
  o << "]\n  window_fraction: " << num(corruption.window_fraction) << "\n  nan_share: " << num(corruption.nan_share)
    << "\nsplit:\n  seed: " << split_seed << "\n  train: " << num(train_fraction) << "\n  val: " << num(val_fraction) << "\n";
  return o.str();
}

}  // namespace csipose
