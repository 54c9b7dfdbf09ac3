#pragma once
// Sub-byte storage of quantized weights (the .csq keeps 2..7-bit weights packed).
//
// Layout: each value takes `bits` bits in two's complement, values laid end to end LSB-first in a
// little-endian bit stream: value i occupies stream bits [i * bits, (i + 1) * bits), stream bit k
// is bit (k % 8) of byte k / 8, and the unused high bits of the last byte are 0. For bits = 4 this
// is two values per byte, the first in the low nibble (the common int4 layout: GGML's Q4, XNNPACK's
// qc4w). Only storage: kernels run on the unpacked int8 values, which are exactly the same numbers.
#include <torch/types.h>

namespace csipose {

/// Packs int8 values in [-2^(bits-1), 2^(bits-1) - 1] (any shape; row-major order) into
/// ceil(numel * bits / 8) uint8 bytes. bits in 2..8 (8 is a plain copy). Throws on a value out of range.
torch::Tensor pack_bits(const torch::Tensor& q, int bits);
/// The inverse: int8 tensor of `shape` from pack_bits' bytes; throws when the byte count differs
/// from ceil(numel * bits / 8) or the padding bits are not 0.
torch::Tensor unpack_bits(const torch::Tensor& packed, int bits, at::IntArrayRef shape);
/// ceil(numel * bits / 8).
int64_t packed_bytes(int64_t numel, int bits);

}  // namespace csipose
