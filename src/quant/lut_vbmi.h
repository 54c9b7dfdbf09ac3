#pragma once
// The 256-entry byte-table lookup with AVX-512 VBMI, shared by the int8 kernels that map codes
// through a table (quant/int8_ops.cpp) or gather bytes by index (quant/row_softmax.cpp). Only on
// x86-64 with GCC-compatible target attributes; callers check int8_vbmi_kernels_active() first.
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace csipose {

/// table[idx] for 64 byte indices, the 256-byte table held in four registers t0..t3: two
/// 128-entry byte permutes (vpermi2b on bits 0-6; bit 6 picks the register of a pair) and a blend
/// on bit 7.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline __m512i lut_vbmi(__m512i idx, __m512i t0, __m512i t1,
                                                                               __m512i t2, __m512i t3) {
  const __m512i lo = _mm512_permutex2var_epi8(t0, idx, t1);  // entries 0..127
  const __m512i hi = _mm512_permutex2var_epi8(t2, idx, t3);  // entries 128..255
  return _mm512_mask_blend_epi8(_mm512_movepi8_mask(idx), lo, hi);
}

}  // namespace csipose
#endif
