#pragma once
// The pose-transformer family (MM-Fi input): per-sample standardization, one token per CSI packet,
// a post-LN transformer encoder, attention pooling, an MLP keypoint head and an optional graph
// refinement over the COCO-17 skeleton.
//
//   x: (N, 3, 114, 10) -> standardize -> tokens (N, 10, 342) -> proj (N, 10, d) + pos
//      -> tf (L post-LN encoder layers) (N, 10, d) -> attention pooling z (N, d)
//      -> head -> sigmoid -> kp0 (N, 17, 2) -> [gr] kp0 + refine_scale * tanh(...) (N, 17, 2)
//
// Parameter names and shapes are the checkpoint format and equal PyTorch's layout exactly
// (tests/models/reference/pose_{micro,flagship}.state_dict.txt), so weights move between csipose
// and PyTorch through safetensors in both directions:
//   pos (1, T, d); proj.{weight,bias};
//   tf.layers.<i>.self_attn.{in_proj_weight (3d, d), in_proj_bias (3d), out_proj.{weight,bias}},
//   tf.layers.<i>.{linear1, linear2, norm1, norm2}.{weight,bias};
//   att.{weight (1, d), bias (1)}; head.0.{weight,bias}; head.3.{weight,bias};
//   gr.je (K, joint_embed) when joint_embed > 0; gr.{inp, g1, g2, out}.{weight,bias}.
// The graph's normalized adjacency is not part of the state dict (PyTorch: a non-persistent buffer).
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/modules/dropout.h>

#include <cstdint>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "models/pose_model.h"

#include "quant/qmodules.h"

namespace csipose {
class ConfigNode;

struct PoseTransformerConfig {
  int64_t d_model = 64;        ///< token width d
  int64_t layers = 1;          ///< encoder layers L
  int64_t heads = 2;           ///< attention heads H (must divide d_model)
  int64_t ff_mult = 2;         ///< feed-forward width = ff_mult * d_model
  double dropout = 0.2;        ///< encoder dropout (attention weights, after attention, in and after the FFN)
  int64_t head_hidden = 64;    ///< hidden width of the keypoint MLP head
  double head_dropout = 0.3;   ///< dropout between the head's two linears
  int64_t graph_hidden = 64;   ///< graph-refinement width; 0 = no graph refinement
  int64_t joint_embed = 0;     ///< learned per-joint embedding width fed to the graph; 0 = none
  int64_t keypoints = 17;      ///< K output joints (graph refinement needs the COCO-17 skeleton)
  int64_t antennas = 3;        ///< input dim 1
  int64_t subcarriers = 114;   ///< input dim 2
  int64_t packets = 10;        ///< input dim 3 = number of tokens T
  double refine_scale = 0.3;   ///< out = kp0 + refine_scale * tanh(gr(...))

  /// Reads the keys above from `node`, starting from `base` (e.g. a preset); absent keys keep the
  /// base value. Validates and reports problems at the offending key's file:line. Does NOT call
  /// node.finish(): the caller owns the mapping (it may hold a `type:` key too).
  static PoseTransformerConfig from_yaml(const ConfigNode& node, const PoseTransformerConfig& base);
  /// The same starting from the defaults above.
  static PoseTransformerConfig from_yaml(const ConfigNode& node);
  /// Every field, one `key: value` line each (doubles round-trip exactly).
  std::string to_yaml() const;
  /// Throws csipose::Error "pose_transformer: <field>: <problem> (got <value>)" for the first problem.
  void validate() const;

  struct Problem {
    std::string field;    ///< the config key at fault ("" when none)
    std::string message;  ///< what is wrong, with the value
  };
  /// The first problem, or {"", ""} when the config is valid (validate() and from_yaml() use it).
  Problem first_problem() const;

  int64_t tokens() const { return packets; }                  ///< T
  int64_t token_dim() const { return antennas * subcarriers; }  ///< F = 342
  int64_t head_dim() const { return d_model / heads; }
  /// Trainable parameters, computed from the formulae (equals count_parameters of the model).
  int64_t parameter_count() const;
  /// Multiply-accumulates per sample; see PoseTransformerImpl::macs_per_sample.
  int64_t macs_per_sample() const;
};

/// Presets of MODELS.md section 2: pose_nano, pose_micro, pose_tiny, pose_small, pose_base,
/// pose_flagship. Throws naming the available presets for an unknown name.
PoseTransformerConfig pose_transformer_preset(const std::string& name);
const std::vector<std::string>& pose_transformer_preset_names();

/// The 16 COCO-17 bones (parent, child) used by the graph refinement.
const std::vector<std::pair<int64_t, int64_t>>& coco17_bones();
/// Row-normalized (I + adjacency) of the COCO-17 skeleton, (17, 17) float32 on the CPU.
torch::Tensor coco17_normalized_adjacency();

// ---- building blocks (public so that quantization and export can reach every linear) ----------

/// PyTorch's nn.MultiheadAttention for self-attention with batch_first semantics, written out so
/// it computes identically on LibTorch 1.13 and 2.x:
///   q, k, v = chunk3(x W_in^T + b_in); per head softmax(q k^T / sqrt(head_dim)) -> dropout -> @ v;
///   concat heads -> out_proj.
/// Parameters: in_proj_weight (3d, d), in_proj_bias (3d), out_proj.{weight (d, d), bias (d)}.
/// Init as PyTorch: in_proj_weight xavier-uniform, in_proj_bias and out_proj.bias zero,
/// out_proj.weight Linear's default.
/// Quantizable as the in-projection (a linear with PyTorch's parameter names, so the module itself
/// carries that hook); the two products are QMatmul children.
class PoseSelfAttentionImpl : public torch::nn::Module, public Quantizable {
 public:
  PoseSelfAttentionImpl(int64_t d_model, int64_t heads, double dropout);
  /// x: (N, T, d) -> (N, T, d)
  torch::Tensor forward(const torch::Tensor& x);
  const char* op_kind() const override { return "linear"; }
  torch::Tensor op_weight() const override { return in_proj_weight; }
  torch::Tensor op_bias() const override { return in_proj_bias; }

  torch::Tensor in_proj_weight, in_proj_bias;
  QLinear out_proj{nullptr};
  QMatmul scores_mm{nullptr}, context_mm{nullptr};

 private:
  /// A converted attention with int8 activations from the in-projection to out_proj (x float32 or
  /// codes at the in-projection's input point): q, k and v as the products' input codes
  /// (int8_linear_split), the probabilities as context_mm's codes (int8_attention_probs), the
  /// context as out_proj's input codes (int8_matmul_chain). Undefined when not converted so.
  torch::Tensor forward_int8(const torch::Tensor& x);

  int64_t heads_;
  double dropout_;  // applied to the attention weights (training only)
};
TORCH_MODULE(PoseSelfAttention);

/// PyTorch's nn.TransformerEncoderLayer(d, H, ff, dropout, activation="gelu", batch_first=True,
/// norm_first=False), eps 1e-5:
///   x = norm1(x + dropout1(self_attn(x)))
///   x = norm2(x + dropout2(linear2(dropout(gelu(linear1(x))))))
class PoseEncoderLayerImpl : public torch::nn::Module {
 public:
  PoseEncoderLayerImpl(int64_t d_model, int64_t heads, int64_t dim_feedforward, double dropout);
  /// x: (N, T, d) -> (N, T, d)
  torch::Tensor forward(const torch::Tensor& x);
  /// A converted layer in eval mode with int8 activations between its ops: x (N, T, d) float32 and
  /// xq its codes at self_attn's input point -> {the layer's output, its codes at `next`'s input
  /// point}, both LayerNorms as row_layer_norm_int8 (the residual add, the norm and the next
  /// op's quantization in one pass). The same values as forward(x) and then quantizing the output;
  /// nullopt when an op is not converted for int8 chains (run forward instead).
  std::optional<std::pair<torch::Tensor, torch::Tensor>> forward_int8(const torch::Tensor& x, const torch::Tensor& xq,
                                                                      Quantizable* next);

  PoseSelfAttention self_attn{nullptr};
  QLinear linear1{nullptr}, linear2{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Dropout dropout{nullptr}, dropout1{nullptr}, dropout2{nullptr};
};
TORCH_MODULE(PoseEncoderLayer);

/// PyTorch's nn.TransformerEncoder (no final norm): `layers` run in order. As in PyTorch, which
/// deep-copies one initialized layer L times, every layer starts with the same weights.
class PoseEncoderImpl : public torch::nn::Module {
 public:
  PoseEncoderImpl(int64_t num_layers, int64_t d_model, int64_t heads, int64_t dim_feedforward, double dropout);
  /// x: (N, T, d) -> (N, T, d)
  torch::Tensor forward(torch::Tensor x);

  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(PoseEncoder);

/// Graph refinement over the skeleton:
///   f = relu(inp(cat[z per joint (d), je (joint_embed, optional), kp0 (2)]))
///   f = relu(g1(A f)); f = relu(g2(A f)); out = kp0 + refine_scale * tanh(out(f))
/// A = coco17_normalized_adjacency(), a plain member (not in the state dict), moved lazily to the
/// device and dtype of the input.
class PoseGraphRefineImpl : public torch::nn::Module {
 public:
  PoseGraphRefineImpl(int64_t d_model, int64_t hidden, int64_t joint_embed, int64_t keypoints, double refine_scale);
  /// z: (N, d), kp0: (N, K, 2) -> (N, K, 2)
  torch::Tensor forward(const torch::Tensor& z, const torch::Tensor& kp0);

  torch::Tensor je;  ///< (K, joint_embed), registered as "je" only when joint_embed > 0; init normal(0, 0.02)
  QLinear inp{nullptr}, g1{nullptr}, g2{nullptr}, out{nullptr};
  /// The normalized adjacency currently used (CPU until the first forward on another device).
  const torch::Tensor& adjacency() const { return adjacency_; }

 private:
  torch::Tensor adjacency_;  // (K, K)
  double refine_scale_;
};
TORCH_MODULE(PoseGraphRefine);

class PoseTransformerImpl : public PoseModelImpl {
 public:
  /// Validates the config. Init: PyTorch's defaults (Linear kaiming-uniform(a=sqrt 5) with
  /// uniform bias, LayerNorm ones/zeros, attention as PoseSelfAttention, identical encoder layers
  /// as PoseEncoder); `pos` (and gr.je) ~ normal(0, 0.02) (the ViT/BERT convention).
  explicit PoseTransformerImpl(const PoseTransformerConfig& config);

  /// x: (N, 3, 114, 10) -> (N, 17, 2)
  torch::Tensor forward(const torch::Tensor& x) override;
  /// The same up to kp0 (no graph refinement): (N, 3, 114, 10) -> (N, 17, 2)
  torch::Tensor forward_coarse(const torch::Tensor& x);

  std::vector<int64_t> input_shape() const override;
  int64_t num_keypoints() const override { return config_.keypoints; }
  std::string family() const override { return "pose_transformer"; }
  /// Per sample, with T tokens, F = 342, d, ff = ff_mult d, hh, K, g = graph_hidden, e = joint_embed:
  ///   proj T F d; per layer: in_proj 3 T d^2, scores T^2 d, weights @ v T^2 d, out_proj T d^2,
  ///   FFN 2 T d ff; pooling att T d + weighted sum T d; head d hh + hh 2K;
  ///   graph K (d + e + 2) g + 2 (K^2 g + K g^2) + 2 K g  (A f counted as the dense K x K product).
  int64_t macs_per_sample() const override { return config_.macs_per_sample(); }

  const PoseTransformerConfig& config() const { return config_; }

  torch::Tensor pos;  ///< (1, T, d)
  QLinear proj{nullptr};
  PoseEncoder tf{nullptr};
  QLinear att{nullptr};
  torch::nn::Sequential head{nullptr};  ///< 0 Linear(d, hh), 1 GELU, 2 Dropout, 3 Linear(hh, 2K)
  PoseGraphRefine gr{nullptr};          ///< null when graph_hidden == 0

 private:
  torch::Tensor encode(const torch::Tensor& x);      // (N, 3, 114, 10) -> pooled z (N, d)
  /// Converted: h = projected + pos (the float sum and the first layer's input codes in one pass)
  /// through the encoder with int8 codes between the layers; sets h to the encoder's output and
  /// returns att's logits. From the first layer that cannot (a float island of the policy in it or
  /// in the op after it) the float ops run instead. Undefined (h untouched) when the model does not
  /// run int8 chains at all.
  torch::Tensor encode_int8(const torch::Tensor& projected, torch::Tensor& h);
  torch::Tensor keypoints0(const torch::Tensor& z);  // z (N, d) -> sigmoid(head(z)) (N, K, 2)
  PoseTransformerConfig config_;
};
TORCH_MODULE(PoseTransformer);

/// Per-sample standardization over all values of each sample: (x - mean) / (std_unbiased + 1e-6).
/// x: (N, ...) -> same shape.
torch::Tensor standardize_per_sample(const torch::Tensor& x);
/// The model's tokens: standardize_per_sample(x).permute({0, 3, 1, 2}).reshape({N, T, A * S}) for
/// x (N, A, S, T), in one read and one write per sample for float32 CPU inputs that need no
/// gradient (the sums in float64, so the values agree with the torch-op form to float rounding);
/// otherwise that torch-op form. The op chain took 1.6 ms of an 11 ms pose_micro forward at batch
/// 256 (six passes over the input and a copy).
torch::Tensor standardized_tokens(const torch::Tensor& x);
/// standardized_tokens(x) quantized with `point` (the int8 codes quantize_tensor would give),
/// each sample's tokens quantized while they are in cache: the input codes of a converted proj.
/// Float32 CPU input only; non-finite values are an error.
torch::Tensor standardized_tokens_int8(const torch::Tensor& x, const QuantParams& point, Rounding r);

}  // namespace csipose
