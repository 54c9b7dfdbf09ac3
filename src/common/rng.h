#pragma once
// A seeded generator whose sequences are fixed by this code, not by the standard library:
// std::uniform_*_distribution and std::shuffle differ between libstdc++ and libc++, which would
// make "same seed -> same bytes" a property of the compiler. SplitMix64 seeding + xoshiro256**.
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace csipose {

class Rng {
 public:
  explicit Rng(uint64_t seed);
  /// A generator for an independent stream: same (seed, stream) -> same sequence.
  Rng(uint64_t seed, uint64_t stream);

  uint64_t next_u64();
  /// Uniform in [0, 1) with 53 random bits.
  double uniform();
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
  /// Uniform integer in [0, n) without modulo bias (rejection). n > 0.
  uint64_t below(uint64_t n);
  /// Standard normal (Box-Muller, both values used).
  double normal();
  double normal(double mean, double stddev) { return mean + stddev * normal(); }
  /// Fisher-Yates shuffle, defined element order for a given seed.
  template <typename T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      const size_t j = static_cast<size_t>(below(i));
      std::swap(v[i - 1], v[j]);
    }
  }

 private:
  uint64_t s_[4];
  bool has_spare_ = false;
  double spare_ = 0.0;
};

/// A random permutation of 0..n-1 from a seed.
std::vector<int64_t> permutation(int64_t n, uint64_t seed);

}  // namespace csipose
