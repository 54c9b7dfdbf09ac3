#pragma once
// Batched products of many small float32 matrices (attention scores and context, a graph
// adjacency over joints) without one BLAS call per matrix.
//
// torch::matmul of (B, m, k) @ (B, k, n) on the CPU runs one GEMM per batch item when the items
// are small; for WiFlow's axial attention at batch 64 that is 5,632 GEMMs of 20 x 8 x 20 per
// product, and the per-call overhead is 20x the arithmetic (65 ms of a 218 ms PyTorch forward).
// small_matmul computes the same products with a loop kernel over the whole batch.
#include <torch/types.h>

#include "quant/quant_spec.h"

namespace csipose {

/// torch::matmul(a, b) for tensors of at least 2 dimensions with broadcast batch dimensions.
/// Float32 CPU operands whose matrices are small (m * k * n <= kSmallMatmulMaxWork) and for which no
/// gradient is recorded go through the loop kernel: every output element is the sum over k in
/// increasing order of float32 products (its own summation order, so results may differ from a
/// BLAS in the last bits); anything else (CUDA, other dtypes, big matrices, autograd) calls
/// torch::matmul.
torch::Tensor small_matmul(const torch::Tensor& a, const torch::Tensor& b);

constexpr int64_t kSmallMatmulMaxWork = 1 << 16;

/// quantize_tensor(small_matmul(a, dequantize_tensor(q, from)), to, r), bit for bit, in one pass
/// per batch item with nothing float written to memory: a (m, k) float32 finite, the same matrix
/// for every item (the pose transformer's adjacency over joints); q int8 codes (..., k, n) at the
/// per-tensor point `from`; int8 codes (..., m, n) at `to`. The dequantized values are finite, so
/// the products with a zero coefficient (+-0) leave small_matmul's sums unchanged (a sum that
/// starts at +0 never becomes -0) and are skipped: a normalized skeleton adjacency has 49 nonzeros
/// of 289. Non-finite products are an error, as quantize_tensor.
torch::Tensor small_matmul_int8(const torch::Tensor& a, const torch::Tensor& q, const QuantParams& from,
                                const QuantParams& to, Rounding r);

}  // namespace csipose
