#include "quant/qmodules.h"

#include <torch/nn/functional/conv.h>
#include <torch/torch.h>

#include "common/check.h"
#include "quant/fake_quant.h"

namespace csipose {

const char* to_string(QuantMode m) {
  switch (m) {
    case QuantMode::off: return "off";
    case QuantMode::observe: return "observe";
    case QuantMode::fake_quant: return "fake_quant";
  }
  return "?";
}

QuantHook::QuantHook(std::string name, std::optional<QuantSpec> activations, std::optional<QuantSpec> weights,
                     const ObserverConfig& activation_observer, int inputs)
    : name_(std::move(name)), weight_spec_(std::move(weights)) {
  CSIPOSE_CHECK(inputs == 1 || inputs == 2, "QuantHook ", name_, ": 1 or 2 inputs, got ", inputs);
  for (int i = 0; i <= inputs; ++i) {
    Point p;
    p.spec = activations;
    if (activations) p.observer = make_observer(activation_observer, *activations);
    points_.push_back(std::move(p));
  }
}

torch::Tensor QuantHook::apply(Point& p, const torch::Tensor& x) {
  if (mode_ == QuantMode::off || !p.spec) return x;
  if (dynamic_) p.observer->reset();
  if (!frozen_ || dynamic_) p.observer->observe(x.detach());
  if (mode_ == QuantMode::observe) return x;
  return fake_quantize(x, p.observer->qparams(), p.spec->rounding);
}

torch::Tensor QuantHook::input(const torch::Tensor& x, int i) {
  CSIPOSE_CHECK(i >= 0 && i + 1 < static_cast<int>(points_.size()), "QuantHook ", name_, ": no input ", i);
  return apply(points_[static_cast<size_t>(i)], x);
}

torch::Tensor QuantHook::output(const torch::Tensor& y) { return apply(points_.back(), y); }

QuantParams QuantHook::weight_qparams(const torch::Tensor& w) const {
  CSIPOSE_CHECK(weight_spec_.has_value(), "QuantHook ", name_, ": weights are float in the policy");
  const auto wd = w.detach();
  std::vector<float> lo, hi;
  if (weight_spec_->granularity == Granularity::per_channel) {
    const int64_t axis = weight_spec_->axis;
    CSIPOSE_CHECK(axis >= 0 && axis < wd.dim(), "QuantHook ", name_, ": weight axis ", axis, " outside ", wd.dim(), " dims");
    const auto flat = wd.transpose(0, axis).reshape({wd.size(axis), -1});
    const auto mins = std::get<0>(flat.min(1)).to(torch::kCPU).contiguous();
    const auto maxs = std::get<0>(flat.max(1)).to(torch::kCPU).contiguous();
    lo.assign(mins.data_ptr<float>(), mins.data_ptr<float>() + mins.numel());
    hi.assign(maxs.data_ptr<float>(), maxs.data_ptr<float>() + maxs.numel());
  } else {
    lo.push_back(wd.min().item<float>());
    hi.push_back(wd.max().item<float>());
  }
  QuantParams p = qparams_from_range(*weight_spec_, lo, hi);
  if (weight_spec_->granularity == Granularity::per_channel) p.axis = weight_spec_->axis;
  return p;
}

torch::Tensor QuantHook::weight(const torch::Tensor& w) const {
  if (mode_ != QuantMode::fake_quant || !weight_spec_) return w;
  return fake_quantize(w, weight_qparams(w), weight_spec_->rounding);
}

QuantParams QuantHook::qparams_of(const Point& p, const std::string& which) const {
  CSIPOSE_CHECK(p.spec.has_value(), "QuantHook ", name_, ": the ", which, " is float in the policy");
  CSIPOSE_CHECK(p.observer->batches() > 0, "QuantHook ", name_, ": the ", which,
                " has observed nothing yet (calibrate or train first)");
  return p.observer->qparams();
}

QuantParams QuantHook::input_qparams(int i) const {
  CSIPOSE_CHECK(i >= 0 && i + 1 < static_cast<int>(points_.size()), "QuantHook ", name_, ": no input ", i);
  return qparams_of(points_[static_cast<size_t>(i)], "input " + std::to_string(i));
}

QuantParams QuantHook::output_qparams() const { return qparams_of(points_.back(), "output"); }

Json QuantHook::state() const {
  Json j = Json::object(), pts = Json::array();
  for (const auto& p : points_) pts.push(p.observer ? p.observer->state() : Json());
  j.set("name", name_).set("frozen", frozen_).set("points", pts);
  return j;
}

void QuantHook::load_state(const Json& j) {
  CSIPOSE_CHECK(j.at("name").as_string() == name_, "quant state of ", j.at("name").as_string(), " given to ", name_);
  const Json& pts = j.at("points");
  CSIPOSE_CHECK(pts.size() == points_.size(), "quant state of ", name_, " has ", pts.size(), " points, expected ",
                points_.size());
  for (size_t i = 0; i < points_.size(); ++i) {
    CSIPOSE_CHECK(pts.at(i).is_null() != static_cast<bool>(points_[i].observer), "quant state of ", name_,
                  ": point ", i, " disagrees with the policy (float vs quantized)");
    if (points_[i].observer) points_[i].observer->load_state(pts.at(i));
  }
  frozen_ = j.at("frozen").as_bool();
}

// ---- modules ------------------------------------------------------------------------------------

torch::Tensor QConv1dImpl::forward(const torch::Tensor& x) {
  if (!hook || hook->mode() == QuantMode::off) return torch::nn::Conv1dImpl::forward(x);
  namespace F = torch::nn::functional;
  const auto y = F::detail::conv1d(hook->input(x), hook->weight(weight), bias, options.stride(), options.padding(),
                                   options.dilation(), options.groups());
  return hook->output(y);
}

torch::Tensor QConv2dImpl::forward(const torch::Tensor& x) {
  if (!hook || hook->mode() == QuantMode::off) return torch::nn::Conv2dImpl::forward(x);
  namespace F = torch::nn::functional;
  const auto y = F::detail::conv2d(hook->input(x), hook->weight(weight), bias, options.stride(), options.padding(),
                                   options.dilation(), options.groups());
  return hook->output(y);
}

torch::Tensor QLinearImpl::forward(const torch::Tensor& x) {
  if (!hook || hook->mode() == QuantMode::off) return torch::nn::LinearImpl::forward(x);
  return hook->output(torch::linear(hook->input(x), hook->weight(weight), bias));
}

torch::Tensor QMatmulImpl::forward(const torch::Tensor& a, const torch::Tensor& b) {
  if (!hook || hook->mode() == QuantMode::off) return torch::matmul(a, b);
  return hook->output(torch::matmul(hook->input(a, 0), hook->input(b, 1)));
}

}  // namespace csipose
