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
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>

#include "common/json.h"
#include "quant/observers.h"
#include "quant/quant_spec.h"

namespace csipose {

enum class QuantMode {
  off,         ///< plain fp32 forward (the hook is ignored)
  observe,     ///< fp32 forward; activation observers record ranges (PTQ calibration)
  fake_quant,  ///< inputs, weights and outputs fake-quantized (QAT, and evaluating PTQ)
};
const char* to_string(QuantMode m);

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

  /// Input point `i` (0, or 1 for a matmul's second operand) and the output point.
  torch::Tensor input(const torch::Tensor& x, int i = 0);
  torch::Tensor output(const torch::Tensor& y);
  /// The weight point. Its qparams come from the current weight's min / max on every call (per
  /// channel along the spec's axis), so the qparams of the last step are exactly what convert packs.
  torch::Tensor weight(const torch::Tensor& w) const;

  bool quantizes_activations() const { return points_[0].spec.has_value(); }
  const std::optional<QuantSpec>& weight_spec() const { return weight_spec_; }
  /// Activation qparams (throws when the point is float or has observed nothing).
  QuantParams input_qparams(int i = 0) const;
  QuantParams output_qparams() const;
  QuantParams weight_qparams(const torch::Tensor& w) const;

  /// Observer states of the activation points (for QAT checkpoints and calibration files).
  Json state() const;
  void load_state(const Json& state);

 private:
  struct Point {
    std::optional<QuantSpec> spec;
    std::unique_ptr<Observer> observer;
  };
  torch::Tensor apply(Point& p, const torch::Tensor& x);
  QuantParams qparams_of(const Point& p, const std::string& which) const;

  std::string name_;
  std::optional<QuantSpec> weight_spec_;
  std::vector<Point> points_;  // inputs..., then the output
  QuantMode mode_ = QuantMode::off;
  bool frozen_ = false;
  bool dynamic_ = false;
};

/// Implemented by every Q-module so `prepare` finds them among a model's named modules.
class Quantizable {
 public:
  virtual ~Quantizable() = default;
  /// "conv1d" | "conv2d" | "linear" | "matmul"
  virtual const char* op_kind() const = 0;
  /// Null: plain fp32.
  std::shared_ptr<QuantHook> hook;
};

class QConv1dImpl : public torch::nn::Conv1dImpl, public Quantizable {
 public:
  using torch::nn::Conv1dImpl::Conv1dImpl;
  torch::Tensor forward(const torch::Tensor& x);
  const char* op_kind() const override { return "conv1d"; }
};
TORCH_MODULE(QConv1d);

class QConv2dImpl : public torch::nn::Conv2dImpl, public Quantizable {
 public:
  using torch::nn::Conv2dImpl::Conv2dImpl;
  torch::Tensor forward(const torch::Tensor& x);
  const char* op_kind() const override { return "conv2d"; }
};
TORCH_MODULE(QConv2d);

class QLinearImpl : public torch::nn::LinearImpl, public Quantizable {
 public:
  using torch::nn::LinearImpl::LinearImpl;
  torch::Tensor forward(const torch::Tensor& x);
  const char* op_kind() const override { return "linear"; }
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

}  // namespace csipose
