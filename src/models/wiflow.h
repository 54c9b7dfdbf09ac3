#pragma once
// WiFlow (MODELS.md section 1): grouped causal TCN -> asymmetric 2D conv encoder -> dual axial
// attention -> conv decoder. Input x: (N, 540, 20) CSI features x time steps -> (N, 15, 2).
//
// Parameter and buffer names are the checkpoint format: they reproduce the PyTorch reference
// layout exactly (tests/models/reference/wiflow_*.state_dict.txt), so weights move between
// csipose and PyTorch in both directions:
//   tcn.network.{i}.{conv1_group,bn1_group,conv1_pw,bn1_pw,conv2_group,bn2_group,conv2_pw,bn2_pw}
//   tcn.network.{i}.downsample.{0 conv,1 bn}                    (only when cin != cout)
//   up / residual_blocks.{i} . block.{0,4,8 conv; 1,5,9 bn} and .downsample.{0 conv,1 bn}
//   attention.{width_axis,height_axis}.{qkv_transform,bn_qkv,bn_similarity,bn_output}
//   decoder.{0 conv3x3, 1 bn, 3 conv1x1, 4 bn}                   (2 and 5 are stateless SiLUs)
#include <torch/nn/module.h>
#include <torch/nn/modules/batchnorm.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "models/pose_model.h"

#include "quant/qmodules.h"

namespace csipose {
class ConfigNode;

/// How the TCN's kernel-3 convolutions are grouped: g(c) = gcd(c, 20) (the published model) or
/// g(c) = c (depthwise).
enum class WiFlowGroupsMode { gcd20, depthwise };
const char* to_string(WiFlowGroupsMode m);
/// "gcd20" | "depthwise"; throws csipose::Error listing the names otherwise.
WiFlowGroupsMode parse_wiflow_groups_mode(const std::string& text);

/// Every knob of the WiFlow family. Defaults are the published model (wiflow_full).
struct WiFlowConfig {
  /// Output channels of the 4 TCN levels (level i has dilation 2^i); the last is C_tcn, the
  /// width of the 2D encoder's input image.
  std::vector<int64_t> tcn_channels = {540, 440, 340, 240};
  /// Output channels of the 4 encoder residual blocks (`up` outputs conv_channels[0]).
  std::vector<int64_t> conv_channels = {8, 16, 32, 64};
  /// Contiguous channel groups of the axial attention; must divide conv_channels[3].
  int64_t attn_groups = 8;
  /// Grouping of the TCN's kernel-3 convolutions.
  WiFlowGroupsMode groups_mode = WiFlowGroupsMode::gcd20;
  /// Groups of the level-0 pointwise convs (conv1_pw and downsample); must divide input_channels
  /// and tcn_channels[0]. Other levels' pointwise convs are dense.
  int64_t input_pw_groups = 1;
  /// Dropout probability inside the TCN blocks (training only).
  double dropout = 0.5;
  /// Dropout2d probability inside the encoder's residual blocks (training only).
  double dropout2d = 0.3;
  /// CSI features per time step (the input's channel axis).
  int64_t input_channels = 540;
  /// Time steps per window.
  int64_t time_steps = 20;
  /// Output keypoints. Also the floor of the encoder's stride schedule (see encoder_strides).
  int64_t keypoints = 15;

  /// Reads the keys above from `node`; absent keys keep `base`'s value (the defaults in the
  /// one-argument form). Validates the result and throws "source:line: path.key: ..." on errors.
  /// Does NOT call node.finish(): the caller owns the node (it may hold sibling keys such as
  /// `type:`) and must call finish() itself.
  static WiFlowConfig from_yaml(const ConfigNode& node, const WiFlowConfig& base);
  static WiFlowConfig from_yaml(const ConfigNode& node);
  /// The fields as YAML text (one `key: value` line each), readable by from_yaml.
  std::string to_yaml() const;
  /// Throws csipose::Error naming the field and its value for every impossible setting.
  void validate() const;

  bool operator==(const WiFlowConfig& o) const;
  bool operator!=(const WiFlowConfig& o) const { return !(*this == o); }
};

/// Presets (MODELS.md section 1).
WiFlowConfig wiflow_full();     ///< tcn [540,440,340,240], conv [8,16,32,64], groups 8: 2,225,042 params
WiFlowConfig wiflow_half();     ///< tcn [270,220,170,120], conv [4,8,16,32], groups 4: 843,834 params
WiFlowConfig wiflow_quarter();  ///< tcn [135,110,85,60], conv [2,4,8,16], groups 2
WiFlowConfig wiflow_tiny();     ///< tcn [68,56,44,32], conv [2,4,8,16], groups 2, depthwise, input_pw_groups 4

/// Stride along W of each of the 4 `residual_blocks`: starting from w = C_tcn, a block has
/// stride 2 (and w = ceil(w/2)) while ceil(w/2) >= keypoints, else stride 1. `up` has stride 1.
std::vector<int64_t> wiflow_encoder_strides(const WiFlowConfig& c);
/// W after each of the 4 `residual_blocks` (the last is W', the attention's height axis).
std::vector<int64_t> wiflow_encoder_widths(const WiFlowConfig& c);
/// Multiply-accumulates of one forward pass for one sample (see WiFlowImpl::macs_per_sample).
int64_t wiflow_macs_per_sample(const WiFlowConfig& c);

namespace wiflow {

/// Settings of one TCN level (TcnBlock).
struct TcnBlockOptions {
  int64_t in_channels;
  int64_t out_channels;
  int64_t dilation;        ///< 2^level; padding 2*dilation on both sides, the last 2*dilation dropped
  int64_t groups_in;       ///< groups of conv1_group (over in_channels)
  int64_t groups_out;      ///< groups of conv2_group (over out_channels)
  int64_t pw_groups;       ///< groups of conv1_pw and downsample
  double dropout;
};

/// One TCN level: x (N, cin, T) -> (N, cout, T). Two (grouped kernel-3 dilated causal conv ->
/// BN -> SiLU -> pointwise conv -> BN -> SiLU -> Dropout) stages, then SiLU(out + residual).
class TcnBlockImpl : public torch::nn::Module {
 public:
  explicit TcnBlockImpl(const TcnBlockOptions& o);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  int64_t chomp_;  // 2 * dilation: samples the causal convs compute past the window's end
  QConv1d conv1_group{nullptr}, conv1_pw{nullptr}, conv2_group{nullptr}, conv2_pw{nullptr};
  QBatchNorm1d bn1_group{nullptr}, bn1_pw{nullptr}, bn2_group{nullptr}, bn2_pw{nullptr};
  torch::nn::Dropout dropout1{nullptr}, dropout2{nullptr};
  torch::nn::Sequential downsample{nullptr};  // null = identity (cin == cout)
};
TORCH_MODULE(TcnBlock);

/// `tcn`: the 4 levels in `network`. x (N, input_channels, T) -> (N, C_tcn, T).
class TemporalConvNetImpl : public torch::nn::Module {
 public:
  explicit TemporalConvNetImpl(const WiFlowConfig& c);
  torch::Tensor forward(torch::Tensor x);

 private:
  torch::nn::ModuleList network{nullptr};
  std::vector<TcnBlock> levels_;  // the same modules as `network`, typed
};
TORCH_MODULE(TemporalConvNet);

/// Encoder residual block on (N, cin, T, W) -> (N, cout, T, ceil(W/stride)); kernels (1,3) act
/// on W only. `block` = 3 x (Conv2d -> BN [-> SiLU -> Dropout2d]), `downsample` = 1x1 conv + BN.
class ResidualBlock2dImpl : public torch::nn::Module {
 public:
  ResidualBlock2dImpl(int64_t in_channels, int64_t out_channels, int64_t stride, double dropout2d);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Sequential block{nullptr}, downsample{nullptr};
};
TORCH_MODULE(ResidualBlock2d);

/// Axial self-attention over one axis of x (N, C, H, W): width (sequences along W) or height
/// (sequences along H). No residual, no positional term, no 1/sqrt(d) scaling.
class AxialAttentionImpl : public torch::nn::Module {
 public:
  AxialAttentionImpl(int64_t channels, int64_t groups, bool along_width);
  torch::Tensor forward(const torch::Tensor& x);
  /// softmax(bn_similarity(scores), -1); scores: (B, G, L, L).
  torch::Tensor similarity_softmax(const torch::Tensor& scores);

 private:
  /// bn_similarity in eval mode as the per-group affine map (scale, shift) of the scores.
  std::pair<torch::Tensor, torch::Tensor> similarity_affine() const;

  int64_t channels_, groups_;
  bool along_width_;
  QConv1d qkv_transform{nullptr};  // C -> 3C, 1x1, no bias
  QMatmul scores_mm{nullptr};      // q^T k (no parameters: a quantization point with a name)
  QMatmul context_mm{nullptr};     // v p^T
  QBatchNorm1d bn_qkv{nullptr};               // 3C (folded into qkv_transform when quantized)
  torch::nn::BatchNorm2d bn_similarity{nullptr};  // groups, on the (groups, L, L) scores
  torch::nn::BatchNorm1d bn_output{nullptr};  // C
};
TORCH_MODULE(AxialAttention);

/// `attention`: width_axis then height_axis; shape-preserving on (N, C, H, W).
class DualAxialAttentionImpl : public torch::nn::Module {
 public:
  DualAxialAttentionImpl(int64_t channels, int64_t groups);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  AxialAttention width_axis{nullptr}, height_axis{nullptr};
};
TORCH_MODULE(DualAxialAttention);

}  // namespace wiflow

/// The WiFlow network. x: (N, input_channels, time_steps) -> (N, keypoints, 2), channel 0 = x.
class WiFlowImpl : public PoseModelImpl {
 public:
  explicit WiFlowImpl(const WiFlowConfig& config = WiFlowConfig());

  torch::Tensor forward(const torch::Tensor& x) override;
  std::vector<int64_t> input_shape() const override { return {config_.input_channels, config_.time_steps}; }
  int64_t num_keypoints() const override { return config_.keypoints; }
  std::string family() const override { return "wiflow"; }
  /// Counts every convolution as executed, including the 2*dilation outputs per TCN kernel-3
  /// conv that the causal chomp discards, the qkv projections and both attention products
  /// (q.k and p.v). BatchNorm, activations, pooling and conv biases are excluded.
  int64_t macs_per_sample() const override { return wiflow_macs_per_sample(config_); }
  /// Every conv with its BatchNorm: TCN convX_Y -> bnX_Y, downsample.0 -> .1, encoder block.K ->
  /// block.K+1, qkv_transform -> bn_qkv, decoder.0 -> .1 and .3 -> .4. (The TCN's grouped convs
  /// are cropped to T before their BatchNorm; a folded BatchNorm's batch statistics during QAT
  /// include the cropped samples, its running statistics and frozen / eval form are exact.)
  std::vector<std::pair<std::string, std::string>> bn_fold_pairs() const override;

  const WiFlowConfig& config() const { return config_; }

 private:
  void reset_parameters();

  WiFlowConfig config_;
  wiflow::TemporalConvNet tcn{nullptr};
  wiflow::ResidualBlock2d up{nullptr};
  torch::nn::ModuleList residual_blocks{nullptr};
  std::vector<wiflow::ResidualBlock2d> blocks_;  // the same modules as `residual_blocks`, typed
  wiflow::DualAxialAttention attention{nullptr};
  torch::nn::Sequential decoder{nullptr};
};
TORCH_MODULE(WiFlow);

}  // namespace csipose
