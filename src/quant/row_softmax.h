#pragma once
// Softmax over the last dimension of many short rows (attention scores: WiFlow's axial attention
// softmaxes rows of 20 or 10 positions, 11,264 rows per sample at wiflow_half; the pose
// transformer's heads rows of 10-20 frames).
//
// ATen's CPU softmax vectorizes within one row, which for 20-element rows leaves most of each
// vector empty and pays a row's setup per 20 elements: 11-16% of a wiflow_half fp32 forward at
// batch 64 (`infer-bench --profile`; more than its axial-attention products). row_softmax works on
// blocks of rows: the exponentials of a whole block are one flat vectorized loop.
#include <torch/types.h>

#include "quant/quant_spec.h"

namespace csipose {

/// softmax(x * scale[c] + shift[c], dim = -1), where c is the index along dimension 1 and scale /
/// shift are per-channel vectors (undefined: 1 and 0; defined only for x of 3 or more dimensions). This is an eval-mode BatchNorm over
/// dimension 1 followed by the softmax, in one pass (WiFlow's bn_similarity -> softmax).
///
/// Contiguous float32 CPU tensors of at least 2 dimensions for which no gradient is recorded go
/// through the row kernel: e^t by a degree-6 polynomial on the reduced argument (Cephes expf, within
/// 2 ulp of the correctly rounded value; rows are shifted by their maximum first, so t <= 0), the
/// same float operations on every ISA (no FMA), row sums in index order and a multiply by the
/// sum's reciprocal. A row holding a NaN comes out all NaN, as in ATen. Anything else (autograd,
/// CUDA, other dtypes, strided views) is computed with torch ops.
torch::Tensor row_softmax(const torch::Tensor& x, const torch::Tensor& scale = {}, const torch::Tensor& shift = {});

/// row_softmax's kernel on raw memory, for callers that fuse it with their own passes (the int8
/// attention, quant/int8_ops.h): `rows` rows of n contiguous float32 values at x, each replaced by
/// softmax(x * a + b) (affine) or softmax(x), written to y (which may be x). The same float
/// operations as row_softmax, so the same bits for the same row and (a, b).
void softmax_rows(const float* x, float* y, int64_t rows, int64_t n, float a, float b, bool affine);

/// softmax_rows(x, tmp, rows, n, 1, 0, false) then quantize_span(tmp, rows * n, codes, p, r): the
/// attention probabilities' codes (p per-tensor, an int8 range). With row_scale / row_shift (both
/// or neither; one entry per row) row i is softmax(x * row_scale[i] + row_shift[i]) as
/// softmax_rows' affine form. False (codes unspecified) when a probability is not finite (a row
/// holding a NaN). With AVX-512 VBMI, half-even rounding and n <= 32 (a pose head's rows of 10
/// frames, WiFlow's of 10 and 20 positions) blocks of 16 rows run with a row per vector lane: the
/// columns gathered, the affine map, max / exponential / index-order sum / reciprocal product /
/// quantization lane by lane with the same float32 operations, the codes transposed back with
/// byte permutes.
bool softmax_rows_int8(const float* x, int64_t rows, int64_t n, const QuantParams& p, Rounding r, int8_t* codes,
                       const float* row_scale = nullptr, const float* row_shift = nullptr);

}  // namespace csipose
