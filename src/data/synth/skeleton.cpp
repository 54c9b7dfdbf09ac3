#include "data/synth/skeleton.h"

#include <algorithm>
#include <cmath>

#include "common/rng.h"

namespace csipose {

double norm(Vec3 a) { return std::sqrt(dot(a, a)); }
Vec3 normalized(Vec3 a) {
  const double n = norm(a);
  return n > 1e-12 ? a * (1.0 / n) : Vec3{0, 1, 0};
}

Body Body::sample(Rng& rng) {
  Body b;
  b.height = rng.uniform(1.52, 1.92);
  auto part = [&](double ratio) { return ratio * b.height * rng.uniform(0.94, 1.06); };
  // Segment ratios of stature (anthropometric tables, rounded).
  b.thigh = part(0.245);
  b.shin = part(0.246);
  b.ankle = part(0.039);
  b.leg = b.thigh + b.shin + b.ankle;
  b.torso = part(0.288);
  b.neck = part(0.052);
  b.head = part(0.075);
  b.shoulder_half = part(0.129);
  b.hip_half = part(0.095);
  b.upper_arm = part(0.186);
  b.forearm = part(0.146);
  return b;
}

Vec3 Motion::spot_at(double t) const {
  return spot + Vec3{drift_x_m * std::sin(2 * M_PI * drift_x_hz * t + drift_x_phase), 0.0,
                     drift_z_m * std::sin(2 * M_PI * drift_z_hz * t + drift_z_phase)};
}

Motion Motion::sample(Activity a, double position_jitter_m, Rng& rng, double drift_m) {
  Motion m;
  m.activity = a;
  double base_hz = 0.6;
  switch (a) {
    case Activity::walk_in_place: base_hz = 0.9; break;
    case Activity::wave: base_hz = 1.3; break;
    case Activity::arms_raise: base_hz = 0.45; break;
    case Activity::squat: base_hz = 0.35; break;
    case Activity::jumping_jacks: base_hz = 0.9; break;
    case Activity::bend: base_hz = 0.3; break;
    case Activity::kick: base_hz = 0.55; break;
    case Activity::boxing: base_hz = 1.1; break;
  }
  m.freq_hz = base_hz * rng.uniform(0.8, 1.25);
  m.amplitude = rng.uniform(0.65, 1.15);
  m.phase = rng.uniform(0.0, 2 * M_PI);
  m.yaw = rng.uniform(-0.35, 0.35);
  m.spot = {rng.uniform(-position_jitter_m, position_jitter_m), 0.0, 3.2 + rng.uniform(-position_jitter_m, position_jitter_m)};
  m.sway_hz = rng.uniform(0.08, 0.2);
  m.sway_m = rng.uniform(0.0, 0.05);
  m.drift_x_m = drift_m * rng.uniform(0.5, 1.0);
  m.drift_z_m = drift_m * rng.uniform(0.5, 1.0);
  m.drift_x_hz = rng.uniform(0.04, 0.1);
  m.drift_z_hz = rng.uniform(0.04, 0.1);
  m.drift_x_phase = rng.uniform(0.0, 2 * M_PI);
  m.drift_z_phase = rng.uniform(0.0, 2 * M_PI);
  return m;
}

namespace {

/// Limb direction from a shoulder or hip: abduction `ab` swings it sideways (towards `side`),
/// flexion `fl` forwards; (0, 0) hangs along -up. Unit length by construction.
Vec3 limb_dir(Vec3 up, Vec3 side, Vec3 fwd, double ab, double fl) {
  return up * (-std::cos(ab) * std::cos(fl)) + side * std::sin(ab) + fwd * (std::cos(ab) * std::sin(fl));
}

/// Bends `d` by `angle` towards `towards` (projected orthogonal to d).
Vec3 bend(Vec3 d, Vec3 towards, double angle) {
  Vec3 n = towards - d * dot(towards, d);
  if (norm(n) < 1e-6) return d;
  n = normalized(n);
  return normalized(d * std::cos(angle) + n * std::sin(angle));
}

double smooth01(double phase) { return 0.5 - 0.5 * std::cos(phase); }  // 0 at phase 0, 1 at pi

struct Angles {
  double r_sh_ab = 0.12, r_sh_fl = 0.0, r_elbow = 0.15;
  double l_sh_ab = 0.12, l_sh_fl = 0.0, l_elbow = 0.15;
  double r_hip_ab = 0.03, r_hip_fl = 0.0, r_knee = 0.05;
  double l_hip_ab = 0.03, l_hip_fl = 0.0, l_knee = 0.05;
  double trunk = 0.0;  // forward bend
  double lift = 0.0;   // vertical bounce (m)
};

Angles angles_for(const Motion& m, double t) {
  const double ph = 2 * M_PI * m.freq_hz * t + m.phase;
  const double a = m.amplitude;
  Angles g;
  switch (m.activity) {
    case Activity::walk_in_place: {
      const double s = std::sin(ph);
      g.r_hip_fl = 0.55 * a * std::max(0.0, s);
      g.r_knee = 1.0 * a * std::max(0.0, s);
      g.l_hip_fl = 0.55 * a * std::max(0.0, -s);
      g.l_knee = 1.0 * a * std::max(0.0, -s);
      g.r_sh_fl = -0.45 * a * s;
      g.l_sh_fl = 0.45 * a * s;
      g.r_elbow = g.l_elbow = 0.35;
      break;
    }
    case Activity::wave: {
      g.r_sh_ab = 2.3 + 0.25 * a;
      g.r_elbow = 0.35 + 0.55 * a * smooth01(ph);
      g.r_sh_fl = 0.25;
      break;
    }
    case Activity::arms_raise: {
      const double u = smooth01(ph);
      g.r_sh_ab = g.l_sh_ab = 0.15 + (2.2 + 0.5 * a) * u;
      g.r_elbow = g.l_elbow = 0.1;
      break;
    }
    case Activity::squat: {
      const double u = smooth01(ph) * a;
      g.r_hip_fl = g.l_hip_fl = 1.35 * u;
      g.r_knee = g.l_knee = 2.0 * u;
      g.trunk = 0.45 * u;
      g.r_sh_fl = g.l_sh_fl = 1.45 * u;
      g.r_elbow = g.l_elbow = 0.1;
      break;
    }
    case Activity::jumping_jacks: {
      const double u = smooth01(ph);
      g.r_sh_ab = g.l_sh_ab = 0.2 + (2.3 + 0.4 * a) * u;
      g.r_hip_ab = g.l_hip_ab = 0.04 + 0.32 * a * u;
      g.lift = 0.07 * a * std::abs(std::sin(ph));
      break;
    }
    case Activity::bend: {
      const double u = smooth01(ph) * a;
      g.trunk = 1.35 * u;
      g.r_hip_fl = g.l_hip_fl = 0.15 * u;
      g.r_sh_fl = g.l_sh_fl = 1.3 * u;  // arms hang towards the floor as the trunk bends
      g.r_knee = g.l_knee = 0.12 * u;
      break;
    }
    case Activity::kick: {
      const double s = std::sin(ph);
      const double r = std::max(0.0, s), l = std::max(0.0, -s);
      g.r_hip_fl = 1.25 * a * r * r;
      g.l_hip_fl = 1.25 * a * l * l;
      g.r_knee = 0.9 * a * r * (1 - r);
      g.l_knee = 0.9 * a * l * (1 - l);
      g.r_sh_ab = g.l_sh_ab = 0.5;
      g.r_sh_fl = g.l_sh_fl = 0.3;
      g.r_elbow = g.l_elbow = 1.0;
      break;
    }
    case Activity::boxing: {
      const double s = std::sin(ph);
      const double r = std::max(0.0, s), l = std::max(0.0, -s);
      g.r_sh_fl = 0.6 + 0.95 * a * r;
      g.l_sh_fl = 0.6 + 0.95 * a * l;
      g.r_elbow = 2.0 - 1.8 * r;
      g.l_elbow = 2.0 - 1.8 * l;
      g.r_sh_ab = g.l_sh_ab = 0.25;
      g.r_knee = g.l_knee = 0.25;
      g.r_hip_fl = g.l_hip_fl = 0.15;
      g.trunk = 0.1;
      break;
    }
  }
  return g;
}

}  // namespace

Pose3D pose_at(const Body& b, const Motion& m, double t) {
  const Angles g = angles_for(m, t);
  // Body frame: `fwd` points from the subject towards the camera (-z) turned by yaw; `right` is
  // the subject's right, which the camera sees on the left of the image.
  const Vec3 up{0, 1, 0};
  const Vec3 fwd{std::sin(m.yaw), 0, -std::cos(m.yaw)};
  const Vec3 right{std::cos(m.yaw), 0, std::sin(m.yaw)};  // fwd x up
  const double sway = m.sway_m * std::sin(2 * M_PI * m.sway_hz * t);

  Pose3D j{};
  const Vec3 spot = m.spot_at(t);
  const Vec3 pelvis = spot + Vec3{0, b.leg, 0} + right * sway;
  j[8] = pelvis;
  j[9] = pelvis + right * b.hip_half;
  j[12] = pelvis - right * b.hip_half;
  const Vec3 trunk_up = normalized(up * std::cos(g.trunk) + fwd * std::sin(g.trunk));
  const Vec3 trunk_fwd = normalized(fwd * std::cos(g.trunk) - up * std::sin(g.trunk));
  j[1] = pelvis + trunk_up * b.torso;
  const Vec3 head_c = j[1] + trunk_up * (b.neck + 0.5 * b.head);
  j[0] = head_c + trunk_fwd * (0.09 * b.height / 1.75);
  j[15] = head_c + trunk_up * (0.025 * b.height / 1.75) + trunk_fwd * (0.07 * b.height / 1.75) + right * 0.032;
  j[16] = head_c + trunk_up * (0.025 * b.height / 1.75) + trunk_fwd * (0.07 * b.height / 1.75) - right * 0.032;
  j[17] = head_c + right * (0.075 * b.height / 1.75);
  j[18] = head_c - right * (0.075 * b.height / 1.75);
  j[2] = j[1] + right * b.shoulder_half;
  j[5] = j[1] - right * b.shoulder_half;

  auto arm = [&](int sh, int el, int wr, Vec3 side, double ab, double fl, double elbow) {
    const Vec3 d1 = limb_dir(trunk_up, side, trunk_fwd, ab, fl);
    j[el] = j[sh] + d1 * b.upper_arm;
    // The elbow folds the forearm the way further shoulder flexion would move it (d d1 / d fl):
    // forwards when the arm hangs, up when it points forward. Always orthogonal to d1 and continuous
    // in fl (a hard switch between trunk_fwd and trunk_up made the wrist jump by centimetres).
    const Vec3 towards = trunk_up * std::sin(fl) + trunk_fwd * std::cos(fl);
    j[wr] = j[el] + bend(d1, towards, elbow) * b.forearm;
  };
  arm(2, 3, 4, right, g.r_sh_ab, g.r_sh_fl, g.r_elbow);
  arm(5, 6, 7, right * -1.0, g.l_sh_ab, g.l_sh_fl, g.l_elbow);

  auto leg = [&](int hip, int knee, int ankle, Vec3 side, double ab, double fl, double kn) {
    const Vec3 d1 = limb_dir(up, side, fwd, ab, fl);
    j[knee] = j[hip] + d1 * b.thigh;
    j[ankle] = j[knee] + bend(d1, fwd * -1.0, kn) * b.shin;  // knees fold backwards
  };
  leg(9, 10, 11, right, g.r_hip_ab, g.r_hip_fl, g.r_knee);
  leg(12, 13, 14, right * -1.0, g.l_hip_ab, g.l_hip_fl, g.l_knee);

  // Keep the lower ankle at ankle height above the floor (feet stay on the ground), plus bounce.
  const double lowest = std::min(j[11].y, j[14].y);
  const double shift = (spot.y + b.ankle) - lowest + g.lift;
  for (auto& p : j) p.y += shift;
  return j;
}

const std::array<int, 17> kCocoFromJoints = {0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11};

std::vector<BodyBlob> body_blobs(const Pose3D& j) {
  std::vector<BodyBlob> blobs;
  auto add = [&](Vec3 p, double r, double refl) { blobs.push_back({p, r, refl}); };
  auto mid = [](Vec3 a, Vec3 c, double f) { return a + (c - a) * f; };
  // Head, trunk (three points down its length), limbs: joints and mid-segments.
  add(mid(j[0], j[1], 0.4), 0.10, 0.5);
  for (double f : {0.15, 0.5, 0.85}) add(mid(j[1], j[8], f), 0.16, 1.0);
  for (int s : {0, 1}) {
    const int sh = s ? 5 : 2, el = s ? 6 : 3, wr = s ? 7 : 4, hp = s ? 12 : 9, kn = s ? 13 : 10, an = s ? 14 : 11;
    add(mid(j[sh], j[el], 0.5), 0.055, 0.35);
    add(j[el], 0.05, 0.25);
    add(mid(j[el], j[wr], 0.5), 0.045, 0.25);
    add(j[wr], 0.05, 0.2);
    add(mid(j[hp], j[kn], 0.5), 0.08, 0.6);
    add(j[kn], 0.06, 0.35);
    add(mid(j[kn], j[an], 0.5), 0.055, 0.35);
  }
  return blobs;
}

std::array<double, 2> Camera::project(Vec3 p) const {
  const Vec3 c = p - position;
  const double z = std::max(c.z, 0.05);
  // Looking along +z with y up, the image's right is -x (a right-handed frame).
  return {cx - focal_px * c.x / z, cy - focal_px * c.y / z};
}

}  // namespace csipose
