#include "models/pose_transformer.h"

#include <ATen/Parallel.h>
#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/functional/linear.h>
#include <torch/utils.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <sstream>

#include "common/check.h"
#include "quant/int8_ops.h"
#include "quant/row_layer_norm.h"
#include "quant/row_softmax.h"
#include "quant/small_matmul.h"
#include "quant/token_codes.h"
#include "common/config_node.h"

namespace csipose {

// ---- config -----------------------------------------------------------------------------------

namespace {

PoseTransformerConfig preset(int64_t d, int64_t layers, int64_t heads, int64_t head_hidden, int64_t graph_hidden,
                             int64_t joint_embed) {
  PoseTransformerConfig c;
  c.d_model = d;
  c.layers = layers;
  c.heads = heads;
  c.head_hidden = head_hidden;
  c.graph_hidden = graph_hidden;
  c.joint_embed = joint_embed;
  return c;
}

struct Preset {
  const char* name;
  PoseTransformerConfig config;
};

// MODELS.md section 2: (d, L, H, head hidden, graph hidden, joint embed).
const std::vector<Preset>& presets() {
  static const std::vector<Preset> table = {
      {"pose_nano",
       preset(/*d=*/48, /*layers=*/1, /*heads=*/2, /*head_hidden=*/48, /*graph_hidden=*/0, /*joint_embed=*/0)},
      {"pose_micro", preset(64, 1, 2, 64, 64, 0)},
      {"pose_tiny", preset(96, 2, 4, 96, 64, 0)},
      {"pose_small", preset(128, 2, 4, 128, 64, 0)},
      {"pose_base", preset(160, 3, 4, 160, 64, 0)},
      {"pose_flagship", preset(256, 4, 8, 256, 96, 32)},
  };
  return table;
}

// The shortest of 15..17 significant digits that reads back as the same double.
std::string format_double(double v) {
  char buf[32];
  for (int precision = 15; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace

PoseTransformerConfig pose_transformer_preset(const std::string& name) {
  std::string names;
  for (const auto& p : presets()) {
    if (name == p.name) return p.config;
    names += (names.empty() ? "" : ", ") + std::string(p.name);
  }
  fail("unknown pose-transformer preset \"", name, "\"; expected one of: ", names);
}

const std::vector<std::string>& pose_transformer_preset_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& p : presets()) out.emplace_back(p.name);
    return out;
  }();
  return names;
}

PoseTransformerConfig::Problem PoseTransformerConfig::first_problem() const {
  auto positive = [](const char* field, int64_t v) -> Problem {
    if (v > 0) return {};
    return {field, str_cat("must be a positive integer (got ", v, ")")};
  };
  auto probability = [](const char* field, double v) -> Problem {
    if (std::isfinite(v) && v >= 0.0 && v < 1.0) return {};
    return {field, str_cat("must be a probability in [0, 1) (got ", format_double(v), ")")};
  };
  for (const Problem& p : {positive("d_model", d_model), positive("layers", layers), positive("heads", heads),
                           positive("ff_mult", ff_mult), probability("dropout", dropout),
                           positive("head_hidden", head_hidden), probability("head_dropout", head_dropout),
                           positive("keypoints", keypoints), positive("antennas", antennas),
                           positive("subcarriers", subcarriers), positive("packets", packets)})
    if (!p.field.empty()) return p;
  if (d_model % heads != 0)
    return {"heads", str_cat("must divide d_model = ", d_model, " (got ", heads, ")")};
  if (graph_hidden < 0)
    return {"graph_hidden", str_cat("must be >= 0 (0 = no graph refinement) (got ", graph_hidden, ")")};
  if (joint_embed < 0) return {"joint_embed", str_cat("must be >= 0 (0 = none) (got ", joint_embed, ")")};
  if (joint_embed > 0 && graph_hidden == 0)
    return {"joint_embed", str_cat("needs graph refinement (graph_hidden > 0), but graph_hidden = 0 (got ",
                                   joint_embed, ")")};
  if (graph_hidden > 0 && keypoints != 17)
    return {"keypoints", str_cat("graph refinement uses the COCO-17 skeleton and needs 17 (got ", keypoints, ")")};
  if (!std::isfinite(refine_scale) || refine_scale < 0.0)
    return {"refine_scale", str_cat("must be a finite number >= 0 (got ", format_double(refine_scale), ")")};
  return {};
}

void PoseTransformerConfig::validate() const {
  const Problem p = first_problem();
  if (!p.field.empty()) fail("pose_transformer: ", p.field, ": ", p.message);
}

PoseTransformerConfig PoseTransformerConfig::from_yaml(const ConfigNode& n, const PoseTransformerConfig& base) {
  PoseTransformerConfig c = base;
  c.d_model = n.get<int64_t>("d_model", c.d_model);
  c.layers = n.get<int64_t>("layers", c.layers);
  c.heads = n.get<int64_t>("heads", c.heads);
  c.ff_mult = n.get<int64_t>("ff_mult", c.ff_mult);
  c.dropout = n.get<double>("dropout", c.dropout);
  c.head_hidden = n.get<int64_t>("head_hidden", c.head_hidden);
  c.head_dropout = n.get<double>("head_dropout", c.head_dropout);
  c.graph_hidden = n.get<int64_t>("graph_hidden", c.graph_hidden);
  c.joint_embed = n.get<int64_t>("joint_embed", c.joint_embed);
  c.keypoints = n.get<int64_t>("keypoints", c.keypoints);
  c.antennas = n.get<int64_t>("antennas", c.antennas);
  c.subcarriers = n.get<int64_t>("subcarriers", c.subcarriers);
  c.packets = n.get<int64_t>("packets", c.packets);
  c.refine_scale = n.get<double>("refine_scale", c.refine_scale);
  const Problem p = c.first_problem();
  if (!p.field.empty()) n.error(p.field, p.message);
  return c;
}

PoseTransformerConfig PoseTransformerConfig::from_yaml(const ConfigNode& n) {
  return from_yaml(n, PoseTransformerConfig());
}

std::string PoseTransformerConfig::to_yaml() const {
  std::ostringstream o;
  o << "d_model: " << d_model << "\nlayers: " << layers << "\nheads: " << heads << "\nff_mult: " << ff_mult
    << "\ndropout: " << format_double(dropout) << "\nhead_hidden: " << head_hidden
    << "\nhead_dropout: " << format_double(head_dropout) << "\ngraph_hidden: " << graph_hidden
    << "\njoint_embed: " << joint_embed << "\nkeypoints: " << keypoints << "\nantennas: " << antennas
    << "\nsubcarriers: " << subcarriers << "\npackets: " << packets
    << "\nrefine_scale: " << format_double(refine_scale) << "\n";
  return o.str();
}

int64_t PoseTransformerConfig::parameter_count() const {
  const int64_t d = d_model, T = tokens(), F = token_dim(), ff = ff_mult * d_model, hh = head_hidden;
  const int64_t K = keypoints, g = graph_hidden, e = joint_embed;
  auto linear = [](int64_t in, int64_t out) { return in * out + out; };
  const int64_t layer = linear(d, 3 * d) + linear(d, d) + linear(d, ff) + linear(ff, d) + 4 * d;
  int64_t n = T * d + linear(F, d) + layers * layer + linear(d, 1) + linear(d, hh) + linear(hh, 2 * K);
  if (g > 0) n += K * e + linear(d + e + 2, g) + 2 * linear(g, g) + linear(g, 2);
  return n;
}

int64_t PoseTransformerConfig::macs_per_sample() const {
  const int64_t d = d_model, T = tokens(), F = token_dim(), ff = ff_mult * d_model, hh = head_hidden;
  const int64_t K = keypoints, g = graph_hidden, e = joint_embed;
  const int64_t layer = 3 * T * d * d      // in_proj
                        + 2 * T * T * d    // q k^T and weights @ v over all heads
                        + T * d * d        // out_proj
                        + 2 * T * d * ff;  // linear1, linear2
  int64_t macs = T * F * d + layers * layer + 2 * T * d /* att + weighted sum */ + d * hh + hh * 2 * K;
  if (g > 0) macs += K * (d + e + 2) * g + 2 * (K * K * g + K * g * g) + K * g * 2;
  return macs;
}

const std::vector<std::pair<int64_t, int64_t>>& coco17_bones() {
  static const std::vector<std::pair<int64_t, int64_t>> bones = {
      {0, 1}, {0, 2}, {1, 3}, {2, 4}, {5, 6}, {5, 7}, {7, 9}, {6, 8},
      {8, 10}, {5, 11}, {6, 12}, {11, 12}, {11, 13}, {13, 15}, {12, 14}, {14, 16}};
  return bones;
}

torch::Tensor coco17_normalized_adjacency() {
  torch::Tensor a = torch::eye(17, torch::kFloat32);
  auto acc = a.accessor<float, 2>();
  for (const auto& [i, j] : coco17_bones()) {
    acc[i][j] = 1.0f;
    acc[j][i] = 1.0f;
  }
  return a / a.sum(/*dim=*/1, /*keepdim=*/true);
}

torch::Tensor standardize_per_sample(const torch::Tensor& x) {
  CSIPOSE_CHECK(x.dim() >= 1 && x.size(0) > 0, "standardize_per_sample: expected (N, ...) with N > 0, got ", x.sizes());
  const torch::Tensor flat = x.reshape({x.size(0), -1});
  const int64_t n = flat.size(1);
  CSIPOSE_CHECK(n >= 2, "standardize_per_sample: need at least 2 values per sample, got ", n);
  const torch::Tensor mean = flat.mean(/*dim=*/1, /*keepdim=*/true);
  const torch::Tensor centered = flat - mean;
  // Unbiased (Bessel-corrected) standard deviation, as torch.std's default.
  const torch::Tensor std = (centered.pow(2).sum(/*dim=*/1, /*keepdim=*/true) / static_cast<double>(n - 1)).sqrt();
  return (centered / (std + 1e-6)).view(x.sizes());
}

namespace {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSIPOSE_TOKEN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CSIPOSE_TOKEN_CLONES
#endif

/// x[a][s][t] -> tokens[t][a * S + s] = (x - mean) / denom for one sample (as = a * S + s): the
/// float32 subtraction per element on every ISA clone, written row by row of the output so that
/// the stores are contiguous and the loop vectorizes, then the division of each row by
/// divide_span (the IEEE quotient, bit for bit, without a vdivps per 16 values where AVX-512 has
/// the multiply-and-correct form).
CSIPOSE_TOKEN_CLONES
void centered_tokens_of_sample(const float* xs, float* os, int64_t as_count, int64_t T, float mean) {
  for (int64_t t = 0; t < T; ++t) {
    float* row = os + t * as_count;
    for (int64_t as = 0; as < as_count; ++as) row[as] = xs[as * T + t] - mean;
  }
}

void tokens_of_sample(const float* xs, float* os, int64_t as_count, int64_t T, float mean, float denom) {
  centered_tokens_of_sample(xs, os, as_count, T, mean);
  divide_span(os, as_count * T, denom, os);
}

}  // namespace

namespace {
/// The mean and the divisor (unbiased standard deviation + 1e-6, as the torch-op form: unbiased
/// variance, float32 sqrt, + 1e-6 in float32) of four samples' n values each (xs[s]; a sample may
/// repeat). Float64 sums in 8 interleaved partial sums per sample (j mod 8), combined pairwise: one
/// chain of 3,420 dependent additions per sample was a fifth of a pose_micro int8 forward at batch
/// 256. The order can change a float64 sum of float32 values only in its last bits, which rarely
/// reaches the float32 mean; the result stays within float32 rounding of the torch-op form
/// (tested). Four samples at once: 32 independent addition chains keep the adders busy where one
/// sample's 8 wait on the float64 add latency; each sample's sums are the same, so the bits do not
/// depend on which samples share a call (tested). Cloned per ISA: the same float64 additions on
/// every clone; nothing to contract, the products are float32.
CSIPOSE_TOKEN_CLONES
void sample_stats4_generic(const float* const xs[4], int64_t n, float mean[4], float denom[4]) {
  double p[4][8] = {};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int s = 0; s < 4; ++s)
      for (int k = 0; k < 8; ++k) p[s][k] += static_cast<double>(xs[s][j + k]);
  for (int s = 0; s < 4; ++s)
    for (int64_t jj = j, k = 0; jj < n; ++jj, ++k) p[s][k] += static_cast<double>(xs[s][jj]);
  float m[4];
  for (int s = 0; s < 4; ++s) {
    const double* q = p[s];
    const double sum = ((q[0] + q[4]) + (q[1] + q[5])) + ((q[2] + q[6]) + (q[3] + q[7]));
    m[s] = static_cast<float>(sum / static_cast<double>(n));
  }
  double v[4][8] = {};
  for (j = 0; j + 8 <= n; j += 8)
    for (int s = 0; s < 4; ++s)
      for (int k = 0; k < 8; ++k) {
        const float c = xs[s][j + k] - m[s];
        v[s][k] += static_cast<double>(c * c);
      }
  for (int s = 0; s < 4; ++s)
    for (int64_t jj = j, k = 0; jj < n; ++jj, ++k) {
      const float c = xs[s][jj] - m[s];
      v[s][k] += static_cast<double>(c * c);
    }
  for (int s = 0; s < 4; ++s) {
    const double* q = v[s];
    const double sq = ((q[0] + q[4]) + (q[1] + q[5])) + ((q[2] + q[6]) + (q[3] + q[7]));
    mean[s] = m[s];
    denom[s] = std::sqrt(static_cast<float>(sq / static_cast<double>(n - 1))) + 1e-6f;
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CSIPOSE_HAVE_STATS_AVX512 1
/// sample_stats4_generic with AVX-512 (GCC scalarized the generic form's second pass): lane k of
/// sample s's register is partial sum p[s][k], the same float64 additions in the same order (a
/// masked tail adds +0 to the lanes past n, which leaves a sum that started at +0 unchanged), and
/// the same pairwise combination.
// GCC 12's _mm512_cvtps_pd passes an undefined merge vector and warns about it (a false positive).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512vl"))) void sample_stats4_avx512(const float* const xs[4], int64_t n, float mean[4],
                                                             float denom[4]) {
  __m512d p[4] = {_mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd(), _mm512_setzero_pd()};
  alignas(64) double q[8];
#define CSIPOSE_COMBINE8(v) \
  (_mm512_store_pd(q, (v)), ((q[0] + q[4]) + (q[1] + q[5])) + ((q[2] + q[6]) + (q[3] + q[7])))
  const int64_t full = n / 8 * 8;
  const __mmask8 tail = static_cast<__mmask8>((1u << (n - full)) - 1u);
  for (int64_t j = 0; j < full; j += 8)
    for (int s = 0; s < 4; ++s) p[s] = _mm512_add_pd(p[s], _mm512_cvtps_pd(_mm256_loadu_ps(xs[s] + j)));
  if (tail != 0)
    for (int s = 0; s < 4; ++s)
      p[s] = _mm512_add_pd(p[s], _mm512_cvtps_pd(_mm256_maskz_loadu_ps(tail, xs[s] + full)));
  __m256 m[4];
  float mf[4];
  for (int s = 0; s < 4; ++s) {
    mf[s] = static_cast<float>(CSIPOSE_COMBINE8(p[s]) / static_cast<double>(n));
    m[s] = _mm256_set1_ps(mf[s]);
    p[s] = _mm512_setzero_pd();
  }
  for (int64_t j = 0; j < full; j += 8)
    for (int s = 0; s < 4; ++s) {
      const __m256 c = _mm256_sub_ps(_mm256_loadu_ps(xs[s] + j), m[s]);
      p[s] = _mm512_add_pd(p[s], _mm512_cvtps_pd(_mm256_mul_ps(c, c)));
    }
  if (tail != 0)
    for (int s = 0; s < 4; ++s) {
      const __m256 c = _mm256_sub_ps(_mm256_maskz_loadu_ps(tail, xs[s] + full), m[s]);
      p[s] = _mm512_mask_add_pd(p[s], tail, p[s], _mm512_cvtps_pd(_mm256_mul_ps(c, c)));
    }
  for (int s = 0; s < 4; ++s) {
    mean[s] = mf[s];
    denom[s] = std::sqrt(static_cast<float>(CSIPOSE_COMBINE8(p[s]) / static_cast<double>(n - 1))) + 1e-6f;
  }
#undef CSIPOSE_COMBINE8
}
#pragma GCC diagnostic pop
#endif

void sample_stats4(const float* const xs[4], int64_t n, float mean[4], float denom[4]) {
#ifdef CSIPOSE_HAVE_STATS_AVX512
  // Where the CPU has it and set_int8_avx512_kernels leaves the explicit kernels on (tests compare).
  static const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
  if (avx512 && int8_avx512_kernels_active()) return sample_stats4_avx512(xs, n, mean, denom);
#endif
  sample_stats4_generic(xs, n, mean, denom);
}

/// f(i, mean, denom) for every sample i in [b, e) with its statistics, computed four samples at a
/// time (sample_stats4).
template <typename F>
void for_samples_with_stats(const float* src, int64_t n, int64_t b, int64_t e, const F& f) {
  for (int64_t i0 = b; i0 < e; i0 += 4) {
    const int64_t count = std::min<int64_t>(4, e - i0);
    const float* xs[4];
    for (int s = 0; s < 4; ++s) xs[s] = src + (i0 + std::min<int64_t>(s, count - 1)) * n;
    float mean[4], denom[4];
    sample_stats4(xs, n, mean, denom);
    for (int64_t s = 0; s < count; ++s) f(i0 + s, mean[s], denom[s]);
  }
}
}  // namespace

torch::Tensor standardized_tokens(const torch::Tensor& x) {
  CSIPOSE_CHECK(x.dim() == 4 && x.size(0) > 0, "standardized_tokens: expected (N, A, S, T), got ", x.sizes());
  const int64_t N = x.size(0), A = x.size(1), S = x.size(2), T = x.size(3), n = A * S * T;
  const bool grad = torch::GradMode::is_enabled() && x.requires_grad();
  if (grad || x.scalar_type() != torch::kFloat || !x.device().is_cpu() || n < 2)
    return standardize_per_sample(x).permute({0, 3, 1, 2}).reshape({N, T, A * S});
  const torch::Tensor xc = x.contiguous();
  torch::Tensor out = torch::empty({N, T, A * S}, x.options());
  const float* src = xc.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, N, 4, [&](int64_t b, int64_t e) {
    for_samples_with_stats(src, n, b, e, [&](int64_t i, float mean, float denom) {
      tokens_of_sample(src + i * n, dst + i * n, A * S, T, mean, denom);
    });
  });
  return out;
}

torch::Tensor standardized_tokens_int8(const torch::Tensor& x, const QuantParams& point, Rounding r) {
  CSIPOSE_CHECK(x.dim() == 4 && x.size(0) > 0 && x.scalar_type() == torch::kFloat && x.device().is_cpu(),
                "standardized_tokens_int8: expected a float32 CPU tensor (N, A, S, T), got ", x.sizes());
  const int64_t N = x.size(0), A = x.size(1), S = x.size(2), T = x.size(3), n = A * S * T;
  CSIPOSE_CHECK(n >= 2, "standardized_tokens_int8: need at least 2 values per sample, got ", n);
  const torch::Tensor xc = x.contiguous();
  torch::Tensor out = torch::empty({N, T, A * S}, x.options().dtype(torch::kChar));
  const float* src = xc.data_ptr<float>();
  int8_t* dst = out.data_ptr<int8_t>();
  std::atomic<bool> bad{false};
  at::parallel_for(0, N, 4, [&](int64_t b, int64_t e) {
    for_samples_with_stats(src, n, b, e, [&](int64_t i, float mean, float denom) {
      if (!quantize_standardized_transposed(src + i * n, A * S, T, mean, denom, point, r, dst + i * n,
                                            /*from_stats=*/true))
        bad.store(true);
    });
  });
  CSIPOSE_CHECK(!bad.load(), "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  return out;
}

// ---- attention and encoder layers -------------------------------------------------------------

PoseSelfAttentionImpl::PoseSelfAttentionImpl(int64_t d_model, int64_t heads, double dropout)
    : heads_(heads), dropout_(dropout) {
  CSIPOSE_CHECK(heads > 0 && d_model % heads == 0, "PoseSelfAttention: heads = ", heads,
                " must divide d_model = ", d_model);
  in_proj_weight = register_parameter("in_proj_weight", torch::empty({3 * d_model, d_model}));
  in_proj_bias = register_parameter("in_proj_bias", torch::empty({3 * d_model}));
  out_proj = register_module("out_proj", QLinear(d_model, d_model));
  scores_mm = register_module("scores_mm", QMatmul());
  context_mm = register_module("context_mm", QMatmul());
  // nn.MultiheadAttention._reset_parameters (out_proj.weight keeps Linear's default init).
  torch::NoGradGuard no_grad;
  torch::nn::init::xavier_uniform_(in_proj_weight);
  torch::nn::init::zeros_(in_proj_bias);
  torch::nn::init::zeros_(out_proj->bias);
}

torch::Tensor PoseSelfAttentionImpl::forward_int8(const torch::Tensor& x) {
  const int64_t N = x.size(0), T = x.size(1), d = x.size(2), hd = d / heads_;
  const bool training = is_training();
  const torch::Device device = x.device();
  const auto into_q = int8_matmul_input(*scores_mm, 0, device, training);
  const auto into_k = int8_matmul_input(*scores_mm, 1, device, training);
  const auto into_w = int8_matmul_input(*context_mm, 0, device, training);
  const auto into_v = int8_matmul_input(*context_mm, 1, device, training);
  if (!into_q || !into_k || !into_w || !into_v || into_q->rounding != into_w->rounding ||
      !int8_chain_input(this, device, training) || !int8_chain_input(out_proj.get(), device, training))
    return {};
  // q, k, v leave the in-projection as the codes of the products' input points, each laid out
  // (N, H, T, hd) already.
  const torch::Tensor qkv = int8_linear_split(this, x, {*into_q, *into_k, *into_v}, heads_, training);
  if (!qkv.defined()) return {};
  const torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  const torch::Tensor w = int8_attention_probs(*scores_mm, *context_mm, /*input=*/0, q, k.transpose(-2, -1),
                                               static_cast<float>(std::sqrt(static_cast<double>(hd))), {}, {},
                                               training);
  CSIPOSE_CHECK(w.defined(), "PoseSelfAttention: the int8 attention probabilities did not run");
  // The context product hands out_proj its input codes; the heads are merged as int8.
  const torch::Tensor o = int8_matmul_chain(*context_mm, w, v, out_proj.get(), /*merge_heads=*/true, training);
  CSIPOSE_CHECK(o.defined(), "PoseSelfAttention: the int8 context product did not run");
  return int8_chain_forward({{out_proj.get()}}, o.transpose(1, 2).reshape({N, T, d}), training);
}

torch::Tensor PoseSelfAttentionImpl::forward(const torch::Tensor& x) {
  const int64_t N = x.size(0), T = x.size(1), d = x.size(2), hd = d / heads_;
  if (const torch::Tensor y = forward_int8(x); y.defined()) return y;
  torch::Tensor proj;
  if (x.scalar_type() == torch::kChar) {  // codes at the in-projection's input point (a converted model)
    proj = int8_chain_forward({{this}}, x, is_training());
    CSIPOSE_CHECK(proj.defined(), "PoseSelfAttention: int8 input codes need a converted in-projection in eval mode");
  } else {
    proj = quantized_linear(hook.get(), is_training(), x, in_proj_weight, in_proj_bias);
  }
  const auto qkv = proj.chunk(3, /*dim=*/-1);
  // (N, T, d) -> (N, H, T, hd)
  auto split_heads = [&](const torch::Tensor& t) { return t.reshape({N, T, heads_, hd}).transpose(1, 2); };
  const torch::Tensor q = split_heads(qkv[0]), k = split_heads(qkv[1]), v = split_heads(qkv[2]);
  const double scaling = std::sqrt(static_cast<double>(hd));
  // A converted model: the scores product, the scaling, the softmax and context_mm's input point
  // in one pass, giving context_mm its int8 codes (undefined when not converted). The model
  // divides a float32 tensor by the double scaling, which ATen does in float32 (tensor / float).
  torch::Tensor w = int8_attention_probs(*scores_mm, *context_mm, /*input=*/0, q, k.transpose(-2, -1),
                                         static_cast<float>(scaling), {}, {}, is_training());
  if (!w.defined()) {
    w = scores_mm(q, k.transpose(-2, -1)) / scaling;  // (N, H, T, T)
    w = row_softmax(w.contiguous());  // torch::softmax(w, -1) under autograd; the row kernel in inference
    w = torch::dropout(w, dropout_, is_training());
  }
  const torch::Tensor o = context_mm(w, v).transpose(1, 2).reshape({N, T, d});  // (N, T, d)
  return out_proj(o);
}

PoseEncoderLayerImpl::PoseEncoderLayerImpl(int64_t d_model, int64_t heads, int64_t dim_feedforward, double p) {
  self_attn = register_module("self_attn", PoseSelfAttention(d_model, heads, p));
  linear1 = register_module("linear1", QLinear(d_model, dim_feedforward));
  dropout = register_module("dropout", torch::nn::Dropout(p));
  linear2 = register_module("linear2", QLinear(dim_feedforward, d_model));
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model}).eps(1e-5)));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d_model}).eps(1e-5)));
  dropout1 = register_module("dropout1", torch::nn::Dropout(p));
  dropout2 = register_module("dropout2", torch::nn::Dropout(p));
}

namespace {
/// norm(residual + dropout(sub)) in training; in inference the one-pass row kernel (the dropout is
/// the identity there).
torch::Tensor add_norm(torch::nn::LayerNorm& norm, torch::nn::Dropout& dropout, const torch::Tensor& sub,
                       const torch::Tensor& residual, bool training) {
  if (training) return norm(residual + dropout(sub));
  return row_layer_norm(sub, residual, norm->weight, norm->bias, norm->options.eps());
}
}  // namespace

torch::Tensor PoseEncoderLayerImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = add_norm(norm1, dropout1, self_attn(x), x, is_training());
  // Converted: linear1 hands int8 codes through GELU to linear2 (quant/qmodules.h, int8 chains).
  torch::Tensor ff = int8_chain_forward({{linear1.get(), nullptr, -1, 0, Int8Between::gelu}, {linear2.get()}}, h,
                                        is_training());
  // GELU exact (erf form): torch::gelu's default on LibTorch 1.13 and 2.x.
  if (!ff.defined()) ff = linear2(dropout(torch::gelu(linear1(h))));
  return add_norm(norm2, dropout2, ff, h, is_training());
}

std::optional<std::pair<torch::Tensor, torch::Tensor>> PoseEncoderLayerImpl::forward_int8(const torch::Tensor& x,
                                                                                         const torch::Tensor& xq,
                                                                                         Quantizable* next) {
  if (is_training() || !x.device().is_cpu()) return std::nullopt;
  const auto into_ff = int8_chain_input(linear1.get(), x.device(), false);
  const auto into_next = int8_chain_input(next, x.device(), false);
  if (!into_ff || !into_next || !int8_chain_input(self_attn.get(), x.device(), false) ||
      !int8_chain_input(linear2.get(), x.device(), false))
    return std::nullopt;
  const torch::Tensor a = self_attn(xq);
  const auto [h, hq] = row_layer_norm_int8(a, x, norm1->weight, norm1->bias, norm1->options.eps(), into_ff->point,
                                           into_ff->rounding);
  const torch::Tensor ff =
      int8_chain_forward({{linear1.get(), nullptr, -1, 0, Int8Between::gelu}, {linear2.get()}}, hq, false);
  return row_layer_norm_int8(ff, h, norm2->weight, norm2->bias, norm2->options.eps(), into_next->point,
                             into_next->rounding);
}

PoseEncoderImpl::PoseEncoderImpl(int64_t num_layers, int64_t d_model, int64_t heads, int64_t dim_feedforward,
                                 double dropout) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < num_layers; ++i)
    layers->push_back(PoseEncoderLayer(d_model, heads, dim_feedforward, dropout));
  // nn.TransformerEncoder deep-copies one layer: all layers start from layer 0's weights.
  torch::NoGradGuard no_grad;
  const auto first = layers[0]->named_parameters(/*recurse=*/true);
  for (size_t i = 1; i < layers->size(); ++i)
    for (auto& p : layers[i]->named_parameters(/*recurse=*/true)) p.value().copy_(first[p.key()]);
}

torch::Tensor PoseEncoderImpl::forward(torch::Tensor x) {
  for (size_t i = 0; i < layers->size(); ++i) x = layers->ptr<PoseEncoderLayerImpl>(i)->forward(x);
  return x;
}

// ---- graph refinement -------------------------------------------------------------------------

PoseGraphRefineImpl::PoseGraphRefineImpl(int64_t d_model, int64_t hidden, int64_t joint_embed, int64_t keypoints,
                                         double refine_scale)
    : refine_scale_(refine_scale) {
  CSIPOSE_CHECK(keypoints == 17, "PoseGraphRefine: the COCO-17 skeleton needs 17 keypoints, got ", keypoints);
  if (joint_embed > 0) {
    je = register_parameter("je", torch::empty({keypoints, joint_embed}));
    torch::NoGradGuard no_grad;
    torch::nn::init::normal_(je, /*mean=*/0.0, /*std=*/0.02);
  }
  inp = register_module("inp", QLinear(d_model + joint_embed + 2, hidden));
  g1 = register_module("g1", QLinear(hidden, hidden));
  g2 = register_module("g2", QLinear(hidden, hidden));
  out = register_module("out", QLinear(hidden, 2));
  adjacency_ = coco17_normalized_adjacency();
}

torch::Tensor PoseGraphRefineImpl::forward(const torch::Tensor& z, const torch::Tensor& kp0) {
  const int64_t N = z.size(0), K = kp0.size(1);
  // A is not a registered buffer (it must stay out of the state dict), so Module::to() does not
  // move it: follow the input here instead (once per device / dtype change).
  if (adjacency_.device() != z.device() || adjacency_.scalar_type() != z.scalar_type())
    adjacency_ = adjacency_.to(z.device(), z.scalar_type());
  // inp's input: cat[z per joint (N, K, d), je (N, K, e), kp0 (N, K, 2)].
  const std::vector<torch::Tensor> parts{z.unsqueeze(1), je.defined() ? je.unsqueeze(0) : torch::Tensor(), kp0};
  const auto joints = [&](const torch::Tensor& part) { return part.expand({N, K, part.size(2)}); };
  const torch::Device device = z.device();
  // Converted: int8 codes from inp to out. Each op's ReLU is the lower clamp of its output codes,
  // the adjacency product takes and gives codes (small_matmul_int8: the float products and sums of
  // small_matmul on the dequantized codes, the next op's input point) and g2 hands its ReLU codes
  // to out through a code table: no float activation between inp and out.
  const auto from_inp = int8_chain_output(inp.get(), device, is_training());
  const auto from_g1 = int8_chain_output(g1.get(), device, is_training());
  const auto into_g1 = int8_chain_input(g1.get(), device, is_training());
  const auto into_g2 = int8_chain_input(g2.get(), device, is_training());
  if (from_inp && from_g1 && into_g1 && into_g2 && into_g1->rounding == into_g2->rounding && z.device().is_cpu() &&
      z.scalar_type() == torch::kFloat && kp0.scalar_type() == torch::kFloat &&
      int8_chain_input(out.get(), device, is_training()) && adjacency_.device().is_cpu()) {
    // inp's input codes: quantization is elementwise, so the codes of the concatenation are the
    // concatenation of the parts' codes, and z's are made once per sample instead of per joint.
    const auto into_inp = int8_chain_input(inp.get(), device, is_training());
    std::vector<torch::Tensor> codes;
    for (const torch::Tensor& part : parts)
      if (part.defined()) codes.push_back(joints(quantize_tensor_cpu(part.contiguous(), into_inp->point, into_inp->rounding)));
    torch::Tensor c = int8_chain_codes({{inp.get(), nullptr, -1, 0, Int8Between::relu}}, torch::cat(codes, -1),
                                       is_training());
    c = small_matmul_int8(adjacency_, c, *from_inp, into_g1->point, into_g1->rounding);
    c = int8_chain_codes({{g1.get(), nullptr, -1, 0, Int8Between::relu}}, c, is_training());
    c = small_matmul_int8(adjacency_, c, *from_g1, into_g2->point, into_g2->rounding);
    const torch::Tensor y =
        int8_chain_forward({{g2.get(), nullptr, -1, 0, Int8Between::relu}, {out.get()}}, c, is_training());
    return kp0 + refine_scale_ * torch::tanh(y);
  }
  std::vector<torch::Tensor> floats;
  for (const torch::Tensor& part : parts)
    if (part.defined()) floats.push_back(joints(part));
  // relu(linear(x)): converted, the ReLU is folded into the linear's requantization (an int8
  // chain of one op, exact).
  const auto linear_relu = [&](QLinear& l, const torch::Tensor& x) {
    const torch::Tensor y = int8_chain_forward({{l.get(), nullptr, -1, 0, Int8Between::relu}}, x, is_training());
    return y.defined() ? y : torch::relu(l(x));
  };
  torch::Tensor f = linear_relu(inp, torch::cat(floats, /*dim=*/-1));  // (N, K, g)
  f = linear_relu(g1, small_matmul(adjacency_, f));
  f = linear_relu(g2, small_matmul(adjacency_, f));
  return kp0 + refine_scale_ * torch::tanh(out(f));
}

// ---- the model --------------------------------------------------------------------------------

PoseTransformerImpl::PoseTransformerImpl(const PoseTransformerConfig& config) : config_(config) {
  config_.validate();
  const auto& c = config_;
  const int64_t d = c.d_model;
  // Registration order = state-dict order of the PyTorch reference.
  pos = register_parameter("pos", torch::empty({1, c.tokens(), d}));
  {
    torch::NoGradGuard no_grad;
    torch::nn::init::normal_(pos, /*mean=*/0.0, /*std=*/0.02);
  }
  proj = register_module("proj", QLinear(c.token_dim(), d));
  tf = register_module("tf", PoseEncoder(c.layers, d, c.heads, c.ff_mult * d, c.dropout));
  att = register_module("att", QLinear(d, 1));
  head = register_module("head", torch::nn::Sequential(QLinear(d, c.head_hidden), torch::nn::GELU(),
                                                        torch::nn::Dropout(c.head_dropout),
                                                        QLinear(c.head_hidden, 2 * c.keypoints)));
  if (c.graph_hidden > 0)
    gr = register_module("gr", PoseGraphRefine(d, c.graph_hidden, c.joint_embed, c.keypoints, c.refine_scale));
}

std::vector<int64_t> PoseTransformerImpl::input_shape() const {
  return {config_.antennas, config_.subcarriers, config_.packets};
}

torch::Tensor PoseTransformerImpl::encode(const torch::Tensor& x) {
  const auto& c = config_;
  CSIPOSE_CHECK(x.dim() == 4 && x.size(1) == c.antennas && x.size(2) == c.subcarriers && x.size(3) == c.packets,
                "pose_transformer: expected input (N, ", c.antennas, ", ", c.subcarriers, ", ", c.packets, "), got ",
                x.sizes());
  // Converted: the tokens are quantized as they are made (proj's input codes, no float tokens)
  // and proj takes the codes (an int8 chain of one op).
  torch::Tensor projected;
  if (x.scalar_type() == torch::kFloat && x.device().is_cpu() && !(torch::GradMode::is_enabled() && x.requires_grad()))
    if (const auto in = int8_chain_input(proj.get(), x.device(), is_training()))
      projected = int8_chain_forward({{proj.get()}}, standardized_tokens_int8(x, in->point, in->rounding), is_training());
  if (!projected.defined()) projected = proj(standardized_tokens(x));  // (N, T, d)
  torch::Tensor h;
  torch::Tensor logits = encode_int8(projected, h);  // converted: the layers hand on codes, att takes them
  if (!logits.defined()) {
    h = tf(projected + pos);  // (N, T, d)
    logits = att(h);
  }
  const torch::Tensor w = torch::softmax(logits, /*dim=*/1);  // (N, T, 1)
  return (w * h).sum(/*dim=*/1);                              // (N, d)
}

torch::Tensor PoseTransformerImpl::encode_int8(const torch::Tensor& projected, torch::Tensor& h) {
  if (is_training() || !projected.device().is_cpu() || projected.scalar_type() != torch::kFloat ||
      (torch::GradMode::is_enabled() && (projected.requires_grad() || pos.requires_grad())))
    return {};
  const auto& layers = tf->layers;
  const auto into_first = int8_chain_input(layers->ptr<PoseEncoderLayerImpl>(0)->self_attn.get(), projected.device(), false);
  if (!into_first || !int8_chain_input(att.get(), projected.device(), false)) return {};
  // h = projected + pos and the first layer's input codes, sample by sample while the sum is in L1
  // (the float32 additions of ATen's broadcast add, then quantize_span: quantize_tensor's codes).
  const torch::Tensor pc = projected.contiguous(), posc = pos.contiguous();
  CSIPOSE_CHECK(pc.dim() == 3 && posc.numel() == pc.size(1) * pc.size(2), "pose_transformer: projected tokens ",
                pc.sizes(), " do not match pos ", posc.sizes());
  const int64_t N = pc.size(0), td = pc.size(1) * pc.size(2);
  torch::Tensor x = torch::empty_like(pc), xq = torch::empty(pc.sizes(), pc.options().dtype(torch::kChar));
  {
    const float* src = pc.data_ptr<float>();
    const float* pp = posc.data_ptr<float>();
    float* dst = x.data_ptr<float>();
    int8_t* codes = xq.data_ptr<int8_t>();
    std::atomic<bool> bad{false};
    at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(td, 1)), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const float* s = src + i * td;
        float* d = dst + i * td;
        for (int64_t j = 0; j < td; ++j) d[j] = s[j] + pp[j];
        if (!quantize_span(d, td, codes + i * td, into_first->point, into_first->rounding)) bad.store(true);
      }
    });
    CSIPOSE_CHECK(!bad.load(), "quantize_tensor: the tensor has non-finite values (NaN or Inf)");
  }
  // Each layer's output leaves with the codes of the next op's input point (the next layer's
  // in-projection, or att), made in its last LayerNorm's pass (row_layer_norm_int8).
  for (size_t i = 0; i < layers->size(); ++i) {
    Quantizable* next = i + 1 < layers->size() ? static_cast<Quantizable*>(layers->ptr<PoseEncoderLayerImpl>(i + 1)->self_attn.get())
                                               : static_cast<Quantizable*>(att.get());
    auto out = layers->ptr<PoseEncoderLayerImpl>(i)->forward_int8(x, xq, next);
    if (!out) {
      // An op of this layer or the next one is a float island of the policy (or not converted):
      // the float path from here on (the same values: x is this layer's float input).
      for (size_t j = i; j < layers->size(); ++j) x = layers->ptr<PoseEncoderLayerImpl>(j)->forward(x);
      h = x;
      return att(x);
    }
    x = out->first;
    xq = out->second;
  }
  h = x;
  return int8_chain_forward({{att.get()}}, xq, false);
}

torch::Tensor PoseTransformerImpl::keypoints0(const torch::Tensor& z) {
  // head = QLinear, GELU, Dropout, QLinear: converted, the two linears chain in int8.
  torch::Tensor y = int8_chain_forward({{dynamic_cast<Quantizable*>(head->ptr(0).get()), nullptr, -1, 0, Int8Between::gelu},
                                        {dynamic_cast<Quantizable*>(head->ptr(3).get())}},
                                       z, is_training());
  if (!y.defined()) y = head->forward(z);
  return torch::sigmoid(y).view({z.size(0), config_.keypoints, 2});
}

torch::Tensor PoseTransformerImpl::forward_coarse(const torch::Tensor& x) { return keypoints0(encode(x)); }

torch::Tensor PoseTransformerImpl::forward(const torch::Tensor& x) {
  const torch::Tensor z = encode(x);
  const torch::Tensor kp0 = keypoints0(z);
  return gr ? gr(z, kp0) : kp0;
}

}  // namespace csipose
