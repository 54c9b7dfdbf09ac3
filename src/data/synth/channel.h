#pragma once
// A multipath WiFi channel between a transmitter and a receiver array, with a person in the room.
// For every link (tx antenna, rx antenna) and subcarrier frequency f:
//   H(f) = sum_static a_p T_p(body) exp(-j 2 pi f L_p / c)       line of sight + static reflectors
//        + sum_blobs  g_b / (d1 d2)  exp(-j 2 pi f (d1 + d2) / c)  scattering from the body
//        + n,   n ~ CN(0, sigma^2), sigma = |a_LOS| 10^(-SNR/20)  receiver noise
// a_LOS = 1/L (free-space amplitude, power ~ 1/d^2), a_reflector = Gamma/(L1 + L2);
// T_p = prod over blobs and path segments of (1 - depth_b exp(-dist^2 / (2 (r_b^2 + r_F^2)))),
// the shadowing of a path by body parts near it, r_F the first Fresnel-zone radius at that point.
// The reported amplitude is g |H| / sum_p |a_p| with g a per-packet, per-receive-chain AGC gain
// (log-normal), i.e. amplitude relative to the link's static bound (about 0..1.2 when clean).
#include <complex>
#include <vector>

#include "data/synth/skeleton.h"
#include "data/synth/synth_config.h"

namespace csipose {
class Rng;

struct RadioScene {
  std::vector<Vec3> tx, rx;             ///< antenna positions
  std::vector<Vec3> reflectors;         ///< static scatterers
  std::vector<double> reflector_gain;   ///< Gamma in (0, 1)
  std::vector<double> freqs_hz;         ///< subcarrier centre frequencies
  double noise_rel = 0.0;               ///< 10^(-SNR/20)
  double gain_jitter_db = 0.0;
  double body_scatter = 1.0;
  double shadow_depth = 0.5;

  /// Room and rig: tx array at (-1.7, z 1.7) and rx array at (+1.7, z 4.7), so the line of sight
  /// crosses the subjects' mean spot (0, 3.2) diagonally and both lateral and depth offsets change
  /// which paths the body shadows; antennas at the given heights; reflectors on the walls, floor
  /// and ceiling.
  static RadioScene make(const SynthConfig& cfg, const std::vector<double>& tx_heights,
                         const std::vector<double>& rx_heights, int num_subcarriers, Rng& room_rng);
  int num_links() const { return static_cast<int>(tx.size() * rx.size()); }
  int num_subcarriers() const { return static_cast<int>(freqs_hz.size()); }
};

/// Amplitudes for one packet: out[link * num_subcarriers + k], link = tx_index * num_rx + rx_index.
void csi_amplitude(const RadioScene& scene, const std::vector<BodyBlob>& blobs, Rng& noise_rng, float* out);

}  // namespace csipose
