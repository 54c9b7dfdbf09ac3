#include "data/synth/generator.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <atomic>
#include <mutex>
#include <thread>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/json.h"
#include "common/progress.h"
#include "common/rng.h"
#include "data/npy.h"
#include "data/split.h"
#include "data/synth/channel.h"
#include "data/synth/skeleton.h"

namespace csipose {
namespace fs = std::filesystem;

namespace {

// Rng stream ids: one namespace per purpose so adding a purpose never shifts another's numbers.
constexpr uint64_t kRoomStream = 1;
constexpr uint64_t kSubjectStream = 1000;
constexpr uint64_t kFileStream = 1000000;
constexpr uint64_t kNoiseStream = 2000000;
constexpr uint64_t kCorruptStream = 3000000;

struct Geometry {
  int num_tx, num_rx, num_subcarriers, packets_per_window, joints;
};

Geometry geometry_for(Layout layout) {
  // WiFlow: 3 x 3 links x 60 subcarriers = 540 features, 20 packets per window, 15 joints.
  // MM-Fi: 1 x 3 links x 114 subcarriers, 10 packets per frame, 17 joints.
  if (layout == Layout::wiflow) return {3, 3, 60, 20, 15};
  return {1, 3, 114, 10, 17};
}

struct FileInfo {
  int64_t id, subject, session;
  Activity activity;
  Body body;
  Motion motion;
};

}  // namespace

SynthSummary generate_synthetic(const SynthConfig& cfg, const std::string& out_dir, int threads) {
  const auto t_start = std::chrono::steady_clock::now();
  const Geometry g = geometry_for(cfg.layout);
  const int64_t num_files = cfg.num_files();
  const int64_t per_file = cfg.windows_per_file;
  const int64_t stride = cfg.layout == Layout::wiflow ? cfg.window_stride : g.packets_per_window;
  const int64_t packets_per_file = (per_file - 1) * stride + g.packets_per_window;
  const int64_t num_windows = num_files * per_file;
  const int num_links = g.num_tx * g.num_rx;
  const int64_t features = static_cast<int64_t>(num_links) * g.num_subcarriers;
  const int64_t window_elems = features * g.packets_per_window;

  Rng room_rng(cfg.seed, kRoomStream);
  const std::vector<double> heights = {0.55, 1.05, 1.55};
  const RadioScene scene = RadioScene::make(cfg, g.num_tx == 1 ? std::vector<double>{1.05} : heights, heights,
                                            g.num_subcarriers, room_rng);
  const Camera camera{{0.0, 1.0, 0.0}, cfg.focal_px, cfg.image_width_px / 2, cfg.image_height_px / 2};

  std::vector<FileInfo> files;
  for (int64_t s = 0; s < cfg.subjects; ++s) {
    Rng subject_rng(cfg.seed, kSubjectStream + static_cast<uint64_t>(s));
    const Body body = Body::sample(subject_rng);
    for (size_t a = 0; a < cfg.activities.size(); ++a) {
      for (int64_t e = 0; e < cfg.sessions; ++e) {
        const int64_t id = static_cast<int64_t>(files.size());
        Rng file_rng(cfg.seed, kFileStream + static_cast<uint64_t>(id));
        files.push_back({id, s, e, cfg.activities[a], body, Motion::sample(cfg.activities[a], cfg.position_jitter_m, file_rng, cfg.drift_m)});
      }
    }
  }

  // Output buffers in the final layouts.
  std::vector<float> x(static_cast<size_t>(num_windows * window_elems));
  std::vector<float> y(static_cast<size_t>(num_windows * g.joints * 2));

  Progress progress("synth", num_files, "files");
  auto simulate_file = [&](const FileInfo& f) {
    Rng noise(cfg.seed, kNoiseStream + static_cast<uint64_t>(f.id));
    std::vector<float> packets(static_cast<size_t>(packets_per_file * features));
    const double t0 = noise.uniform(0.0, 10.0);
    const float session_gain = static_cast<float>(std::pow(10.0, noise.uniform(-cfg.session_gain_db, cfg.session_gain_db) / 20.0));
    for (int64_t p = 0; p < packets_per_file; ++p) {
      const double t = t0 + static_cast<double>(p) / cfg.packet_rate_hz;
      float* pk = packets.data() + p * features;
      csi_amplitude(scene, body_blobs(pose_at(f.body, f.motion, t)), noise, pk);
      for (int64_t c = 0; c < features; ++c) pk[c] *= session_gain;
    }
    for (int64_t w = 0; w < per_file; ++w) {
      const int64_t wi = f.id * per_file + w;
      const int64_t first = w * stride;
      float* xw = x.data() + wi * window_elems;
      for (int64_t tt = 0; tt < g.packets_per_window; ++tt) {
        const float* pk = packets.data() + (first + tt) * features;
        // WiFlow: (540, 20) = [feature][time]; MM-Fi: (3, 114, 10) = [rx][subcarrier][time]: both
        // are feature-major with time last, with feature = link * subcarriers + k.
        for (int64_t c = 0; c < features; ++c) xw[c * g.packets_per_window + tt] = pk[c];
      }
      // The label is the pose at the window's last packet.
      const double t_label = t0 + static_cast<double>(first + g.packets_per_window - 1) / cfg.packet_rate_hz;
      const Pose3D pose = pose_at(f.body, f.motion, t_label);
      float* yw = y.data() + wi * g.joints * 2;
      for (int j = 0; j < g.joints; ++j) {
        const int src = cfg.layout == Layout::wiflow ? j : kCocoFromJoints[static_cast<size_t>(j)];
        const auto uv = camera.project(pose[static_cast<size_t>(src)]);
        if (cfg.layout == Layout::wiflow) {  // pixels / 1000
          yw[2 * j] = static_cast<float>(uv[0] / 1000.0);
          yw[2 * j + 1] = static_cast<float>(uv[1] / 1000.0);
        } else {  // normalized image coordinates
          yw[2 * j] = static_cast<float>(uv[0] / cfg.image_width_px);
          yw[2 * j + 1] = static_cast<float>(uv[1] / cfg.image_height_px);
        }
      }
    }
  };

  const int n_threads = std::max(1, threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<int64_t> done_per_thread(static_cast<size_t>(n_threads), 0);
  {
    std::vector<std::thread> pool;
    std::atomic<int64_t> next{0};
    std::mutex progress_mutex;
    for (int tix = 0; tix < n_threads; ++tix) {
      pool.emplace_back([&] {
        for (int64_t i = next++; i < num_files; i = next++) {
          simulate_file(files[static_cast<size_t>(i)]);
          std::lock_guard<std::mutex> lock(progress_mutex);
          progress.advance(1);
        }
      });
    }
    for (auto& t : pool) t.join();
  }
  progress.finish();

  // Corruption injection (as in WiFlow files 487-499): NaN bursts or huge spikes in chosen windows.
  // MM-Fi's loader repairs (and flags) only non-finite values, so its spikes are inf: a finite 1e3
  // would pass as a clean frame and flatten it under the per-frame min-max normalization.
  const float spike = cfg.layout == Layout::wiflow ? 1e3f : std::numeric_limits<float>::infinity();
  int64_t corrupted = 0;
  for (int64_t fid : cfg.corruption.files) {
    Rng crng(cfg.seed, kCorruptStream + static_cast<uint64_t>(fid));
    for (int64_t w = 0; w < per_file; ++w) {
      if (crng.uniform() >= cfg.corruption.window_fraction) continue;
      float* xw = x.data() + (fid * per_file + w) * window_elems;
      const bool use_nan = crng.uniform() < cfg.corruption.nan_share;
      const int64_t start = static_cast<int64_t>(crng.below(static_cast<uint64_t>(window_elems)));
      const int64_t len = 1 + static_cast<int64_t>(crng.below(64));
      for (int64_t k = start; k < std::min(window_elems, start + len); ++k)
        xw[k] = use_nan ? std::numeric_limits<float>::quiet_NaN() : (crng.uniform() < 0.5 ? -spike : spike);
      ++corrupted;
    }
  }

  // File-level split.
  std::vector<int64_t> ids(static_cast<size_t>(num_files));
  for (int64_t i = 0; i < num_files; ++i) ids[static_cast<size_t>(i)] = i;
  const FileSplit split = split_from_seed(ids, cfg.split_seed, cfg.train_fraction, cfg.val_fraction);

  fs::create_directories(out_dir);
  const fs::path dir(out_dir);
  std::vector<int64_t> window_file(static_cast<size_t>(num_windows)), window_frame(static_cast<size_t>(num_windows));
  for (int64_t i = 0; i < num_windows; ++i) {
    window_file[static_cast<size_t>(i)] = i / per_file;
    window_frame[static_cast<size_t>(i)] = i;  // one label frame per window
  }
  if (cfg.layout == Layout::wiflow) {
    write_npy((dir / "csi_windows.npy").string(), DType::float32, {num_windows, features, g.packets_per_window}, x.data());
    write_npy((dir / "all_keypoints.npy").string(), DType::float32, {num_windows, g.joints, 2}, y.data());
    write_npz((dir / "window_info.npz").string(),
              {{"window_to_file", DType::int64, {num_windows}, window_file.data()},
               {"window_to_frame", DType::int64, {num_windows}, window_frame.data()}});
    std::vector<int64_t> ranges;
    for (int64_t f = 0; f < num_files; ++f) {
      ranges.push_back(f * per_file);
      ranges.push_back((f + 1) * per_file);
    }
    write_npz((dir / "file_info.npz").string(), {{"file_ids", DType::int64, {num_files}, ids.data()},
                                                 {"window_ranges", DType::int64, {num_files, 2}, ranges.data()}});
    write_split_file((dir / "split.txt").string(), split,
                     "csipose synthetic dataset: file-level split, " + split.source);
  } else {
    write_npy((dir / "X.npy").string(), DType::float32, {num_windows, g.num_rx, g.num_subcarriers, g.packets_per_window}, x.data());
    write_npy((dir / "Y.npy").string(), DType::float32, {num_windows, g.joints, 2}, y.data());
    std::vector<int64_t> split_code(static_cast<size_t>(num_windows));
    std::vector<int64_t> code_of_file(static_cast<size_t>(num_files));
    for (int64_t id : split.val) code_of_file[static_cast<size_t>(id)] = 2;
    for (int64_t id : split.test) code_of_file[static_cast<size_t>(id)] = 1;
    for (int64_t i = 0; i < num_windows; ++i) split_code[static_cast<size_t>(i)] = code_of_file[static_cast<size_t>(i / per_file)];
    write_npy((dir / "split.npy").string(), DType::int64, {num_windows}, split_code.data());
    write_npy((dir / "groups.npy").string(), DType::int64, {num_windows}, window_file.data());
  }

  // Provenance: the resolved config and what each file is.
  Json meta = Json::object();
  meta.set("generator", "csipose synthetic CSI v1");
  meta.set("layout", to_string(cfg.layout));
  meta.set("config_yaml", cfg.to_yaml());
  meta.set("windows", num_windows).set("files", num_files).set("corrupted_windows", corrupted);
  meta.set("split", split.source);
  Json file_list = Json::array();
  for (const auto& f : files) {
    file_list.push(Json::object()
                       .set("file_id", f.id)
                       .set("subject", f.subject)
                       .set("activity", to_string(f.activity))
                       .set("session", f.session)
                       .set("height_m", f.body.height)
                       .set("freq_hz", f.motion.freq_hz)
                       .set("spot_x_m", f.motion.spot.x)
                       .set("spot_z_m", f.motion.spot.z));
  }
  meta.set("file_table", file_list);
  write_text_atomic((dir / "synth_meta.json").string(), meta.dump(2) + "\n");

  SynthSummary sum;
  sum.out_dir = out_dir;
  sum.files = num_files;
  sum.windows = num_windows;
  sum.corrupted = corrupted;
  sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return sum;
}

}  // namespace csipose
