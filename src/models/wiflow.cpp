#include "models/wiflow.h"

#include <torch/nn/init.h>
#include <torch/nn/modules/activation.h>

#include <algorithm>
#include <cctype>
#include <numeric>
#include <optional>
#include <sstream>

#include "common/check.h"
#include "common/config_node.h"
#include "quant/row_softmax.h"

namespace csipose {
namespace {

/// The TCN's grouped convs use gcd(c, 20) groups in gcd20 mode (the published model fixed 20
/// groups for 540 channels; the gcd keeps every preset's channel count divisible).
constexpr int64_t kGcdGroupBase = 20;
constexpr int64_t kTcnLevels = 4;
constexpr int64_t kEncoderBlocks = 4;
constexpr int64_t kTcnKernel = 3;

int64_t ceil_half(int64_t w) { return (w + 1) / 2; }

int64_t tcn_groups(const WiFlowConfig& c, int64_t channels) {
  return c.groups_mode == WiFlowGroupsMode::depthwise ? channels : std::gcd(channels, kGcdGroupBase);
}

int64_t tcn_in_channels(const WiFlowConfig& c, int64_t level) {
  return level == 0 ? c.input_channels : c.tcn_channels[level - 1];
}

int64_t decoder_hidden(const WiFlowConfig& c) { return std::max<int64_t>(c.conv_channels.back() / 2, 4); }

/// Shortest decimal text that reads back as the same double.
std::string format_double(double v) {
  for (int precision = 6; precision <= 17; ++precision) {
    std::ostringstream o;
    o.precision(precision);
    o << v;
    if (std::stod(o.str()) == v) return o.str();
  }
  return std::to_string(v);
}

std::string format_list(const std::vector<int64_t>& v) {
  std::ostringstream o;
  o << "[";
  for (size_t i = 0; i < v.size(); ++i) o << (i ? ", " : "") << v[i];
  o << "]";
  return o.str();
}

/// The first impossible setting of a config: the YAML key it belongs to and a message naming the
/// field (with index) and its value.
struct ConfigIssue {
  std::string key;
  std::string message;
};

std::optional<ConfigIssue> first_issue(const WiFlowConfig& c) {
  auto issue = [](const std::string& key, const auto&... parts) {
    return std::optional<ConfigIssue>(ConfigIssue{key, str_cat(parts...)});
  };
  if (c.tcn_channels.size() != static_cast<size_t>(kTcnLevels))
    return issue("tcn_channels", "tcn_channels = ", format_list(c.tcn_channels), " has ", c.tcn_channels.size(),
                 " entries; expected exactly ", kTcnLevels, " (one per TCN level)");
  if (c.conv_channels.size() != static_cast<size_t>(kEncoderBlocks))
    return issue("conv_channels", "conv_channels = ", format_list(c.conv_channels), " has ", c.conv_channels.size(),
                 " entries; expected exactly ", kEncoderBlocks, " (one per encoder block)");
  for (size_t i = 0; i < c.tcn_channels.size(); ++i)
    if (c.tcn_channels[i] <= 0)
      return issue("tcn_channels", "tcn_channels[", i, "] = ", c.tcn_channels[i], " must be positive");
  for (size_t i = 0; i < c.conv_channels.size(); ++i)
    if (c.conv_channels[i] <= 0)
      return issue("conv_channels", "conv_channels[", i, "] = ", c.conv_channels[i], " must be positive");
  const std::pair<const char*, int64_t> positive[] = {{"attn_groups", c.attn_groups},
                                                      {"input_pw_groups", c.input_pw_groups},
                                                      {"input_channels", c.input_channels},
                                                      {"time_steps", c.time_steps},
                                                      {"keypoints", c.keypoints}};
  for (const auto& [key, value] : positive)
    if (value <= 0) return issue(key, key, " = ", value, " must be positive");
  const std::pair<const char*, double> probabilities[] = {{"dropout", c.dropout}, {"dropout2d", c.dropout2d}};
  for (const auto& [key, value] : probabilities)
    if (!(value >= 0.0 && value <= 1.0)) return issue(key, key, " = ", value, " must be a probability in [0, 1]");
  const int64_t attn_channels = c.conv_channels.back();
  if (attn_channels % c.attn_groups != 0)
    return issue("attn_groups", "attn_groups = ", c.attn_groups, " does not divide conv_channels[3] = ",
                 attn_channels, " (the attention's channels)");
  if (c.input_channels % c.input_pw_groups != 0)
    return issue("input_pw_groups", "input_pw_groups = ", c.input_pw_groups, " does not divide input_channels = ",
                 c.input_channels);
  if (c.tcn_channels[0] % c.input_pw_groups != 0)
    return issue("input_pw_groups", "input_pw_groups = ", c.input_pw_groups, " does not divide tcn_channels[0] = ",
                 c.tcn_channels[0], " (the level-0 pointwise output)");
  return std::nullopt;
}

// ---- small named builders ----------------------------------------------------------------------
QConv1d conv1d(int64_t in, int64_t out, int64_t kernel, int64_t groups, int64_t dilation = 1,
                         int64_t padding = 0) {
  return QConv1d(
      torch::nn::Conv1dOptions(in, out, kernel).groups(groups).dilation(dilation).padding(padding).bias(false));
}

/// Conv2d with kernel (1, k) along W, stride (1, s), padding (0, k/2).
QConv2d conv_along_w(int64_t in, int64_t out, int64_t kernel, int64_t stride, bool bias) {
  return QConv2d(torch::nn::Conv2dOptions(in, out, {1, kernel})
                               .stride({1, stride})
                               .padding({0, kernel / 2})
                               .bias(bias));
}

wiflow::TcnBlock tcn_block(const WiFlowConfig& c, int64_t level) {
  const int64_t in = tcn_in_channels(c, level), out = c.tcn_channels[level];
  return wiflow::TcnBlock(wiflow::TcnBlockOptions{/*in_channels=*/in, /*out_channels=*/out,
                                                  /*dilation=*/int64_t{1} << level,
                                                  /*groups_in=*/tcn_groups(c, in),
                                                  /*groups_out=*/tcn_groups(c, out),
                                                  /*pw_groups=*/level == 0 ? c.input_pw_groups : 1,
                                                  /*dropout=*/c.dropout});
}

wiflow::ResidualBlock2d residual_block(int64_t in, int64_t out, int64_t stride, const WiFlowConfig& c) {
  return wiflow::ResidualBlock2d(in, out, stride, c.dropout2d);
}

wiflow::AxialAttention axial_attention(int64_t channels, int64_t groups, bool along_width) {
  return wiflow::AxialAttention(channels, groups, along_width);
}

}  // namespace

// ---- config --------------------------------------------------------------------------------------
const char* to_string(WiFlowGroupsMode m) {
  switch (m) {
    case WiFlowGroupsMode::gcd20: return "gcd20";
    case WiFlowGroupsMode::depthwise: return "depthwise";
  }
  return "?";
}

WiFlowGroupsMode parse_wiflow_groups_mode(const std::string& text) {
  return parse_enum<WiFlowGroupsMode>("groups_mode", text,
                                      {{"gcd20", WiFlowGroupsMode::gcd20}, {"depthwise", WiFlowGroupsMode::depthwise}});
}

WiFlowConfig WiFlowConfig::from_yaml(const ConfigNode& n, const WiFlowConfig& base) {
  WiFlowConfig c = base;
  c.tcn_channels = n.get_list<int64_t>("tcn_channels", c.tcn_channels);
  c.conv_channels = n.get_list<int64_t>("conv_channels", c.conv_channels);
  c.attn_groups = n.get_int("attn_groups", c.attn_groups, 1);
  c.groups_mode = n.get_enum<WiFlowGroupsMode>(
      "groups_mode", c.groups_mode, {{"gcd20", WiFlowGroupsMode::gcd20}, {"depthwise", WiFlowGroupsMode::depthwise}});
  c.input_pw_groups = n.get_int("input_pw_groups", c.input_pw_groups, 1);
  c.dropout = n.get_double("dropout", c.dropout, 0.0, 1.0);
  c.dropout2d = n.get_double("dropout2d", c.dropout2d, 0.0, 1.0);
  c.input_channels = n.get_int("input_channels", c.input_channels, 1);
  c.time_steps = n.get_int("time_steps", c.time_steps, 1);
  c.keypoints = n.get_int("keypoints", c.keypoints, 1);
  if (const auto bad = first_issue(c)) n.error(bad->key, bad->message);
  return c;
}

WiFlowConfig WiFlowConfig::from_yaml(const ConfigNode& n) { return from_yaml(n, WiFlowConfig()); }

std::string WiFlowConfig::to_yaml() const {
  std::ostringstream o;
  o << "tcn_channels: " << format_list(tcn_channels) << "\n"
    << "conv_channels: " << format_list(conv_channels) << "\n"
    << "attn_groups: " << attn_groups << "\n"
    << "groups_mode: " << csipose::to_string(groups_mode) << "\n"
    << "input_pw_groups: " << input_pw_groups << "\n"
    << "dropout: " << format_double(dropout) << "\n"
    << "dropout2d: " << format_double(dropout2d) << "\n"
    << "input_channels: " << input_channels << "\n"
    << "time_steps: " << time_steps << "\n"
    << "keypoints: " << keypoints << "\n";
  return o.str();
}

void WiFlowConfig::validate() const {
  if (const auto bad = first_issue(*this)) fail("WiFlowConfig: ", bad->message);
}

bool WiFlowConfig::operator==(const WiFlowConfig& o) const {
  return tcn_channels == o.tcn_channels && conv_channels == o.conv_channels && attn_groups == o.attn_groups &&
         groups_mode == o.groups_mode && input_pw_groups == o.input_pw_groups && dropout == o.dropout &&
         dropout2d == o.dropout2d && input_channels == o.input_channels && time_steps == o.time_steps &&
         keypoints == o.keypoints;
}

WiFlowConfig wiflow_full() { return WiFlowConfig(); }

WiFlowConfig wiflow_half() {
  WiFlowConfig c;
  c.tcn_channels = {270, 220, 170, 120};
  c.conv_channels = {4, 8, 16, 32};
  c.attn_groups = 4;
  return c;
}

WiFlowConfig wiflow_quarter() {
  WiFlowConfig c;
  c.tcn_channels = {135, 110, 85, 60};
  c.conv_channels = {2, 4, 8, 16};
  c.attn_groups = 2;
  return c;
}

WiFlowConfig wiflow_tiny() {
  WiFlowConfig c;
  c.tcn_channels = {68, 56, 44, 32};
  c.conv_channels = {2, 4, 8, 16};
  c.attn_groups = 2;
  c.groups_mode = WiFlowGroupsMode::depthwise;
  c.input_pw_groups = 4;
  return c;
}

std::vector<int64_t> wiflow_encoder_strides(const WiFlowConfig& c) {
  c.validate();
  std::vector<int64_t> strides;
  int64_t w = c.tcn_channels.back();
  for (int64_t i = 0; i < kEncoderBlocks; ++i) {
    const bool halve = ceil_half(w) >= c.keypoints;
    strides.push_back(halve ? 2 : 1);
    if (halve) w = ceil_half(w);
  }
  return strides;
}

std::vector<int64_t> wiflow_encoder_widths(const WiFlowConfig& c) {
  std::vector<int64_t> widths;
  int64_t w = c.tcn_channels.back();
  for (int64_t s : wiflow_encoder_strides(c)) {
    w = s == 2 ? ceil_half(w) : w;  // (1,3) conv, pad 1: floor((w + 2 - 3) / s) + 1
    widths.push_back(w);
  }
  return widths;
}

int64_t wiflow_macs_per_sample(const WiFlowConfig& c) {
  c.validate();
  // A convolution costs (output elements) x (input channels per group) x (kernel taps).
  const int64_t T = c.time_steps;
  int64_t macs = 0;
  // TCN: the kernel-3 convs compute T + 2d outputs (the chomp drops 2d of them).
  for (int64_t level = 0; level < kTcnLevels; ++level) {
    const int64_t in = tcn_in_channels(c, level), out = c.tcn_channels[level];
    const int64_t padded = T + 2 * (int64_t{1} << level);
    const int64_t pw = level == 0 ? c.input_pw_groups : 1;
    macs += in * padded * (in / tcn_groups(c, in)) * kTcnKernel;     // conv1_group
    macs += out * T * (in / pw);                                      // conv1_pw
    macs += out * padded * (out / tcn_groups(c, out)) * kTcnKernel;  // conv2_group
    macs += out * T * out;                                            // conv2_pw
    if (in != out) macs += out * T * (in / pw);                       // downsample
  }
  // Encoder on (T, W) images: 3 (1,3) convs + a 1x1 shortcut per block, all at the output width.
  auto block_macs = [T](int64_t in, int64_t out, int64_t w_out) {
    return out * T * w_out * (in * 3 + out * 3 + out * 3 + in);
  };
  int64_t w = c.tcn_channels.back();
  macs += block_macs(1, c.conv_channels[0], w);  // up
  const std::vector<int64_t> widths = wiflow_encoder_widths(c);
  for (int64_t i = 0; i < kEncoderBlocks; ++i) {
    macs += block_macs(i == 0 ? c.conv_channels[0] : c.conv_channels[i - 1], c.conv_channels[i], widths[i]);
    w = widths[i];
  }
  // Attention on (C, W', T): each axis has a qkv projection 3C x C per position, and q.k and p.v
  // cost C x L x L per sequence of length L (summed over groups).
  const int64_t C = c.conv_channels.back();
  macs += 2 * (3 * C * C * w * T);           // qkv_transform, both axes
  macs += 2 * C * T * T * w;                 // width axis: W' sequences of length T
  macs += 2 * C * w * w * T;                 // height axis: T sequences of length W'
  // Decoder: 3x3 conv C -> hidden, 1x1 conv hidden -> 2.
  const int64_t hidden = decoder_hidden(c);
  macs += hidden * w * T * C * 9 + 2 * w * T * hidden;
  return macs;
}

// ---- modules -------------------------------------------------------------------------------------
namespace wiflow {

TcnBlockImpl::TcnBlockImpl(const TcnBlockOptions& o) : chomp_(2 * o.dilation) {
  const int64_t pad = (kTcnKernel - 1) * o.dilation;  // = chomp_
  conv1_group = register_module("conv1_group", conv1d(o.in_channels, o.in_channels, kTcnKernel, o.groups_in,
                                                      o.dilation, pad));
  bn1_group = register_module("bn1_group", QBatchNorm1d(o.in_channels));
  conv1_pw = register_module("conv1_pw", conv1d(o.in_channels, o.out_channels, /*kernel=*/1, o.pw_groups));
  bn1_pw = register_module("bn1_pw", QBatchNorm1d(o.out_channels));
  dropout1 = register_module("dropout1", torch::nn::Dropout(o.dropout));
  conv2_group = register_module("conv2_group", conv1d(o.out_channels, o.out_channels, kTcnKernel, o.groups_out,
                                                      o.dilation, pad));
  bn2_group = register_module("bn2_group", QBatchNorm1d(o.out_channels));
  conv2_pw = register_module("conv2_pw", conv1d(o.out_channels, o.out_channels, /*kernel=*/1, /*groups=*/1));
  bn2_pw = register_module("bn2_pw", QBatchNorm1d(o.out_channels));
  dropout2 = register_module("dropout2", torch::nn::Dropout(o.dropout));
  if (o.in_channels != o.out_channels)
    downsample = register_module(
        "downsample", torch::nn::Sequential(conv1d(o.in_channels, o.out_channels, /*kernel=*/1, o.pw_groups),
                                            QBatchNorm1d(o.out_channels)));
}

torch::Tensor TcnBlockImpl::forward(const torch::Tensor& x) {
  // x: (N, cin, T); the padded convs give T + 2d samples, the chomp keeps the first T (causal).
  const int64_t T = x.size(2);
  const torch::Tensor res = downsample ? downsample->forward(x) : x;        // (N, cout, T)
  // Converted: the four convs hand int8 codes to each other (quant/qmodules.h, int8 chains).
  const torch::Tensor chained = int8_chain_forward({{conv1_group.get(), bn1_group.get(), 2, T, Int8Between::silu},
                                                    {conv1_pw.get(), bn1_pw.get(), -1, 0, Int8Between::silu},
                                                    {conv2_group.get(), bn2_group.get(), 2, T, Int8Between::silu},
                                                    {conv2_pw.get(), bn2_pw.get()}},
                                                   x, is_training());
  if (chained.defined()) return torch::silu(dropout2(torch::silu(chained)) + res);
  // In training the chomped outputs are made contiguous, as the reference's Chomp1d does: the
  // backward of BatchNorm and SiLU on the strided view cost more than the copy (chomp -> BN ->
  // SiLU -> pointwise conv at batch 64, 1 thread: 16.4 ms forward + backward on the view, 14.3 ms
  // with the copy). In eval the copy is the dearer part (3.1 vs 3.5 ms), so the view stays.
  const auto chomp = [&](const torch::Tensor& y) {
    const torch::Tensor v = y.narrow(2, 0, T);
    return is_training() ? v.contiguous() : v;
  };
  torch::Tensor out = chomp(conv1_group(x));                               // (N, cin, T)
  out = torch::silu(bn1_group(out));
  out = dropout1(torch::silu(bn1_pw(conv1_pw(out))));                      // (N, cout, T)
  out = chomp(conv2_group(out));                                           // (N, cout, T)
  out = torch::silu(bn2_group(out));
  out = dropout2(torch::silu(bn2_pw(conv2_pw(out))));                      // (N, cout, T)
  return torch::silu(out + res);
}

TemporalConvNetImpl::TemporalConvNetImpl(const WiFlowConfig& c) {
  network = register_module("network", torch::nn::ModuleList());
  for (int64_t level = 0; level < kTcnLevels; ++level) {
    levels_.push_back(tcn_block(c, level));
    network->push_back(levels_.back());
  }
}

torch::Tensor TemporalConvNetImpl::forward(torch::Tensor x) {
  for (auto& level : levels_) x = level(x);  // (N, tcn[i-1], T) -> (N, tcn[i], T)
  return x;
}

ResidualBlock2dImpl::ResidualBlock2dImpl(int64_t in, int64_t out, int64_t stride, double dropout2d) {
  block = register_module(
      "block", torch::nn::Sequential(conv_along_w(in, out, /*kernel=*/3, stride, /*bias=*/true),   // 0
                                     QBatchNorm2d(out),                                            // 1
                                     torch::nn::SiLU(),                                            // 2
                                     torch::nn::Dropout2d(dropout2d),                              // 3
                                     conv_along_w(out, out, /*kernel=*/3, /*stride=*/1, /*bias=*/true),  // 4
                                     QBatchNorm2d(out),                                            // 5
                                     torch::nn::SiLU(),                                            // 6
                                     torch::nn::Dropout2d(dropout2d),                              // 7
                                     conv_along_w(out, out, /*kernel=*/3, /*stride=*/1, /*bias=*/true),  // 8
                                     QBatchNorm2d(out)));                                          // 9
  downsample = register_module(
      "downsample", torch::nn::Sequential(conv_along_w(in, out, /*kernel=*/1, stride, /*bias=*/false),
                                          QBatchNorm2d(out)));
}

namespace {
/// The int8 chain of a Sequential of (QConv, QBatchNorm, SiLU[, Dropout])* ending in a QConv and
/// an optional QBatchNorm: links conv -> SiLU -> conv; empty when the layout differs.
std::vector<Int8Link> conv_silu_chain(const torch::nn::Sequential& seq) {
  std::vector<Int8Link> links;
  for (size_t i = 0; i < seq->size(); ++i) {
    const std::shared_ptr<torch::nn::Module> m = seq->ptr(i);
    if (auto* op = dynamic_cast<Quantizable*>(m.get())) {
      links.push_back({op});
    } else if (auto* bn = dynamic_cast<FoldableBn*>(m.get()); bn != nullptr && !links.empty() && !links.back().bn) {
      links.back().bn = bn;
    } else if (m->as<torch::nn::SiLUImpl>() != nullptr && !links.empty() &&
               links.back().then == Int8Between::identity) {
      links.back().then = Int8Between::silu;
    } else if (m->as<torch::nn::Dropout2dImpl>() == nullptr && m->as<torch::nn::DropoutImpl>() == nullptr) {
      return {};
    }
  }
  // The last conv's output leaves as float: a SiLU after it stays in the Sequential's float tail.
  if (links.empty() || links.back().then != Int8Between::identity) return {};
  return links;
}
}  // namespace

torch::Tensor ResidualBlock2dImpl::forward(const torch::Tensor& x) {
  // x: (N, cin, T, W) -> (N, cout, T, ceil(W / stride)). Converted: the block's three convs hand
  // int8 codes to each other (quant/qmodules.h, int8 chains).
  torch::Tensor main = int8_chain_forward(conv_silu_chain(block), x, is_training());
  if (!main.defined()) main = block->forward(x);
  return torch::silu(main + downsample->forward(x));
}

AxialAttentionImpl::AxialAttentionImpl(int64_t channels, int64_t groups, bool along_width)
    : channels_(channels), groups_(groups), along_width_(along_width) {
  CSIPOSE_CHECK(groups > 0 && channels % groups == 0, "axial attention: groups = ", groups,
                " must divide channels = ", channels);
  qkv_transform = register_module("qkv_transform", conv1d(channels, 3 * channels, /*kernel=*/1, /*groups=*/1));
  scores_mm = register_module("scores_mm", QMatmul());
  context_mm = register_module("context_mm", QMatmul());
  bn_qkv = register_module("bn_qkv", QBatchNorm1d(3 * channels));
  bn_similarity = register_module("bn_similarity", torch::nn::BatchNorm2d(groups));
  bn_output = register_module("bn_output", torch::nn::BatchNorm1d(channels));
}

torch::Tensor AxialAttentionImpl::forward(const torch::Tensor& x) {
  // x: (N, C, H, W). Sequences run along W (width) or H (height); the other axis joins the batch.
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t other = along_width_ ? H : W, L = along_width_ ? W : H;
  const torch::Tensor seq = (along_width_ ? x.permute({0, 2, 1, 3}) : x.permute({0, 3, 1, 2}))
                                .reshape({N * other, C, L});                        // (B, C, L)
  const torch::Tensor qkv = bn_qkv(qkv_transform(seq));                             // (B, 3C, L)
  const int64_t B = N * other, cg = channels_ / groups_;
  const torch::Tensor q = qkv.narrow(1, 0, C).reshape({B, groups_, cg, L});         // (B, G, C/G, L)
  const torch::Tensor k = qkv.narrow(1, C, C).reshape({B, groups_, cg, L});
  const torch::Tensor v = qkv.narrow(1, 2 * C, C).reshape({B, groups_, cg, L});
  torch::Tensor probs;  // (B, G, L_i, L_j), softmax over j
  if (!is_training()) {
    // A converted model: the scores product, bn_similarity, the softmax and context_mm's input
    // point in one pass, giving context_mm its int8 codes (undefined when not converted).
    const auto [a, b] = similarity_affine();
    probs = int8_attention_probs(*scores_mm, *context_mm, /*input=*/1, q.transpose(2, 3), k, 1.0f, a, b, false);
  }
  if (!probs.defined()) probs = similarity_softmax(scores_mm(q.transpose(2, 3), k));
  const torch::Tensor out = context_mm(v, probs.transpose(2, 3))                   // (B, G, C/G, L_i)
                                .reshape({B, C, L});
  const torch::Tensor y = bn_output(out).view({N, other, C, L});
  return along_width_ ? y.permute({0, 2, 1, 3}) : y.permute({0, 2, 3, 1});         // (N, C, H, W)
}

torch::Tensor AxialAttentionImpl::similarity_softmax(const torch::Tensor& scores) {
  // Training: the BatchNorm normalizes with (and updates) batch statistics. Evaluation: it is a
  // per-group affine map, folded into one row_softmax pass (quant/row_softmax.h).
  if (is_training()) return torch::softmax(bn_similarity(scores), /*dim=*/-1);
  const auto [a, b] = similarity_affine();
  return row_softmax(scores.contiguous(), a, b);
}

std::pair<torch::Tensor, torch::Tensor> AxialAttentionImpl::similarity_affine() const {
  const auto& bn = *bn_similarity;
  const auto& o = bn.options;
  CSIPOSE_CHECK(o.track_running_stats(), "axial attention: bn_similarity without running statistics");
  torch::Tensor a = torch::rsqrt(bn.running_var + o.eps());
  torch::Tensor b = -bn.running_mean * a;
  if (o.affine()) {
    a = a * bn.weight;
    b = b * bn.weight + bn.bias;
  }
  return {a.to(torch::kFloat), b.to(torch::kFloat)};
}

DualAxialAttentionImpl::DualAxialAttentionImpl(int64_t channels, int64_t groups) {
  width_axis = register_module("width_axis", axial_attention(channels, groups, /*along_width=*/true));
  height_axis = register_module("height_axis", axial_attention(channels, groups, /*along_width=*/false));
}

torch::Tensor DualAxialAttentionImpl::forward(const torch::Tensor& x) { return height_axis(width_axis(x)); }

}  // namespace wiflow

// ---- the model -----------------------------------------------------------------------------------
WiFlowImpl::WiFlowImpl(const WiFlowConfig& config) : config_(config) {
  config_.validate();
  const WiFlowConfig& c = config_;
  tcn = register_module("tcn", wiflow::TemporalConvNet(c));
  up = register_module("up", residual_block(/*in=*/1, c.conv_channels[0], /*stride=*/1, c));
  residual_blocks = register_module("residual_blocks", torch::nn::ModuleList());
  const std::vector<int64_t> strides = wiflow_encoder_strides(c);
  for (int64_t i = 0; i < kEncoderBlocks; ++i) {
    const int64_t in = i == 0 ? c.conv_channels[0] : c.conv_channels[i - 1];
    blocks_.push_back(residual_block(in, c.conv_channels[i], strides[i], c));
    residual_blocks->push_back(blocks_.back());
  }
  const int64_t C = c.conv_channels.back(), hidden = decoder_hidden(c);
  attention = register_module("attention", wiflow::DualAxialAttention(C, c.attn_groups));
  decoder = register_module(
      "decoder", torch::nn::Sequential(QConv2d(torch::nn::Conv2dOptions(C, hidden, 3).padding(1)),  // 0
                                       QBatchNorm2d(hidden),                                                 // 1
                                       torch::nn::SiLU(),                                                    // 2
                                       QConv2d(torch::nn::Conv2dOptions(hidden, 2, 1)),            // 3
                                       QBatchNorm2d(2),                                                      // 4
                                       torch::nn::SiLU()));                                                  // 5
  reset_parameters();
}

std::vector<std::pair<std::string, std::string>> WiFlowImpl::bn_fold_pairs() const {
  std::vector<std::pair<std::string, std::string>> pairs;
  const auto modules = named_modules("", /*include_self=*/false);
  auto replace_last = [](const std::string& name, const std::string& last) {
    const size_t dot = name.rfind('.');
    return (dot == std::string::npos ? std::string() : name.substr(0, dot + 1)) + last;
  };
  for (const auto& item : modules) {
    const std::string& name = item.key();
    if (dynamic_cast<Quantizable*>(item.value().get()) == nullptr) continue;
    const size_t dot = name.rfind('.');
    const std::string last = dot == std::string::npos ? name : name.substr(dot + 1);
    std::string bn;
    if (last.rfind("conv", 0) == 0) {
      bn = replace_last(name, "bn" + last.substr(4));                      // conv1_group -> bn1_group
    } else if (last == "qkv_transform") {
      bn = replace_last(name, "bn_qkv");
    } else if (!last.empty() && std::isdigit(static_cast<unsigned char>(last[0]))) {
      bn = replace_last(name, std::to_string(std::stoll(last) + 1));        // Sequential: conv K, BN K+1
    }
    if (!bn.empty() && modules.contains(bn) && dynamic_cast<FoldableBn*>(modules[bn].get()) != nullptr)
      pairs.emplace_back(name, bn);
  }
  return pairs;
}

void WiFlowImpl::reset_parameters() {
  // MODELS.md: Conv1d kaiming-normal (fan_out, relu), BatchNorm1d weight 1 bias 0; the rest keep
  // LibTorch's defaults (which match PyTorch's).
  torch::NoGradGuard no_grad;
  for (const auto& m : modules(/*include_self=*/false)) {
    if (auto* conv = m->as<torch::nn::Conv1dImpl>()) {
      torch::nn::init::kaiming_normal_(conv->weight, /*a=*/0, torch::kFanOut, torch::kReLU);
      if (conv->bias.defined()) conv->bias.zero_();
    } else if (auto* bn = m->as<torch::nn::BatchNorm1dImpl>()) {
      bn->weight.fill_(1);
      bn->bias.zero_();
    }
  }
}

torch::Tensor WiFlowImpl::forward(const torch::Tensor& x) {
  const WiFlowConfig& c = config_;
  CSIPOSE_CHECK(x.dim() == 3 && x.size(1) == c.input_channels && x.size(2) == c.time_steps,
                "WiFlow: input has shape ", x.sizes(), "; expected (N, ", c.input_channels, ", ", c.time_steps, ")");
  torch::Tensor h = tcn(x);                       // (N, 540, 20) -> (N, C_tcn, T)
  h = h.transpose(1, 2).unsqueeze(1);             // (N, 1, T, C_tcn): an image with W = C_tcn
  h = up(h);                                      // (N, conv[0], T, C_tcn)
  for (auto& block : blocks_) h = block(h);       // (N, conv[i], T, W_i), W_i per the stride schedule
  h = h.permute({0, 1, 3, 2});                    // (N, C, W', T)
  h = attention(h);                               // (N, C, W', T)
  // decoder = conv, BN, SiLU, conv, BN, SiLU: converted, the two convs chain in int8.
  std::vector<Int8Link> head;
  if (decoder->size() == 6) {
    head = {{dynamic_cast<Quantizable*>(decoder->ptr(0).get()), dynamic_cast<FoldableBn*>(decoder->ptr(1).get()), -1, 0,
             Int8Between::silu},
            {dynamic_cast<Quantizable*>(decoder->ptr(3).get()), dynamic_cast<FoldableBn*>(decoder->ptr(4).get())}};
  }
  const torch::Tensor chained = int8_chain_forward(head, h, is_training());
  h = chained.defined() ? torch::silu(chained) : decoder->forward(h);  // (N, 2, W', T)
  h = torch::adaptive_avg_pool2d(h, {c.keypoints, 1});  // (N, 2, K, 1), PyTorch's bin rule
  return h.squeeze(-1).transpose(1, 2).contiguous();  // (N, K, 2), [..., 0] = x
}

}  // namespace csipose
