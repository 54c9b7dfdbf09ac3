#include "data/synth/channel.h"

#include <cmath>

#include "common/rng.h"

namespace csipose {
namespace {

constexpr double kSpeedOfLight = 299792458.0;

/// Distance from p to segment [a, b] and the distances from the closest point to a and to b.
void segment_distance(Vec3 p, Vec3 a, Vec3 b, double& dist, double& da, double& db) {
  const Vec3 ab = b - a;
  const double len2 = dot(ab, ab);
  double u = len2 > 0 ? dot(p - a, ab) / len2 : 0.0;
  u = std::min(1.0, std::max(0.0, u));
  const Vec3 c = a + ab * u;
  dist = norm(p - c);
  const double len = std::sqrt(len2);
  da = u * len;
  db = (1 - u) * len;
}

/// Transmission of one straight segment past the body blobs (product of Gaussian shadow terms).
double segment_transmission(Vec3 a, Vec3 b, const std::vector<BodyBlob>& blobs, double wavelength, double depth) {
  double t = 1.0;
  for (const auto& blob : blobs) {
    double dist, da, db;
    segment_distance(blob.p, a, b, dist, da, db);
    const double rf2 = wavelength * da * db / std::max(da + db, 1e-6);  // Fresnel radius squared
    const double w2 = blob.radius * blob.radius + rf2;
    const double size = std::min(1.0, std::max(0.25, blob.radius / 0.16));
    t *= 1.0 - depth * size * std::exp(-dist * dist / (2 * w2));
  }
  return t;
}

}  // namespace

RadioScene RadioScene::make(const SynthConfig& cfg, const std::vector<double>& tx_heights,
                            const std::vector<double>& rx_heights, int num_subcarriers, Rng& room_rng) {
  RadioScene s;
  for (double h : tx_heights) s.tx.push_back({-1.7, h, 1.7});
  for (double h : rx_heights) s.rx.push_back({1.7, h, 4.7});
  // The room: x in [-3, 3], z in [0.4, 6.5], height 2.8 m. Reflectors sit on its surfaces.
  for (int64_t r = 0; r < cfg.reflectors; ++r) {
    Vec3 p;
    switch (room_rng.below(4)) {
      case 0: p = {room_rng.uniform(-3, 3), room_rng.uniform(0.2, 2.6), 6.5}; break;        // back wall
      case 1: p = {room_rng.uniform() < 0.5 ? -3.0 : 3.0, room_rng.uniform(0.2, 2.6), room_rng.uniform(1, 6.5)}; break;
      case 2: p = {room_rng.uniform(-2.5, 2.5), 0.0, room_rng.uniform(1.5, 5.5)}; break;    // floor
      default: p = {room_rng.uniform(-2.5, 2.5), 2.8, room_rng.uniform(1.5, 5.5)}; break;   // ceiling
    }
    s.reflectors.push_back(p);
    s.reflector_gain.push_back(room_rng.uniform(0.25, 0.7));
  }
  const double f0 = cfg.carrier_ghz * 1e9, bw = cfg.bandwidth_mhz * 1e6;
  for (int k = 0; k < num_subcarriers; ++k)
    s.freqs_hz.push_back(f0 - bw / 2 + bw * (k + 0.5) / num_subcarriers);
  s.noise_rel = std::pow(10.0, -cfg.snr_db / 20.0);
  s.gain_jitter_db = cfg.gain_jitter_db;
  s.body_scatter = cfg.body_scatter;
  s.shadow_depth = cfg.shadow_depth;
  return s;
}

void csi_amplitude(const RadioScene& scene, const std::vector<BodyBlob>& blobs, Rng& noise_rng, float* out) {
  const int nk = scene.num_subcarriers();
  const double f0 = scene.freqs_hz.front();
  const double df = nk > 1 ? scene.freqs_hz[1] - scene.freqs_hz[0] : 0.0;
  const double wavelength = kSpeedOfLight / (0.5 * (scene.freqs_hz.front() + scene.freqs_hz.back()));
  std::vector<std::complex<double>> h(static_cast<size_t>(nk));
  // Accumulates a path of length L and complex gain `a` over all subcarriers by phasor recurrence.
  auto add_path = [&](double length, double amplitude) {
    const double w = -2 * M_PI * length / kSpeedOfLight;
    std::complex<double> ph = std::polar(amplitude, w * f0);
    const std::complex<double> step = std::polar(1.0, w * df);
    for (int k = 0; k < nk; ++k) {
      h[static_cast<size_t>(k)] += ph;
      ph *= step;
    }
  };
  std::vector<double> rx_gain(scene.rx.size());
  for (auto& g : rx_gain) g = std::pow(10.0, noise_rng.normal(0.0, scene.gain_jitter_db) / 20.0);

  for (size_t ti = 0; ti < scene.tx.size(); ++ti) {
    for (size_t ri = 0; ri < scene.rx.size(); ++ri) {
      std::fill(h.begin(), h.end(), std::complex<double>(0.0, 0.0));
      const Vec3 t = scene.tx[ti], r = scene.rx[ri];
      const double los = norm(r - t);
      double bound = 1.0 / los;
      add_path(los, (1.0 / los) * segment_transmission(t, r, blobs, wavelength, scene.shadow_depth));
      for (size_t p = 0; p < scene.reflectors.size(); ++p) {
        const Vec3 m = scene.reflectors[p];
        const double l1 = norm(m - t), l2 = norm(r - m);
        const double a = scene.reflector_gain[p] / (l1 + l2);
        bound += a;
        const double tr = segment_transmission(t, m, blobs, wavelength, scene.shadow_depth) *
                          segment_transmission(m, r, blobs, wavelength, scene.shadow_depth);
        add_path(l1 + l2, a * tr);
      }
      for (const auto& blob : blobs) {
        const double d1 = norm(blob.p - t), d2 = norm(r - blob.p);
        add_path(d1 + d2, scene.body_scatter * 0.06 * blob.reflectivity / (d1 * d2));
      }
      const double sigma = scene.noise_rel / los / std::sqrt(2.0);
      float* o = out + (ti * scene.rx.size() + ri) * static_cast<size_t>(nk);
      for (int k = 0; k < nk; ++k) {
        const std::complex<double> noisy = h[static_cast<size_t>(k)] +
                                           std::complex<double>(noise_rng.normal() * sigma, noise_rng.normal() * sigma);
        o[k] = static_cast<float>(rx_gain[ri] * std::abs(noisy) / bound);
      }
    }
  }
}

}  // namespace csipose
