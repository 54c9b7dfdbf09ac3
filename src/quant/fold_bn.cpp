#include "quant/fold_bn.h"

#include <cmath>
#include <vector>

#include "common/check.h"

namespace csipose {
namespace {

/// A (out) statistics tensor as float64, or `fill` when undefined and optional.
torch::Tensor stat(const torch::Tensor& t, const char* name, int64_t out, const torch::Device& device, double fill,
                   bool required) {
  if (!t.defined()) {
    CSIPOSE_CHECK(!required, "fold_bn: ", name,
                  " is undefined (BatchNorm without running statistics cannot be folded)");
    return torch::full({out}, fill, torch::TensorOptions().dtype(torch::kDouble).device(device));
  }
  CSIPOSE_CHECK(t.dim() == 1 && t.size(0) == out, "fold_bn: ", name, " of shape ", t.sizes(), " does not fit ", out,
                " output channels");
  return t.detach().to(device, torch::kDouble);
}

template <typename BatchNorm>
FoldedConv fold_module(const torch::Tensor& w, const torch::Tensor& b, const BatchNorm& bn) {
  const auto& o = bn.options;
  CSIPOSE_CHECK(o.track_running_stats(), "fold_bn: the BatchNorm does not track running statistics");
  return fold_bn(w, b, o.affine() ? bn.weight : torch::Tensor(), o.affine() ? bn.bias : torch::Tensor(),
                 bn.running_mean, bn.running_var, o.eps());
}

}  // namespace

FoldedConv fold_bn(const torch::Tensor& w, const torch::Tensor& b, const torch::Tensor& gamma,
                   const torch::Tensor& beta, const torch::Tensor& running_mean, const torch::Tensor& running_var,
                   double eps) {
  CSIPOSE_CHECK(w.defined() && w.dim() >= 2 && w.is_floating_point(),
                "fold_bn: weight must be a floating tensor (out, ...)");
  CSIPOSE_CHECK(std::isfinite(eps) && eps > 0.0, "fold_bn: eps = ", eps, "; expected a finite value > 0");
  const int64_t out = w.size(0);
  const torch::Device device = w.device();
  const torch::Tensor var = stat(running_var, "running_var", out, device, 0.0, true);
  CSIPOSE_CHECK(var.min().item<double>() >= 0.0, "fold_bn: running_var has negative entries");
  const torch::Tensor mean = stat(running_mean, "running_mean", out, device, 0.0, true);
  const torch::Tensor g = stat(gamma, "gamma (BatchNorm weight)", out, device, 1.0, false);
  const torch::Tensor bt = stat(beta, "beta (BatchNorm bias)", out, device, 0.0, false);
  const torch::Tensor bias = stat(b, "bias", out, device, 0.0, false);
  const torch::Tensor a = g / torch::sqrt(var + eps);
  std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
  shape[0] = out;
  FoldedConv f;
  f.weight = (w.detach().to(torch::kDouble) * a.reshape(shape)).to(w.scalar_type());
  f.bias = ((bias - mean) * a + bt).to(w.scalar_type());
  return f;
}

FoldedConv fold_bn(const torch::Tensor& w, const torch::Tensor& b, const torch::nn::BatchNorm1dImpl& bn) {
  return fold_module(w, b, bn);
}

FoldedConv fold_bn(const torch::Tensor& w, const torch::Tensor& b, const torch::nn::BatchNorm2dImpl& bn) {
  return fold_module(w, b, bn);
}

}  // namespace csipose
