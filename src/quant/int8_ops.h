#pragma once
// Int8 operators that follow the numeric contract (quant/reference.h) exactly, with plain torch
// ops on CPU and CUDA, and their fake-quant float counterparts for agreement tests.
//
// An int8 op takes int8 activations x_q (per-tensor affine: real = s_in * (x_q - zp_in)), int8
// weights w_q (symmetric: real = s_w[c] * w_q, no weight zero point) and an int32 bias at scale
// s_in * s_w[c], and returns int8 outputs at (s_out, zp_out):
//
//   acc[c]  = sum_k (x_q[k] - zp_in) * w_q[c, k]                exact integer (see below)
//   out[c]  = requantize(acc[c], bias_q[c], M[c], zp_out)        the scalar reference, elementwise
//   M[c]    = requantize_multiplier(s_in, s_w[c], s_out)         float32, computed once per call
//   requantize: clamp(round_half_even(float(acc + bias) * M) + zp_out, qmin, qmax)
//
// Exact accumulation. The sums are computed with float64 GEMMs (torch::matmul) on the integer-
// valued tensors (x_q - zp_in) and w_q. Every product is an integer below 2^16 and every partial
// sum an integer of magnitude <= the bound checked below (< 2^31 < 2^53), so every float64 addition
// is exact whatever the summation order, blocking or FMA use of the BLAS: the result is the exact
// integer on CPU (MKL / OpenBLAS) and CUDA (cuBLAS DGEMM) alike. float32 would only be exact while
// partial sums stay below 2^24, which a 3x3 conv over 256 channels already exceeds
// (256 * 9 * 255 * 127 ~ 7.5e7). Convolutions are lowered to an explicit im2col (pad + unfold)
// and a grouped GEMM instead of torch::conv*d: in float64 cuDNN may still pick FFT or Winograd
// algorithms, which are not exact; a GEMM only ever adds exact products.
//
// Padding pads the centered tensor (x_q - zp_in) with 0, i.e. the input with its zero point, which
// is the int8 image of the fp32 model's zero padding (qparams_from_range keeps real 0 exact).
//
// Requantization is float32 torch ops: int32 -> float32 (correctly rounded, as static_cast), one
// float32 multiply by M, torch::round (ties to even; round_tensor for half_away), + zp_out, clamp.
// Each step is a single correctly rounded IEEE operation (no multiply-add to contract), so CPU
// SIMD, CPU scalar and CUDA give the bits of the scalar reference `requantize`.
//
// These ops are the exact, device-agnostic int8 path that a converted model and the exporter are
// checked against, not fast kernels: the float64 GEMM and the im2col copy trade speed for
// exactness everywhere.
//
// Overflow. A kernel adds acc + bias in int32, so pack_weight proves that it cannot overflow for
// ANY int8 input: with A[c] = sum_k |w_q[c, k]| * max(zp_in - qmin, qmax - zp_in) (the largest
// |acc[c]| any input can produce), it requires A[c] + |bias_q[c]| <= 2^31 - 1 and throws
// csipose::Error naming the channel otherwise. int8_matmul checks the same bound for
// K * max|a - zp_a| * max|b - zp_b| on every call.
#include <torch/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <vector>

#include "quant/quant_spec.h"

namespace csipose {

/// Weights as an int8 kernel wants them: int8 in the float layout (Linear (out, in); Conv1d
/// (out, in/groups, k); Conv2d (out, in/groups, kh, kw)), on the float weight's device.
struct PackedWeight {
  /// int8, same shape and device as the float weight.
  torch::Tensor q;
  /// Symmetric, zero points 0: per-channel along axis 0 (one scale per output channel) or
  /// per-tensor (one scale for all).
  QuantParams params;
  /// int32 (out), bias_q[c] = round_half_even(b[c] / (s_in * s_w[c])); undefined without bias.
  torch::Tensor bias_q;
  /// The per-tensor input parameters the bias scale and the overflow bound were computed for;
  /// the ops require exactly these input parameters.
  QuantParams input_params;
  /// int64 (out): sum_k q[c, k], and zp_in * row_sum: the zero-point compensation of backends that
  /// multiply raw int8 values (quant/int8_backend.h). Set by pack_weight and the .csq loader
  /// (with_row_sum()).
  torch::Tensor row_sum, zp_row_sum;
  /// This weight with row_sum computed (when it is not yet).
  PackedWeight with_row_sum() const;

  int64_t out_channels() const { return q.size(0); }
  /// s_w of output channel c (the one per-tensor scale for every c).
  float weight_scale(int64_t c) const;
  /// A copy with q and bias_q on `device`.
  PackedWeight to(const torch::Device& device) const;
};

/// Quantizes a float32 weight (and its float32 bias, or an undefined tensor) for inputs with the
/// per-tensor `input_qp`:
///   - weight qparams = qparams_from_range(wspec, per-output-channel min / max) (one min / max for a
///     per_tensor spec); wspec must be signed and symmetric (zero point 0) and, per channel, have
///     axis 0; q = quantize(w) with wspec.rounding;
///   - bias_q[c] = round_half_even(double(b[c]) / (double(s_in) * double(s_w[c]))): the product of
///     two floats is exact in double, then one correctly rounded division and one rounding;
///   - the overflow check above (bias or no bias).
/// Throws csipose::Error for non-float32 tensors, non-finite values, shapes that do not fit, a
/// spec with a weight zero point, or the overflow.
PackedWeight pack_weight(const torch::Tensor& w_float, const torch::Tensor& bias_float, const QuantSpec& wspec,
                         const QuantParams& input_qp);

/// pack_weight with given weight qparams (learned ones, quant/lsq.h) instead of the min / max
/// rule: per-tensor, or per-channel along axis 0 with one scale per output channel; zero points 0.
PackedWeight pack_weight_with(const torch::Tensor& w_float, const torch::Tensor& bias_float, const QuantSpec& wspec,
                              const QuantParams& weight_qp, const QuantParams& input_qp);

/// The bias rule of pack_weight alone: int32 (out) from float32 (out), with s_w from w_params
/// (per-tensor or per-channel). No overflow check (pack_weight does it, knowing the weights).
torch::Tensor quantize_bias(const torch::Tensor& bias_float, float input_scale, const QuantParams& w_params);
/// float32 bias_q[c] * (s_in * s_w[c]), the product in double rounded once to float.
torch::Tensor dequantize_bias(const torch::Tensor& bias_q, float input_scale, const QuantParams& w_params);

/// int8 tensor of quantize(x) (quant/reference.h) of every element of a float32 tensor; per-tensor
/// or per-channel params along p.axis; the integer range must fit int8. Bit-identical to the
/// reference on CPU and CUDA.
torch::Tensor quantize_tensor(const torch::Tensor& x_float, const QuantParams& p, Rounding r = Rounding::half_even);
/// quantize() of n contiguous float32 values into int8 codes with per-tensor params p, on the
/// calling thread: the same float32 operations as quantize_tensor (so the same codes); false (dst
/// unspecified) when a value is not finite. For producers that quantize their own output for the
/// next int8 op in the same pass.
bool quantize_span(const float* src, int64_t n, int8_t* dst, const QuantParams& p, Rounding r = Rounding::half_even);
/// quantize_tensor of a float32 CPU tensor with per-tensor params in one vectorized pass (the same
/// float32 operations, so the same codes; non-finite values are an error): for producers of an int8
/// op's input outside the fused ops.
torch::Tensor quantize_tensor_cpu(const torch::Tensor& x_float, const QuantParams& p, Rounding r = Rounding::half_even);
/// float32 dequantize(q) of every element of an int8 tensor: float(q - zp) * scale.
torch::Tensor dequantize_tensor(const torch::Tensor& q, const QuantParams& p);

/// y_q = requantize(x_q W^T + b): x_q int8 (..., in), output int8 (..., out).
torch::Tensor int8_linear(const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                          const QuantParams& out_qp, Rounding r = Rounding::half_even);

/// Conv1d of int8 x_q (N, C_in, L), torch::conv1d semantics (symmetric zero padding of `padding`
/// on both sides, padding the input zero point). Output int8 (N, C_out, L_out).
torch::Tensor int8_conv1d(const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                          const QuantParams& out_qp, int64_t stride = 1, int64_t padding = 0, int64_t dilation = 1,
                          int64_t groups = 1, Rounding r = Rounding::half_even);

/// Conv2d of int8 x_q (N, C_in, H, W), torch::conv2d semantics with {H, W} pairs. Output int8
/// (N, C_out, H_out, W_out).
torch::Tensor int8_conv2d(const torch::Tensor& x_q, const QuantParams& in_qp, const PackedWeight& w,
                          const QuantParams& out_qp, std::array<int64_t, 2> stride = {1, 1},
                          std::array<int64_t, 2> padding = {0, 0}, std::array<int64_t, 2> dilation = {1, 1},
                          int64_t groups = 1, Rounding r = Rounding::half_even);

/// Batched matrix product of two int8 tensors with per-tensor affine params (attention scores
/// Q K^T and attention-weighted values), torch::matmul broadcasting (both at least 2-D):
///   acc = sum_k (a_q - zp_a) * (b_q - zp_b),   out = requantize(acc, 0, s_a * s_b / s_out, zp_out).
torch::Tensor int8_matmul(const torch::Tensor& a_q, const QuantParams& a_qp, const torch::Tensor& b_q,
                          const QuantParams& b_qp, const QuantParams& out_qp, Rounding r = Rounding::half_even);

// ---- fused float-in / float-out path (oneDNN backend, CPU) ----------------------------------------
// What a converted model runs per op: dequantize(op(quantize(x))). On the oneDNN backend this is one
// fused quantize pass, oneDNN's s8 GEMM, and one fused requantize + dequantize pass (no int64 /
// float64 intermediates, no separate passes per step); the float32 operations are the contract's,
// so the result is bit-identical to the three reference ops (tested).

/// Convolution geometry of int8_op_float (1 or 2 spatial dimensions).
struct Int8Conv {
  std::vector<int64_t> stride, padding, dilation;
  int64_t groups = 1;
  /// > 0: only the first out_limit output positions along the last spatial dimension are computed
  /// and returned (a causal conv's chomp: the output equals the full one narrowed to them, but
  /// dense, and the dropped positions cost nothing).
  int64_t out_limit = 0;
};
/// Whether int8_op_float can run for tensors on `device` (the oneDNN backend on the CPU).
bool int8_fused_available(const torch::Device& device);
/// dequantize_tensor(int8_linear / int8_conv*(quantize_tensor(x, in_qp), ...), out_qp) for float32 x;
/// `conv` null for a linear op. Only where int8_fused_available.
torch::Tensor int8_op_float(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                            const QuantParams& out_qp, const Int8Conv* conv, Rounding r = Rounding::half_even);
/// A batched int8 conv of int8_op_fused runs in chunks of samples whose int8 columns and int32
/// sums take about this many bytes (default 256 KiB: they stay in a core's L2 cache between the
/// im2col, the GEMM and the requantization), one chunk per task; a chunk holds at least one
/// sample. A linear op does the same with chunks of rows (int8 input and int32 sums). The results
/// do not depend on it (tests set 1: a chunk per sample or row).
void set_int8_conv_chunk_bytes(int64_t bytes);
int64_t int8_conv_chunk_bytes();
/// The fused path's requantize and quantize loops run as explicit AVX-512 kernels on a CPU with
/// AVX-512F (masked tails, the contract's float32 operations in its order) and as
/// compiler-vectorized loops otherwise; both give the same bits. Off forces the compiler-vectorized
/// loops (tests compare the two); returns the previous setting.
bool set_int8_avx512_kernels(bool on);
/// True when the explicit AVX-512 kernels run (the CPU has AVX-512F and they are on).
bool int8_avx512_kernels_active();
/// True when the explicit kernels that also need AVX-512BW / VL / VBMI (byte permutes, byte
/// tables) run: the CPU has them and set_int8_avx512_kernels leaves the kernels on.
bool int8_vbmi_kernels_active();
/// What int8_op_fused returns: the float32 dequantized output (default), or the int8 codes at
/// out_qp for the next int8 op, each mapped through `table` when given (indexed by the code's bit
/// pattern, uint8_t(q); int8_code_table builds one).
struct Int8Output {
  bool int8 = false;
  const int8_t* table = nullptr;  ///< 256 entries, or null
  /// ReLU of the dequantized output, folded into the requantization as a lower clamp at the zero
  /// point ((max(q, zp) - zp) * s = max((q - zp) * s, 0), +0 included): bit for bit torch::relu of
  /// the plain float output, or (int8, no table) the codes of it at out_qp.
  bool relu = false;
  /// Int8 output of a linear op whose output columns go to different next points (the pose
  /// transformer's in-projection: q, k and v): G tables split the O outputs into G equal groups,
  /// column c's codes mapped through column_tables[c / (O / G)] (null: unchanged). Instead of `table`.
  std::vector<const int8_t*> column_tables = {};
  /// With column tables and H > 0 heads: the output split into attention heads, laid out
  /// (G, leading..., H, T, O / (G H)) for an input (leading..., T, in), so that group g's heads
  /// (the pose transformer's q, k, v as (N, H, T, head_dim)) are contiguous without a copy; column
  /// (g H + h) head_dim + j of input row (..., t) goes to [g][...][h][t][j].
  int64_t heads = 0;
};
/// int8_op_float with int8 activations allowed on both sides (an int8 chain, quant/qmodules.h):
/// x float32 (quantized here with in_qp) or int8 (codes at in_qp in [qmin, qmax], as the previous op
/// of a chain hands them over); the output as `out` says. Only where int8_fused_available.
torch::Tensor int8_op_fused(const torch::Tensor& x, const QuantParams& in_qp, const PackedWeight& w,
                            const QuantParams& out_qp, const Int8Conv* conv, const Int8Output& out,
                            Rounding r = Rounding::half_even);
/// The table of an elementwise float function f between two quantization points: entry uint8_t(q)
/// = quantize(f(dequantize(q, from)), to) with to's rounding r, f evaluated by LibTorch in float32 on
/// the 256 dequantized codes. It gives the fake-quant model's fq_to(f(fq_from(y))) code for code, up
/// to f's own float32 evaluation: ATen evaluates SiLU / GELU with vector kernels and their scalar
/// form on the leftover elements of a loop, which can differ in the last bit, and that matters only
/// where f's value lies on a rounding tie of `to`. (ReLU and the identity are exact.)
std::array<int8_t, 256> int8_code_table(const std::function<torch::Tensor(const torch::Tensor&)>& f,
                                        const QuantParams& from, const QuantParams& to,
                                        Rounding r = Rounding::half_even);
/// dequantize_tensor(int8_matmul(quantize_tensor(a), quantize_tensor(b)), out_qp) for float32 a, b
/// (torch::matmul broadcasting), fused the same way. Either operand may instead be int8 codes at its
/// params already (int8_matmul_softmax's output), used as they are. Only where int8_fused_available.
torch::Tensor int8_matmul_float(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                                const QuantParams& b_qp, const QuantParams& out_qp, Rounding r = Rounding::half_even);
/// Attention probabilities as int8 codes in one pass:
///     s = int8_matmul_float(a, a_qp, b, b_qp, s_qp, r) / divisor     (float32 division; none for 1)
///     quantize_tensor(row_softmax(s, scale, shift), p_qp, r)
/// bit for bit (the int8 scores product, its output point, the pose transformer's 1/sqrt(d)
/// scaling as the float32 division the model does, an optional per-channel affine map of
/// dimension 1 (WiFlow's eval-mode BatchNorm, as row_softmax) and the softmax over the last
/// dimension, then the next product's input point p_qp), without writing the float scores: each
/// product's rows go through requantize, softmax and quantize while in cache. int8 (batch..., m, n),
/// row-major. Throws for non-finite probabilities, as quantize_tensor. Only where
/// int8_fused_available.
torch::Tensor int8_matmul_softmax(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                                  const QuantParams& b_qp, const QuantParams& s_qp, float divisor,
                                  const torch::Tensor& scale, const torch::Tensor& shift, const QuantParams& p_qp,
                                  Rounding r = Rounding::half_even);

/// quantize_tensor(int8_matmul_float(a, a_qp, b, b_qp, out_qp, r), p_qp, r) bit for bit, without
/// the float output: each product's dequantized block is quantized with the next op's input point
/// p_qp while in cache (the pose transformer's context product handing codes to out_proj). int8
/// (batch..., m, n), row-major; with merge_heads (a (B, H, m, n) product) laid out as (B, m, H, n)
/// instead and returned as its transpose(1, 2) view, so that the heads' concatenation
/// `y.transpose(1, 2).reshape({B, m, H * n})` is free. Only where int8_fused_available.
torch::Tensor int8_matmul_codes(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                                const QuantParams& b_qp, const QuantParams& out_qp, const QuantParams& p_qp,
                                Rounding r = Rounding::half_even, bool merge_heads = false);

// ---- fake-quant references (float32), for agreement tests ---------------------------------------
// fake_quantize(op(fake_quantize(x, in_qp), fake_quantize(w, w_qp), dequantize_bias(quantize_bias(b))),
// out_qp), with the fp32 torch op (zero padding). The int8 op computes the same value with an exact
// sum and one float32 rounding of it; the float op rounds at every addition, so the two can differ
// by one step where the output lies within a few float steps of a rounding tie.

torch::Tensor fq_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                        const QuantParams& in_qp, const QuantParams& w_qp, const QuantParams& out_qp,
                        Rounding r = Rounding::half_even);
torch::Tensor fq_conv1d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                        const QuantParams& in_qp, const QuantParams& w_qp, const QuantParams& out_qp,
                        int64_t stride = 1, int64_t padding = 0, int64_t dilation = 1, int64_t groups = 1,
                        Rounding r = Rounding::half_even);
torch::Tensor fq_conv2d(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b,
                        const QuantParams& in_qp, const QuantParams& w_qp, const QuantParams& out_qp,
                        std::array<int64_t, 2> stride = {1, 1}, std::array<int64_t, 2> padding = {0, 0},
                        std::array<int64_t, 2> dilation = {1, 1}, int64_t groups = 1, Rounding r = Rounding::half_even);
torch::Tensor fq_matmul(const torch::Tensor& a, const QuantParams& a_qp, const torch::Tensor& b,
                        const QuantParams& b_qp, const QuantParams& out_qp, Rounding r = Rounding::half_even);

}  // namespace csipose
