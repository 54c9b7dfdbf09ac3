#pragma once
// Int8Backend: who computes the exact integer accumulators of the int8 ops (quant/int8_ops.h).
//
//   reference  float64 GEMMs on integer-valued tensors (CPU and CUDA): exact, device-agnostic, slow;
//              what every other backend is tested against.
//   onednn     oneDNN's s8 x s8 -> s32 matmul (VNNI / AMX kernels on x86; Debian libdnnl 2.6), CPU
//              only; built when CMake finds dnnl (CSIPOSE_WITH_ONEDNN).
//
// Every backend returns the same integers, so the int8 model's outputs are bit-identical whichever
// backend runs it (tested): the requantization after the accumulators is the one float32 rule of
// int8_ops.h. oneDNN is given raw int8 x int8 products only (no zero points, no output scales):
//   acc = sum_k (x - zp_x) w  =  sum_k x w  -  zp_x * sum_k w      (weights have no zero point)
//   acc = sum_k (a - za)(b - zb) = sum_k a b - za sum_k b - zb sum_k a + K za zb   (two activations)
// with the compensation terms in int64 here, because oneDNN's own requantization rounds in float
// with its own order of operations and would not meet the contract bit for bit.
//
// Selection is process-wide (set_int8_backend, `--int8-backend` of the CLI); CUDA tensors always
// take the reference path (exact float64 GEMM on the GPU).
#include <cstdint>
#include <string>

#include <torch/types.h>

namespace csipose {

enum class Int8BackendKind { reference, onednn };
const char* to_string(Int8BackendKind k);
/// "reference" | "onednn"; throws csipose::Error listing the names otherwise.
Int8BackendKind parse_int8_backend(const std::string& text);
/// Whether this build has the oneDNN backend.
bool onednn_available();
/// The backend of the CPU int8 ops. Default: onednn when built, else reference. Throws for onednn
/// in a build without it.
void set_int8_backend(Int8BackendKind k);
Int8BackendKind int8_backend();
/// True when CPU tensors of this device take the oneDNN path.
bool use_onednn(const torch::Device& device);

/// Batched exact product of int8 CPU tensors a (..., M, K) and b (..., K, N) of one rank, batch
/// dimensions equal or 1 (broadcast), any strides with a dense last or second-to-last dimension;
/// returns int32 (..., M, N) = a @ b, contiguous. Only with onednn_available(). The caller
/// guarantees every partial sum fits int32 (the int8 ops' overflow bounds).
torch::Tensor onednn_s8_gemm(const torch::Tensor& a, const torch::Tensor& b);

/// The same product on caller-owned buffers (no tensors, no allocation; the fused ops' hot path):
///   c[i * ldc + j] = sum_k a[i * lda + kk] * b[kk * b_stride_k + j * b_stride_n],  i < m, j < n,
/// with a and c row-major and b either row-major (b_stride_n == 1) or column-major
/// (b_stride_k == 1, e.g. a (N, K) weight read as its transpose). With batch > 1, product t reads
/// a + t * a_batch, b + t * b_batch (0: the same b for all) and writes c + t * c_batch. Only with
/// onednn_available().
struct S8GemmRaw {
  int64_t m = 0, k = 0, n = 0;
  const int8_t* a = nullptr;
  int64_t lda = 0;
  const int8_t* b = nullptr;
  int64_t b_stride_k = 0, b_stride_n = 0;
  int32_t* c = nullptr;
  int64_t ldc = 0;
  int64_t batch = 1, a_batch = 0, b_batch = 0, c_batch = 0;
};
void onednn_s8_gemm_raw(const S8GemmRaw& g);

}  // namespace csipose
