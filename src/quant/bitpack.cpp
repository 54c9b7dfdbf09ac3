#include "quant/bitpack.h"

#include <torch/torch.h>

#include <cstdint>

#include "common/check.h"

namespace csipose {

int64_t packed_bytes(int64_t numel, int bits) { return (numel * bits + 7) / 8; }

torch::Tensor pack_bits(const torch::Tensor& q, int bits) {
  CSIPOSE_CHECK(bits >= 2 && bits <= 8, "pack_bits: bits must be in 2..8, got ", bits);
  CSIPOSE_CHECK(q.scalar_type() == torch::kInt8, "pack_bits: expects int8 values, got ", q.scalar_type());
  const torch::Tensor v = q.detach().to(torch::kCPU).contiguous();
  const int64_t n = v.numel();
  const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
  torch::Tensor out = torch::zeros({packed_bytes(n, bits)}, torch::kUInt8);
  const int8_t* src = v.data_ptr<int8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const uint32_t mask = (1u << bits) - 1u;
  for (int64_t i = 0; i < n; ++i) {
    const int x = src[i];
    CSIPOSE_CHECK(x >= lo && x <= hi, "pack_bits: value ", x, " at ", i, " is outside the ", bits, "-bit range [", lo,
                  ", ", hi, "]");
    const uint32_t u = static_cast<uint32_t>(x) & mask;
    const int64_t bit = i * bits;
    const int64_t byte = bit / 8;
    const int shift = static_cast<int>(bit % 8);
    dst[byte] = static_cast<uint8_t>(dst[byte] | ((u << shift) & 0xFFu));
    if (shift + bits > 8) dst[byte + 1] = static_cast<uint8_t>(dst[byte + 1] | (u >> (8 - shift)));
  }
  return out;
}

torch::Tensor unpack_bits(const torch::Tensor& packed, int bits, at::IntArrayRef shape) {
  CSIPOSE_CHECK(bits >= 2 && bits <= 8, "unpack_bits: bits must be in 2..8, got ", bits);
  CSIPOSE_CHECK(packed.scalar_type() == torch::kUInt8, "unpack_bits: expects uint8 bytes, got ", packed.scalar_type());
  int64_t n = 1;
  for (int64_t d : shape) {
    CSIPOSE_CHECK(d >= 0, "unpack_bits: negative dimension in ", shape);
    n *= d;
  }
  const torch::Tensor b = packed.detach().to(torch::kCPU).contiguous();
  CSIPOSE_CHECK(b.numel() == packed_bytes(n, bits), "unpack_bits: ", b.numel(), " bytes for ", n, " values of ", bits,
                " bits (expected ", packed_bytes(n, bits), ")");
  torch::Tensor out = torch::empty(shape, torch::kInt8);
  const uint8_t* src = b.data_ptr<uint8_t>();
  int8_t* dst = out.data_ptr<int8_t>();
  const uint32_t mask = (1u << bits) - 1u, sign = 1u << (bits - 1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits;
    const int64_t byte = bit / 8;
    const int shift = static_cast<int>(bit % 8);
    uint32_t u = static_cast<uint32_t>(src[byte]) >> shift;
    if (shift + bits > 8) u |= static_cast<uint32_t>(src[byte + 1]) << (8 - shift);
    u &= mask;
    dst[i] = static_cast<int8_t>(static_cast<int>(u ^ sign) - static_cast<int>(sign));  // sign-extend
  }
  const int64_t used_bits = n * bits;
  if (used_bits % 8 != 0) {
    const uint32_t pad = static_cast<uint32_t>(src[b.numel() - 1]) >> (used_bits % 8);
    CSIPOSE_CHECK(pad == 0, "unpack_bits: the padding bits of the last byte are not 0 (corrupt data)");
  }
  return out;
}

}  // namespace csipose
