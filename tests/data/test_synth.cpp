// The synthetic CSI generator: deterministic bytes, the two real layouts (read back by the real
// loaders), corruption that the loaders flag, a physically sane skeleton and camera, a channel
// that is static without a body and shadowed by one, and config errors that name their key.
// Nothing here pins a calibrated physics constant: the checks hold for any calibration.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/config_node.h"
#include "common/rng.h"
#include "data/dataset.h"
#include "data/npy.h"
#include "data/npy_torch.h"
#include "data/synth/channel.h"
#include "data/synth/generator.h"
#include "data/synth/skeleton.h"
#include "data/synth/synth_config.h"
#include "testing.h"

namespace csipose {
namespace {
namespace fs = std::filesystem;
using testing::TempDir;

// 2 subjects x 2 activities x 2 sessions = 8 files of 6 windows: 6 train, 1 val, 1 test files.
constexpr int64_t kFiles = 8;
constexpr int64_t kPerFile = 6;

std::string tiny_yaml(const std::string& extra = "") {
  return "subjects: 2\nactivities: [wave, squat]\nsessions: 2\nwindows_per_file: 6\n" + extra;
}

SynthConfig tiny_config(const std::string& extra = "") {
  return SynthConfig::from_yaml(ConfigNode::load_string(tiny_yaml(extra), "<test>"));
}

/// Every regular file of a directory (name -> bytes).
std::map<std::string, std::string> read_all_files(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file()) out[e.path().filename().string()] = read_text_file(e.path().string());
  return out;
}

std::string error_of(const std::string& yaml) {
  try {
    SynthConfig::from_yaml(ConfigNode::load_string(yaml, "<test>"));
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

// ---- determinism ---------------------------------------------------------------------------------

TEST(SynthGenerator, SameBytesForAnyThreadCount) {
  const SynthConfig cfg = tiny_config("corruption:\n  files: [3]\n");
  TempDir one, two;
  const SynthSummary s1 = generate_synthetic(cfg, one.path(), /*threads=*/1);
  const SynthSummary s2 = generate_synthetic(cfg, two.path(), /*threads=*/2);
  EXPECT_EQ(s1.files, kFiles);
  EXPECT_EQ(s1.windows, kFiles * kPerFile);
  EXPECT_EQ(s1.corrupted, s2.corrupted);
  const auto a = read_all_files(one.path()), b = read_all_files(two.path());
  ASSERT_EQ(a.size(), b.size());
  for (const char* name :
       {"csi_windows.npy", "all_keypoints.npy", "window_info.npz", "file_info.npz", "split.txt", "synth_meta.json"})
    EXPECT_EQ(a.count(name), 1u) << name;
  for (const auto& kv : a) {
    ASSERT_EQ(b.count(kv.first), 1u) << kv.first;
    EXPECT_TRUE(kv.second == b.at(kv.first)) << kv.first << " differs between 1 and 2 threads";
  }
}

TEST(SynthGenerator, SeedChangesTheData) {
  TempDir one, two;
  generate_synthetic(tiny_config("seed: 1\n"), one.path(), 2);
  generate_synthetic(tiny_config("seed: 2\n"), two.path(), 2);
  EXPECT_NE(read_text_file(one.file("csi_windows.npy")), read_text_file(two.file("csi_windows.npy")));
  EXPECT_NE(read_text_file(one.file("all_keypoints.npy")), read_text_file(two.file("all_keypoints.npy")));
}

// ---- layouts -------------------------------------------------------------------------------------

TEST(SynthGenerator, WiFlowLayoutLoads) {
  TempDir dir;
  generate_synthetic(tiny_config(), dir.path(), 2);
  const PoseDataset ds = open_dataset(dir.path());
  EXPECT_EQ(ds.layout, Layout::wiflow);
  ASSERT_EQ(ds.x.sizes(), (std::vector<int64_t>{kFiles * kPerFile, 540, 20}));
  ASSERT_EQ(ds.y.sizes(), (std::vector<int64_t>{kFiles * kPerFile, 15, 2}));
  EXPECT_EQ(ds.num_joints(), 15);
  EXPECT_EQ(ds.spec, metric_spec_for("wiflow"));
  EXPECT_TRUE(torch::isfinite(ds.x).all().item<bool>());
  EXPECT_GT(ds.x.min().item<float>(), 0.0f);  // amplitudes
  EXPECT_FALSE(ds.corrupted.any().item<bool>()) << "no corruption was configured";

  // Windows of file f are [f * 6, (f + 1) * 6), in file_info, window_info and the loaded dataset.
  auto finfo = read_npz(dir.file("file_info.npz"));
  const torch::Tensor ids = to_tensor(finfo.at("file_ids")), ranges = to_tensor(finfo.at("window_ranges"));
  ASSERT_EQ(ranges.sizes(), (std::vector<int64_t>{kFiles, 2}));
  for (int64_t f = 0; f < kFiles; ++f) {
    EXPECT_EQ(ids[f].item<int64_t>(), f);
    EXPECT_EQ(ranges[f][0].item<int64_t>(), f * kPerFile);
    EXPECT_EQ(ranges[f][1].item<int64_t>(), (f + 1) * kPerFile);
  }
  for (int64_t i = 0; i < ds.size(); ++i) EXPECT_EQ(ds.file_id[i].item<int64_t>(), i / kPerFile);

  // split.txt has val and test lines; the loader uses it, and every file is in exactly one split.
  const std::string split_txt = read_text_file(dir.file("split.txt"));
  EXPECT_NE(split_txt.find("\nval:"), std::string::npos) << split_txt;
  EXPECT_NE(split_txt.find("\ntest:"), std::string::npos) << split_txt;
  EXPECT_EQ(ds.split.source, dir.file("split.txt"));
  EXPECT_FALSE(ds.split.val.empty());
  EXPECT_FALSE(ds.split.test.empty());
  std::set<int64_t> all;
  for (Split s : {Split::train, Split::val, Split::test})
    for (int64_t id : ds.split.files(s)) EXPECT_TRUE(all.insert(id).second) << "file " << id << " twice";
  EXPECT_EQ(all.size(), static_cast<size_t>(kFiles));
  for (int64_t i = 0; i < ds.size(); ++i)
    EXPECT_EQ(ds.split_of_window[static_cast<size_t>(i)],
              ds.split_of_window[static_cast<size_t>(i / kPerFile * kPerFile)]);
}

TEST(SynthGenerator, MmfiLayoutLoads) {
  TempDir dir;
  const SynthSummary sum = generate_synthetic(tiny_config("layout: mmfi\n"), dir.path(), 2);
  EXPECT_EQ(sum.windows, kFiles * kPerFile);
  EXPECT_FALSE(fs::exists(dir.file("csi_windows.npy")));
  const torch::Tensor x = load_npy(dir.file("X.npy")), y = load_npy(dir.file("Y.npy"));
  const torch::Tensor split = load_npy(dir.file("split.npy")), groups = load_npy(dir.file("groups.npy"));
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{kFiles * kPerFile, 3, 114, 10}));
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{kFiles * kPerFile, 17, 2}));
  ASSERT_EQ(split.sizes(), (std::vector<int64_t>{kFiles * kPerFile}));
  ASSERT_EQ(groups.sizes(), (std::vector<int64_t>{kFiles * kPerFile}));
  EXPECT_EQ(x.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::isfinite(x).all().item<bool>());
  // Normalized image coordinates: the subject stands well inside the frame.
  EXPECT_GT(y.min().item<float>(), -0.05f);
  EXPECT_LT(y.max().item<float>(), 1.05f);

  // split.npy: 0 train, 1 test, 2 val; one code per file (groups.npy) and all three present.
  std::set<int64_t> codes;
  for (int64_t i = 0; i < split.size(0); ++i) {
    const int64_t code = split[i].item<int64_t>();
    codes.insert(code);
    EXPECT_EQ(groups[i].item<int64_t>(), i / kPerFile);
    EXPECT_EQ(code, split[i / kPerFile * kPerFile].item<int64_t>()) << "frame " << i;
  }
  EXPECT_EQ(codes, (std::set<int64_t>{0, 1, 2}));

  const PoseDataset ds = open_dataset(dir.path());
  EXPECT_EQ(ds.layout, Layout::mmfi);
  EXPECT_EQ(ds.spec, metric_spec_for("mmfi"));
  EXPECT_FALSE(ds.corrupted.any().item<bool>());
  EXPECT_EQ(ds.split.train.size() + ds.split.val.size() + ds.split.test.size(), static_cast<size_t>(kFiles));
  EXPECT_FALSE(ds.split.val.empty());
  EXPECT_FALSE(ds.split.test.empty());
}

// ---- corruption ----------------------------------------------------------------------------------

/// Generates with corruption in files {1, 5}; the loader must flag windows there and nowhere else,
/// as many as the generator reports.
void check_corruption(const std::string& layout, double fraction, double nan_share) {
  SCOPED_TRACE(layout + " window_fraction " + std::to_string(fraction) + " nan_share " + std::to_string(nan_share));
  TempDir dir;
  const SynthConfig cfg = tiny_config("layout: " + layout + "\ncorruption:\n  files: [1, 5]\n  window_fraction: " +
                                      std::to_string(fraction) + "\n  nan_share: " + std::to_string(nan_share) + "\n");
  const SynthSummary sum = generate_synthetic(cfg, dir.path(), 2);
  const PoseDataset ds = open_dataset(dir.path());
  int64_t flagged = 0;
  for (int64_t i = 0; i < ds.size(); ++i) {
    const bool bad = ds.corrupted[i].item<bool>();
    const int64_t file = i / kPerFile;
    if (file != 1 && file != 5) {
      EXPECT_FALSE(bad) << "window " << i << " of clean file " << file;
    }
    if (fraction == 1.0 && (file == 1 || file == 5)) {
      EXPECT_TRUE(bad) << "window " << i << " of file " << file;
    }
    flagged += bad;
  }
  EXPECT_EQ(flagged, sum.corrupted);
  if (fraction == 1.0) {
    EXPECT_EQ(sum.corrupted, 2 * kPerFile);
  }
  // The loader repaired what it flagged.
  EXPECT_TRUE(torch::isfinite(ds.x).all().item<bool>());
}

TEST(SynthGenerator, CorruptionIsFlaggedByTheLoaders) {
  for (const char* layout : {"wiflow", "mmfi"}) {
    check_corruption(layout, 1.0, 0.5);
    check_corruption(layout, 1.0, 0.0);  // spikes only
    check_corruption(layout, 1.0, 1.0);  // NaN only
    check_corruption(layout, 0.5, 0.5);
  }
}

// ---- skeleton ------------------------------------------------------------------------------------

struct Subject {
  Body body;
  Motion motion;
};

/// Three bodies x two sessions per activity.
std::vector<Subject> subjects_for(Activity a) {
  std::vector<Subject> out;
  for (uint64_t s = 0; s < 3; ++s) {
    Rng body_rng(7, s);
    const Body body = Body::sample(body_rng);
    for (uint64_t e = 0; e < 2; ++e) {
      Rng motion_rng(7, 100 + 10 * s + e);
      out.push_back({body, Motion::sample(a, 0.35, motion_rng)});
    }
  }
  return out;
}

double dist(Vec3 a, Vec3 b) { return norm(a - b); }

TEST(SynthSkeleton, BonesKeepTheirLengths) {
  for (Activity a : all_activities()) {
    for (const auto& s : subjects_for(a)) {
      const Body& b = s.body;
      for (int i = 0; i < 400; ++i) {
        const double t = 0.025 * i;
        const Pose3D j = pose_at(b, s.motion, t);
        SCOPED_TRACE(std::string(to_string(a)) + " t=" + std::to_string(t));
        EXPECT_NEAR(dist(j[8], j[1]), b.torso, 1e-9);
        EXPECT_NEAR(dist(j[1], j[2]), b.shoulder_half, 1e-9);
        EXPECT_NEAR(dist(j[1], j[5]), b.shoulder_half, 1e-9);
        EXPECT_NEAR(dist(j[8], j[9]), b.hip_half, 1e-9);
        EXPECT_NEAR(dist(j[8], j[12]), b.hip_half, 1e-9);
        EXPECT_NEAR(dist(j[2], j[3]), b.upper_arm, 1e-9);
        EXPECT_NEAR(dist(j[5], j[6]), b.upper_arm, 1e-9);
        EXPECT_NEAR(dist(j[3], j[4]), b.forearm, 1e-9);
        EXPECT_NEAR(dist(j[6], j[7]), b.forearm, 1e-9);
        EXPECT_NEAR(dist(j[9], j[10]), b.thigh, 1e-9);
        EXPECT_NEAR(dist(j[12], j[13]), b.thigh, 1e-9);
        EXPECT_NEAR(dist(j[10], j[11]), b.shin, 1e-9);
        EXPECT_NEAR(dist(j[13], j[14]), b.shin, 1e-9);
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST(SynthSkeleton, FeetOnTheFloorHeadUp) {
  for (Activity a : all_activities()) {
    for (const auto& s : subjects_for(a)) {
      for (int i = 0; i < 400; ++i) {
        const double t = 0.025 * i;
        const Pose3D j = pose_at(s.body, s.motion, t);
        SCOPED_TRACE(std::string(to_string(a)) + " t=" + std::to_string(t));
        const double lower_ankle = std::min(j[11].y, j[14].y);
        const double ankle_height = s.motion.spot.y + s.body.ankle;
        if (a == Activity::jumping_jacks)  // the only activity that leaves the floor
          EXPECT_GE(lower_ankle, ankle_height - 1e-9);
        else
          EXPECT_NEAR(lower_ankle, ankle_height, 1e-9);
        for (int k = 0; k < kNumJoints3D; ++k)
          EXPECT_GT(j[static_cast<size_t>(k)].y, 0.0) << "joint " << k << " below the floor";
        if (a != Activity::bend) {
          EXPECT_GT(j[0].y, j[1].y) << "nose below the neck";
        }
        // The head stays on the shoulders: nose and eyes within a head's reach of the neck.
        EXPECT_LT(dist(j[0], j[1]), s.body.neck + s.body.head);
        if (::testing::Test::HasFailure()) return;
      }
    }
  }
}

TEST(SynthSkeleton, PoseIsContinuousInTime) {
  // 1 ms apart, no joint may move more than 2 cm (20 m/s; real fists stay below ~10 m/s).
  for (Activity a : all_activities()) {
    for (const auto& s : subjects_for(a)) {
      for (int i = 0; i < 10000; ++i) {
        const double t = 0.001 * i;
        const Pose3D p = pose_at(s.body, s.motion, t), q = pose_at(s.body, s.motion, t + 0.001);
        for (int k = 0; k < kNumJoints3D; ++k) {
          const double d = dist(p[static_cast<size_t>(k)], q[static_cast<size_t>(k)]);
          ASSERT_LT(d, 0.02) << to_string(a) << " joint " << k << " jumps " << d << " m at t=" << t;
        }
      }
    }
  }
}

TEST(SynthSkeleton, RightSideAppearsOnImageLeft) {
  // Facing the camera (yaw 0) the subject's right shoulder / hip is on the left of the image.
  Rng rng(3, 0);
  const Body body = Body::sample(rng);
  Motion m = Motion::sample(Activity::wave, 0.0, rng);
  m.yaw = 0.0;
  const Camera cam;
  const Pose3D j = pose_at(body, m, 0.3);
  EXPECT_LT(cam.project(j[2])[0], cam.project(j[5])[0]);
  EXPECT_LT(cam.project(j[9])[0], cam.project(j[12])[0]);
  EXPECT_LT(cam.project(j[0])[1], cam.project(j[8])[1]);  // head above the hips: smaller v
  // The nose faces the camera: closer (smaller z) than the neck.
  EXPECT_LT(j[0].z, j[1].z);
}

TEST(SynthCamera, Projection) {
  const Camera cam{{0.5, 1.25, 0.0}, 800.0, 320.0, 240.0};
  const auto axis = cam.project({0.5, 1.25, 4.0});
  EXPECT_DOUBLE_EQ(axis[0], 320.0);
  EXPECT_DOUBLE_EQ(axis[1], 240.0);
  const auto right = cam.project({1.5, 1.25, 4.0});  // +x: image left
  EXPECT_DOUBLE_EQ(right[0], 320.0 - 800.0 * 1.0 / 4.0);
  EXPECT_DOUBLE_EQ(right[1], 240.0);
  const auto up = cam.project({0.5, 2.25, 2.0});  // +y: image up (v down)
  EXPECT_DOUBLE_EQ(up[0], 320.0);
  EXPECT_DOUBLE_EQ(up[1], 240.0 - 800.0 * 1.0 / 2.0);
}

// ---- channel -------------------------------------------------------------------------------------

RadioScene tiny_scene(const std::string& extra) {
  Rng room(11, 1);
  const std::vector<double> heights = {0.55, 1.05, 1.55};
  return RadioScene::make(tiny_config(extra), heights, heights, /*num_subcarriers=*/30, room);
}

std::vector<float> packet(const RadioScene& scene, const std::vector<BodyBlob>& blobs, Rng& noise) {
  std::vector<float> out(static_cast<size_t>(scene.num_links() * scene.num_subcarriers()));
  csi_amplitude(scene, blobs, noise, out.data());
  return out;
}

TEST(SynthChannel, StaticWithoutBodyOrNoise) {
  RadioScene scene = tiny_scene("reflectors: 6\n");
  ASSERT_EQ(scene.num_links(), 9);
  ASSERT_EQ(scene.reflectors.size(), 6u);
  scene.noise_rel = 0.0;
  scene.gain_jitter_db = 0.0;
  Rng noise(5, 5);
  const auto first = packet(scene, {}, noise);
  for (int p = 0; p < 5; ++p) EXPECT_EQ(packet(scene, {}, noise), first);
  for (float v : first) {
    EXPECT_TRUE(std::isfinite(v));
    EXPECT_GT(v, 0.0f);
    EXPECT_LE(v, 1.0f + 1e-6f);  // |H| <= sum of |a_p| = the static bound
  }

  // From the config: a very high SNR and no AGC jitter leave only negligible noise ...
  const RadioScene quiet = tiny_scene("reflectors: 6\nsnr_db: 100\ngain_jitter_db: 0\n");
  Rng n2(5, 6);
  const auto q0 = packet(quiet, {}, n2), q1 = packet(quiet, {}, n2);
  for (size_t i = 0; i < q0.size(); ++i) EXPECT_NEAR(q0[i], q1[i], 1e-4f);
  // ... and the default noise is visible.
  const RadioScene noisy = tiny_scene("reflectors: 6\n");
  Rng n3(5, 7);
  EXPECT_NE(packet(noisy, {}, n3), packet(noisy, {}, n3));
}

TEST(SynthChannel, BodyOnLineOfSightShadowsIt) {
  RadioScene scene = tiny_scene("reflectors: 0\nbody_scatter: 0\n");
  scene.noise_rel = 0.0;
  scene.gain_jitter_db = 0.0;
  ASSERT_TRUE(scene.reflectors.empty());
  ASSERT_EQ(scene.body_scatter, 0.0);
  const int nk = scene.num_subcarriers();
  Rng noise(5, 5);
  // Line of sight alone: amplitude exactly the static bound on every link and subcarrier.
  for (float v : packet(scene, {}, noise)) EXPECT_NEAR(v, 1.0f, 1e-6f);
  // A blob far from every path changes nothing.
  for (float v : packet(scene, {{{0.0, 30.0, 40.0}, 0.16, 1.0}}, noise)) EXPECT_NEAR(v, 1.0f, 1e-6f);
  // A torso-sized blob in the middle of link 0 (tx 0 -> rx 0) shadows it, at most by shadow_depth.
  const Vec3 mid = (scene.tx[0] + scene.rx[0]) * 0.5;
  const auto shadowed = packet(scene, {{mid, 0.16, 1.0}}, noise);
  for (int k = 0; k < nk; ++k) {
    EXPECT_LT(shadowed[static_cast<size_t>(k)], 0.99f) << "subcarrier " << k;
    EXPECT_GE(shadowed[static_cast<size_t>(k)], 1.0f - static_cast<float>(scene.shadow_depth) - 1e-6f);
  }
  // The link farthest from the blob (tx 0 low -> rx 2 high passes it at a distance) is shadowed less.
  const int far_link = 0 * 3 + 2;
  EXPECT_GT(shadowed[static_cast<size_t>(far_link * nk)], shadowed[0]);
}

// ---- config errors -------------------------------------------------------------------------------

TEST(SynthConfig, ParsesAndRoundTrips) {
  const SynthConfig c =
      tiny_config("layout: mmfi\nseed: 9\ncorruption:\n  files: [2, 7]\nsplit:\n  train: 0.6\n  val: 0.2\n");
  EXPECT_EQ(c.layout, Layout::mmfi);
  EXPECT_EQ(c.seed, 9u);
  EXPECT_EQ(c.num_files(), kFiles);
  EXPECT_EQ(c.activities, (std::vector<Activity>{Activity::wave, Activity::squat}));
  EXPECT_EQ(c.corruption.files, (std::vector<int64_t>{2, 7}));
  EXPECT_DOUBLE_EQ(c.train_fraction, 0.6);
  const SynthConfig again = SynthConfig::from_yaml(ConfigNode::load_string(c.to_yaml(), "<to_yaml>"));
  EXPECT_EQ(again.to_yaml(), c.to_yaml());
  // Every value survives the round trip exactly: synth_meta.json's config must regenerate the bytes.
  const SynthConfig odd =
      tiny_config("position_jitter_m: 0.123456789\nsnr_db: 27.000000001\ncarrier_ghz: 5.3212345678\n");
  const SynthConfig odd_again = SynthConfig::from_yaml(ConfigNode::load_string(odd.to_yaml(), "<to_yaml>"));
  EXPECT_EQ(odd_again.position_jitter_m, odd.position_jitter_m) << odd.to_yaml();
  EXPECT_EQ(odd_again.snr_db, odd.snr_db) << odd.to_yaml();
  EXPECT_EQ(odd_again.carrier_ghz, odd.carrier_ghz) << odd.to_yaml();
  // The shipped config parses.
  const SynthConfig small =
      SynthConfig::from_yaml(ConfigNode::load_file(testing::source_path("configs/data/synth_small.yaml")));
  EXPECT_GE(small.num_files(), 3);
}

TEST(SynthConfig, ErrorsNameTheKey) {
  std::string e = error_of(tiny_yaml("subjcts: 3\n"));
  EXPECT_NE(e.find("<test>:5: subjcts: unknown key"), std::string::npos) << e;

  e = error_of("subjects: 2\nactivities: [wave, dance]\n");
  EXPECT_NE(e.find("activities"), std::string::npos) << e;
  EXPECT_NE(e.find("\"dance\""), std::string::npos) << e;
  for (Activity a : all_activities()) EXPECT_NE(e.find(to_string(a)), std::string::npos) << e;

  e = error_of(tiny_yaml("corruption:\n  files: [1, 8]\n"));
  EXPECT_NE(e.find("corruption.files"), std::string::npos) << e;
  EXPECT_NE(e.find("file id 8"), std::string::npos) << e;
  EXPECT_NE(e.find("0..7"), std::string::npos) << e;

  e = error_of(tiny_yaml("split:\n  train: 0.8\n  val: 0.2\n"));
  EXPECT_NE(e.find("split.val"), std::string::npos) << e;
  EXPECT_NE(e.find("train + val"), std::string::npos) << e;

  e = error_of(tiny_yaml("corruption:\n  files: [1]\n  fraction: 0.2\n"));
  EXPECT_NE(e.find("corruption.fraction: unknown key"), std::string::npos) << e;

  e = error_of(tiny_yaml("layout: coco\n"));
  EXPECT_NE(e.find("layout: unknown value \"coco\"; expected one of: wiflow, mmfi"), std::string::npos) << e;

  e = error_of("subjects: 1\nactivities: [wave]\nsessions: 2\n");
  EXPECT_NE(e.find("at least 3 files"), std::string::npos) << e;
}

}  // namespace
}  // namespace csipose
