#pragma once
// A parametric 3D skeleton performing activities over time (metres; right-handed room frame:
// y up, z away from the camera, so the image right is -x). Forward kinematics from joint angles; the feet are kept on the
// floor by lowering the pelvis, so squats and bends come out physically consistent.
#include <array>
#include <cstdint>
#include <vector>

#include "data/synth/synth_config.h"

namespace csipose {
class Rng;

struct Vec3 {
  double x = 0, y = 0, z = 0;
};
inline Vec3 operator+(Vec3 a, Vec3 b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
inline Vec3 operator-(Vec3 a, Vec3 b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
inline Vec3 operator*(Vec3 a, double s) { return {a.x * s, a.y * s, a.z * s}; }
inline double dot(Vec3 a, Vec3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
double norm(Vec3 a);
Vec3 normalized(Vec3 a);

/// Body of one subject: height and segment lengths (proportions jittered per subject).
struct Body {
  double height, leg, thigh, shin, ankle, torso, neck, head, shoulder_half, hip_half, upper_arm, forearm;
  static Body sample(Rng& rng);
};

/// How one session performs an activity: tempo, amplitude, phase and standing spot.
struct Motion {
  Activity activity;
  double freq_hz;     ///< cycles per second
  double amplitude;   ///< 0.6..1.2 scale of the movement
  double phase;       ///< radians at t = 0
  double yaw;         ///< facing direction (radians, 0 = facing the camera)
  Vec3 spot;          ///< standing point on the floor
  double sway_hz, sway_m;
  /// Slow wandering of the standing spot during the session (people shift around): amplitude (m),
  /// frequency (Hz) and phase per floor axis.
  double drift_x_m, drift_z_m, drift_x_hz, drift_z_hz, drift_x_phase, drift_z_phase;
  /// The standing point at time t (spot + drift).
  Vec3 spot_at(double t) const;
  static Motion sample(Activity a, double position_jitter_m, Rng& rng, double drift_m = 0.25);
};

/// Joints: the 15 BODY_25 joints first (0 Nose, 1 Neck, 2 RShoulder, 3 RElbow, 4 RWrist,
/// 5 LShoulder, 6 LElbow, 7 LWrist, 8 MidHip, 9 RHip, 10 RKnee, 11 RAnkle, 12 LHip, 13 LKnee,
/// 14 LAnkle), then 15 REye, 16 LEye, 17 REar, 18 LEar (for COCO-17).
constexpr int kNumJoints3D = 19;
using Pose3D = std::array<Vec3, kNumJoints3D>;

Pose3D pose_at(const Body& body, const Motion& motion, double t);

/// COCO-17 order from the 19 joints: nose, l/r eye, l/r ear, l/r shoulder, l/r elbow, l/r wrist,
/// l/r hip, l/r knee, l/r ankle.
extern const std::array<int, 17> kCocoFromJoints;

/// Radio scatterers on the body: joints and bone midpoints with a radius (m) and a reflectivity.
struct BodyBlob {
  Vec3 p;
  double radius;
  double reflectivity;
};
std::vector<BodyBlob> body_blobs(const Pose3D& pose);

/// Pinhole camera looking along +z from `position`; returns pixel (u, v), v down.
struct Camera {
  Vec3 position{0.0, 1.25, 0.0};
  double focal_px = 1000, cx = 960, cy = 540;
  std::array<double, 2> project(Vec3 p) const;
};

}  // namespace csipose
