#pragma once
// Quantizable versions of the float ops the models use. Each Q-module IS the LibTorch module it
// derives from (same options, parameter names and fp32 forward, so checkpoints and the PyTorch
// layout are unchanged) plus an optional QuantHook that `prepare` attaches. With a hook in
// fake_quant mode, forward is
//
//     y = fq_out( op( fq_in(x), fq_w(weight) ) + bias )
//
// fq_in / fq_out are the activation quantization points (observed; fake-quantized), fq_w the weight
// point. They are where the converted int8 op quantizes its input, holds int8 weights and
// requantizes its int32 accumulator (quant/int8_ops.h), with the same qparams: one contract for
// the fake-quant model and the int8 model.
#include <torch/nn/module.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "common/json.h"
#include "quant/int8_ops.h"
#include "quant/lsq.h"
#include "quant/observers.h"
#include "quant/quant_spec.h"

namespace csipose {

enum class QuantMode {
  off,         ///< plain fp32 forward (the hook is ignored)
  observe,     ///< fp32 forward; activation observers record ranges (PTQ calibration)
  fake_quant,  ///< inputs, weights and outputs fake-quantized (QAT, and evaluating PTQ)
  int8,        ///< converted: packed int8 weights, int8 ops, frozen qparams (see QuantHook::convert)
};
const char* to_string(QuantMode m);

class QuantHook;

/// The elementwise function between two ops of an int8 chain (int8_chain_forward).
enum class Int8Between { identity, relu, silu, gelu };

/// A BatchNorm that `prepare` may fold into the conv before it (QBatchNorm1d / QBatchNorm2d).
/// While the conv's hook is not `off`, the BatchNorm's forward is the identity and the conv
/// computes conv + BatchNorm itself (QuantHook, "BatchNorm folding").
class FoldableBn {
 public:
  virtual ~FoldableBn() = default;
  virtual torch::Tensor bn_weight() const = 0;  ///< gamma (undefined without affine)
  virtual torch::Tensor bn_bias() const = 0;    ///< beta (undefined without affine)
  virtual torch::Tensor bn_running_mean() const = 0;
  virtual torch::Tensor bn_running_var() const = 0;
  virtual torch::Tensor bn_num_batches_tracked() const = 0;
  virtual double bn_eps() const = 0;
  virtual std::optional<double> bn_momentum() const = 0;
  virtual bool bn_training() const = 0;
  virtual int64_t bn_features() const = 0;
  /// Set by prepare when folded: the hook of the conv that computes this BatchNorm.
  std::shared_ptr<QuantHook> folded_into;
  bool folded_active() const;
};

/// The quantization points of one op: input activation(s), weight, output activation.
class QuantHook {
 public:
  /// `activations` / `weights` absent: those points stay float (a float island of the policy).
  /// `inputs` is 2 for a matmul of two activations, else 1.
  QuantHook(std::string name, std::optional<QuantSpec> activations, std::optional<QuantSpec> weights,
            const ObserverConfig& activation_observer, int inputs = 1);

  const std::string& name() const { return name_; }
  QuantMode mode() const { return mode_; }
  void set_mode(QuantMode m) { mode_ = m; }
  /// Frozen observers keep their ranges, so the activation qparams stay fixed (QAT's
  /// observer-freeze epoch; always after PTQ calibration).
  void freeze_observers(bool frozen) { frozen_ = frozen; }
  bool observers_frozen() const { return frozen_; }
  /// Dynamic quantization: activation qparams from each call's own range (observers reset per
  /// call), as PTQ "dynamic" does at run time.
  void set_dynamic(bool dynamic) { dynamic_ = dynamic; }
  bool dynamic() const { return dynamic_; }

  // ---- BatchNorm folding (the torchvision QAT recipe, torch.ao.nn.intrinsic.qat.ConvBn*d) ----
  // With a folded BatchNorm (gamma, beta, running mean / var, eps) and a[c] = gamma[c] /
  // sqrt(var[c] + eps), the op uses w'[c] = w[c] * a[c] and b'[c] = (b[c] - mean[c]) * a[c] + beta[c]
  // (effective_weight_bias) and its output point sits after the BatchNorm. In training mode, until
  // the BatchNorm is frozen, the conv runs with the quantized w' and the result is rescaled and
  // normalized with the batch statistics (which updates the running ones):
  //     y = batch_norm(conv(x, fq(w')) / a + b)
  // Frozen or in eval mode it is exactly the folded op conv(x, fq(w')) + b', the op convert packs.
  void set_bn(FoldableBn* bn) { bn_ = bn; }
  FoldableBn* bn() const { return bn_; }
  /// A frozen BatchNorm uses its running statistics in training too (the BN-freeze epoch).
  void freeze_bn(bool frozen) { bn_frozen_ = frozen; }
  bool bn_frozen() const { return bn_frozen_; }
  /// The weight and bias the op computes with (folded when a BatchNorm is folded into it; the
  /// bias is then always defined). Float32 torch ops, differentiable; convert packs exactly these.
  std::pair<torch::Tensor, torch::Tensor> effective_weight_bias(const torch::Tensor& w, const torch::Tensor& b) const;

  // ---- conversion ------------------------------------------------------------------------------
  /// What a converted op computes with: frozen activation qparams, and the packed int8 weights
  /// with their int32 bias when weights and activations are both quantized (the int8 op);
  /// otherwise the float weight the fake-quant op used (fake-quantized when the weights are
  /// quantized) and its float bias.
  struct Int8State {
    std::vector<QuantParams> inputs;       ///< empty when the activations are float
    std::optional<QuantParams> output;
    std::optional<PackedWeight> packed;
    torch::Tensor weight, bias;            ///< the float fallback (undefined when packed)
  };
  /// Freezes this op into its int8 form from the effective weight and bias (undefined for a
  /// matmul) and switches the hook to QuantMode::int8. Throws when an activation point has observed
  /// nothing or the hook is dynamic (dynamic qparams are per call, not frozen).
  void convert(const torch::Tensor& w_eff, const torch::Tensor& b_eff);
  /// Installs a state read back from an int8 checkpoint; switches to QuantMode::int8.
  void set_int8(Int8State state);
  const Int8State* int8_state() const { return int8_ ? &*int8_ : nullptr; }
  /// The int8 state with its tensors on `device` (moved there once, on first use).
  const Int8State& int8_on(const torch::Device& device);
  Rounding activation_rounding() const;

  /// Input point `i` (0, or 1 for a matmul's second operand) and the output point.
  torch::Tensor input(const torch::Tensor& x, int i = 0);
  torch::Tensor output(const torch::Tensor& y);
  /// When set, called with every output of the op in the observe and fake_quant modes (after the
  /// output point): how per-layer sensitivity compares a layer's fp32 and fake-quant outputs.
  std::function<void(const torch::Tensor&)> output_tap;
  /// The weight point. Its qparams come from the current weight's min / max on every call (per
  /// channel along the spec's axis), so the qparams of the last step are exactly what convert packs.
  torch::Tensor weight(const torch::Tensor& w, QuantParams* used = nullptr) const;
  /// The bias in fake_quant mode when inputs and weights are quantized: dequantize(quantize(b)) at
  /// scale s_in * s_w[c], the int32 bias of the int8 op (straight-through gradient); else b.
  torch::Tensor bias(const torch::Tensor& b, const std::optional<QuantParams>& w_params) const;

  bool quantizes_activations() const { return points_[0].spec.has_value(); }
  const std::optional<QuantSpec>& weight_spec() const { return weight_spec_; }
  /// Activation qparams (throws when the point is float or has observed nothing).
  QuantParams input_qparams(int i = 0) const;
  QuantParams output_qparams() const;
  QuantParams weight_qparams(const torch::Tensor& w) const;

  // ---- learned step sizes (quant/lsq.h) -------------------------------------------------------
  /// Makes this op's quantized points learned (LSQ / LSQ+): the weight scales (when c.weights and
  /// the weights are quantized) are initialized now from `w_eff`, the op's effective weight;
  /// activation points (when c.activations is not none) on the first batch they see. New tensors
  /// live on `device`. Learned points take their qparams from these tensors (fake-quant, convert,
  /// bias), not from their observers. Call before the optimizer is made (learned_parameters).
  void enable_learned(const LearnedScalesConfig& c, const torch::Tensor& w_eff, const torch::Device& device);
  bool learned() const { return learned_.has_value(); }
  /// The trainable tensors, named "weight.scale", "input0.scale", "output.zero_point", ...
  std::vector<std::pair<std::string, torch::Tensor>> learned_parameters() const;

  /// The code table of int8_chain_forward from this op's output codes through `fn` to the codes of
  /// a next op's input point `to` (rounding r): built on first use, kept until set_int8 again.
  const int8_t* chain_table(Int8Between fn, const QuantParams& to, Rounding r);

  /// Observer states of the activation points (and the learned values, when learned), for QAT
  /// checkpoints and calibration files.
  Json state() const;
  void load_state(const Json& state);

 private:
  /// A learned activation point: scale (1) and zero point (1), float32; the zero point is trained
  /// only by LSQ+ on an affine spec.
  struct LearnedPoint {
    torch::Tensor scale, zero_point;
    bool initialized = false;
  };
  struct Point {
    std::optional<QuantSpec> spec;
    std::unique_ptr<Observer> observer;
    std::optional<LearnedPoint> learned;
  };
  float input_scale() const;
  torch::Tensor apply(Point& p, const torch::Tensor& x);
  QuantParams qparams_of(const Point& p, const std::string& which) const;

  std::string name_;
  std::optional<QuantSpec> weight_spec_;
  std::vector<Point> points_;  // inputs..., then the output
  QuantMode mode_ = QuantMode::off;
  bool frozen_ = false;
  bool dynamic_ = false;
  FoldableBn* bn_ = nullptr;
  bool bn_frozen_ = false;
  std::optional<Int8State> int8_;
  std::optional<LearnedScalesConfig> learned_;
  torch::Tensor weight_scale_;  ///< learned weight scales (C) or (1); undefined when not learned
  struct ChainTable {
    Int8Between fn;
    QuantParams to;
    Rounding rounding;
    std::array<int8_t, 256> table;
  };
  std::vector<std::unique_ptr<ChainTable>> chain_tables_;  ///< stable addresses
  std::mutex chain_mutex_;
};

/// Implemented by every Q-module so `prepare` finds them among a model's named modules.
class Quantizable {
 public:
  virtual ~Quantizable() = default;
  /// "conv1d" | "conv2d" | "linear" | "matmul"
  virtual const char* op_kind() const = 0;
  /// The float weight and bias of the op (undefined for a matmul).
  virtual torch::Tensor op_weight() const { return {}; }
  virtual torch::Tensor op_bias() const { return {}; }
  /// The convolution geometry of a conv op (int8 chains); nullopt for a linear op.
  virtual std::optional<Int8Conv> int8_geometry() const { return std::nullopt; }
  /// Null: plain fp32.
  std::shared_ptr<QuantHook> hook;
};

class QConv1dImpl : public torch::nn::Conv1dImpl, public Quantizable {
 public:
  using torch::nn::Conv1dImpl::Conv1dImpl;
  torch::Tensor forward(const torch::Tensor& x);
  const char* op_kind() const override { return "conv1d"; }
  torch::Tensor op_weight() const override { return weight; }
  torch::Tensor op_bias() const override { return bias; }
  std::optional<Int8Conv> int8_geometry() const override;
};
TORCH_MODULE(QConv1d);

class QConv2dImpl : public torch::nn::Conv2dImpl, public Quantizable {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;
  torch::Tensor forward(const torch::Tensor& x);
  const char* op_kind() const override { return "conv2d"; }
  torch::Tensor op_weight() const override { return weight; }
  torch::Tensor op_bias() const override { return bias; }
  std::optional<Int8Conv> int8_geometry() const override;
};
TORCH_MODULE(QConv2d);

class QLinearImpl : public torch::nn::LinearImpl, public Quantizable {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& x);
  const char* op_kind() const override { return "linear"; }
  torch::Tensor op_weight() const override { return weight; }
  torch::Tensor op_bias() const override { return bias; }
};
TORCH_MODULE(QLinear);

/// a @ b of two activations (attention scores and outputs). No parameters: as a registered child
/// it only gives the product a policy name; the state dict is unchanged.
class QMatmulImpl : public torch::nn::Module, public Quantizable {
 public:
  torch::Tensor forward(const torch::Tensor& a, const torch::Tensor& b);
  const char* op_kind() const override { return "matmul"; }
};
TORCH_MODULE(QMatmul);

/// A linear op with explicit weight and bias through a hook (QLinear, and the pose transformer's
/// in-projection which holds its own parameters): y = x W^T + b with the hook's points.
torch::Tensor quantized_linear(QuantHook* hook, bool training, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b);

// ---- int8 chains ----------------------------------------------------------------------------------
// A converted model runs each int8 op as quantize -> int8 GEMM -> requantize -> dequantize, and the
// float op between two of them (SiLU, GELU, ReLU, a BatchNorm folded away, dropout in eval) on the
// dequantized float32 tensor before the next op quantizes it again. Between two quantization points
// nothing but an elementwise function happens, so the next op's input codes are a function of the
// previous op's output codes alone: int8_chain_forward hands int8 codes from op to op, mapped
// through a 256-entry table (int8_code_table), and only the last op dequantizes. The fake-quant
// model computes fq_in(f(fq_out(y))) for the same codes, so the chain gives its values (see
// int8_code_table for the one float32 caveat of SiLU / GELU).

/// One op of an int8 chain and what follows it before the next op.
struct Int8Link {
  Quantizable* op = nullptr;
  /// A BatchNorm right after the op; the chain requires it folded into the op (else the float path runs).
  FoldableBn* bn = nullptr;
  /// Keep the first narrow_length entries of dimension narrow_dim of the op's output (WiFlow's
  /// causal chomp); -1: none.
  int64_t narrow_dim = -1, narrow_length = 0;
  /// The function before the next op. On the last link, whose output leaves as float32, relu is
  /// applied (folded into the requantization, exactly torch::relu) and anything else is ignored.
  Int8Between then = Int8Between::identity;
};

/// The float32 output of the last link for a float32 input x, with int8 activations between the
/// links; undefined (run the float code instead) unless every op is converted with packed int8
/// weights and quantized activations, every listed BatchNorm is folded into its op, x is a float32
/// CPU tensor on the fused (oneDNN) backend, `training` is false and chains are on. x may also be
/// int8: the codes of the first op's input point (int8_chain_input), made by a producer that
/// quantizes its own output in the same pass (the pose transformer's input tokens).
torch::Tensor int8_chain_forward(const std::vector<Int8Link>& links, const torch::Tensor& x, bool training);
/// int8_chain_forward, but the last link's output stays int8: its codes at that op's output point
/// (int8_chain_output), a ReLU on the last link folded in as the lower clamp at the zero point
/// (the codes of torch::relu of the dequantized output). For a next step that is not an
/// elementwise function of one code (the pose transformer's adjacency product, small_matmul_int8).
torch::Tensor int8_chain_codes(const std::vector<Int8Link>& links, const torch::Tensor& x, bool training);
/// The output point of `op` when a chain ending at it runs int8 on `device`, else nullopt.
std::optional<QuantParams> int8_chain_output(Quantizable* op, const torch::Device& device, bool training);
/// Where a chain starting at `op` would take its input: the point and rounding of `op`'s input
/// quantization when int8_chain_forward({{op}}, x, training) runs int8 on `device`, else nullopt.
struct Int8ChainInput {
  QuantParams point;
  Rounding rounding;
};
std::optional<Int8ChainInput> int8_chain_input(Quantizable* op, const torch::Device& device, bool training);
/// The input point `input` (0 or 1) of a converted matmul of two activations when it runs int8 with
/// chains on `device` (the fused backend, eval), else nullopt.
std::optional<Int8ChainInput> int8_matmul_input(QMatmulImpl& mm, int input, const torch::Device& device, bool training);
/// A linear op whose output columns feed different next points: int8 codes (..., O), the O outputs
/// split into to.size() equal groups and group g's codes those of to[g] (through the identity: the
/// codes the next op would make of the dequantized output). The pose transformer's in-projection,
/// whose q, k and v columns go to the two attention products. With heads > 0, laid out per group
/// and head as Int8Output::heads says ((G, leading..., H, T, head_dim) for x (leading..., T, in)),
/// else (leading..., O). Undefined unless `op` runs as an int8 chain (see int8_chain_forward) and O
/// divides evenly.
torch::Tensor int8_linear_split(Quantizable* op, const torch::Tensor& x, const std::vector<Int8ChainInput>& to,
                                int64_t heads, bool training);
/// A converted matmul's product a @ b (float32 or int8 codes at its input points) as the codes of
/// `next`'s input point (int8_matmul_codes: what `next` would make of the float product), for a
/// linear op after it; merge_heads as int8_matmul_codes. Undefined unless both run int8 chains.
torch::Tensor int8_matmul_chain(QMatmulImpl& mm, const torch::Tensor& a, const torch::Tensor& b, Quantizable* next,
                                bool merge_heads, bool training);
/// The attention probabilities of a converted model as int8 codes at `context`'s input point
/// `input` (0 or 1): int8_matmul_softmax of `scores`' product s = a @ b, softmax(s / divisor *
/// scale[c] + shift[c]) over the last dimension (c along dimension 1; divisor 1, scale / shift
/// undefined: none), quantized
/// with that input point: the codes `context` would make of scores -> row_softmax, computed without
/// the float scores; `context` takes them as they are. a and b are float32 or int8 codes at
/// `scores`' input points (int8_linear_split's q and k). Undefined (run the float code instead)
/// unless both are converted matmuls with quantized activations and one rounding, a and b are on the
/// fused (oneDNN) backend, `training` is false and chains are on.
torch::Tensor int8_attention_probs(QMatmulImpl& scores, QMatmulImpl& context, int input, const torch::Tensor& a,
                                   const torch::Tensor& b, float divisor, const torch::Tensor& scale,
                                   const torch::Tensor& shift, bool training);
/// How many times int8_attention_probs has fused a softmax in this process (tests and diagnostics).
int64_t int8_attention_runs();
/// Chains on (default) or off: off, every op dequantizes its output and the float functions run in
/// between (the A/B switch of tests and benchmarks; CSIPOSE_INT8_CHAIN=0 for the CLI).
void set_int8_chaining(bool on);
bool int8_chaining();
/// How many chains int8_chain_forward has run in this process (tests and diagnostics).
int64_t int8_chain_runs();

/// BatchNorm over dim 1 of (N, C), (N, C, L) or (N, C, H, W) that `prepare` can fold into the conv
/// before it (FoldableBn). Its own module rather than a subclass of torch::nn::BatchNorm1dImpl
/// (some LibTorch builds do not export what a subclass needs), with exactly the state and the
/// forward of PyTorch's BatchNorm1d / BatchNorm2d (affine, tracking running stats, eps 1e-5,
/// momentum 0.1): parameters weight, bias; buffers running_mean, running_var,
/// num_batches_tracked, in that order; training mode normalizes with the batch statistics and
/// updates the running ones, eval mode uses the running ones.
class QBatchNormImpl : public torch::nn::Cloneable<QBatchNormImpl>, public FoldableBn {
 public:
  explicit QBatchNormImpl(int64_t num_features, double eps = 1e-5, double momentum = 0.1);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  torch::Tensor bn_weight() const override { return weight; }
  torch::Tensor bn_bias() const override { return bias; }
  torch::Tensor bn_running_mean() const override { return running_mean; }
  torch::Tensor bn_running_var() const override { return running_var; }
  torch::Tensor bn_num_batches_tracked() const override { return num_batches_tracked; }
  double bn_eps() const override { return eps_; }
  std::optional<double> bn_momentum() const override { return momentum_; }
  bool bn_training() const override { return is_training(); }
  int64_t bn_features() const override { return num_features_; }
  /// Like `options.momentum(m)` of torch::nn::BatchNorm (1 = the last batch's statistics).
  void set_momentum(double momentum);

  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  int64_t num_features_;
  double eps_, momentum_;
};
TORCH_MODULE(QBatchNorm);
/// The same module for conv1d (N, C, L) and conv2d (N, C, H, W) outputs.
using QBatchNorm1d = QBatchNorm;
using QBatchNorm2d = QBatchNorm;

}  // namespace csipose
