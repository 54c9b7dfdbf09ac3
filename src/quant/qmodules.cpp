#include "quant/qmodules.h"

#include <torch/nn/functional/conv.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <atomic>
#include <functional>
#include <variant>

#include "common/check.h"
#include "quant/fake_quant.h"
#include "quant/small_matmul.h"

namespace csipose {

const char* to_string(QuantMode m) {
  switch (m) {
    case QuantMode::off: return "off";
    case QuantMode::observe: return "observe";
    case QuantMode::fake_quant: return "fake_quant";
    case QuantMode::int8: return "int8";
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

bool FoldableBn::folded_active() const { return folded_into && folded_into->mode() != QuantMode::off; }

torch::Tensor QuantHook::apply(Point& p, const torch::Tensor& x) {
  if (mode_ == QuantMode::off || !p.spec) return x;
  CSIPOSE_CHECK(mode_ != QuantMode::int8, "QuantHook ", name_, ": a converted op has no fake-quant points");
  if (dynamic_) p.observer->reset();
  if (!frozen_ || dynamic_) p.observer->observe(x.detach());
  if (p.learned) {
    LearnedPoint& l = *p.learned;
    torch::NoGradGuard no_grad;
    if (!l.initialized) {
      const QuantParams q = init_activation_qparams(x, *p.spec, learned_->init);
      l.scale.fill_(q.scale[0]);
      l.zero_point.fill_(static_cast<double>(q.zero_point[0]));
      l.initialized = true;
    }
    // Keep the learned values inside their domain (as torch.ao's _LearnableFakeQuantize does).
    l.scale.clamp_min_(static_cast<float>(kMinScale));
    l.zero_point.clamp_(static_cast<double>(p.spec->qmin()), static_cast<double>(p.spec->qmax()));
  }
  if (mode_ == QuantMode::observe) return x;
  if (p.learned) {
    const auto on = [&](const torch::Tensor& t) { return t.device() == x.device() ? t : t.to(x.device()); };
    const double g = learned_->grad_scale
                         ? lsq_grad_factor(x.dim() > 0 && x.size(0) > 0 ? x.numel() / x.size(0) : x.numel(),
                                           p.spec->qmin(), p.spec->qmax())
                         : 1.0;
    return lsq_fake_quantize(x, on(p.learned->scale), on(p.learned->zero_point), p.spec->qmin(), p.spec->qmax(), -1,
                             g, p.spec->rounding);
  }
  return fake_quantize(x, p.observer->qparams(), p.spec->rounding);
}

torch::Tensor QuantHook::input(const torch::Tensor& x, int i) {
  CSIPOSE_CHECK(i >= 0 && i + 1 < static_cast<int>(points_.size()), "QuantHook ", name_, ": no input ", i);
  return apply(points_[static_cast<size_t>(i)], x);
}

torch::Tensor QuantHook::output(const torch::Tensor& y) {
  torch::Tensor out = apply(points_.back(), y);
  if (output_tap) output_tap(out);
  return out;
}

QuantParams QuantHook::weight_qparams(const torch::Tensor& w) const {
  CSIPOSE_CHECK(weight_spec_.has_value(), "QuantHook ", name_, ": weights are float in the policy");
  if (weight_scale_.defined()) {
    const bool pc = weight_spec_->granularity == Granularity::per_channel;
    CSIPOSE_CHECK(!pc || w.size(weight_spec_->axis) == weight_scale_.numel(), "QuantHook ", name_, ": weight of shape ",
                  w.sizes(), " does not fit ", weight_scale_.numel(), " learned scales");
    return learned_qparams(weight_scale_, torch::Tensor(), weight_spec_->qmin(), weight_spec_->qmax(),
                           pc ? weight_spec_->axis : -1);
  }
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

torch::Tensor QuantHook::weight(const torch::Tensor& w, QuantParams* used) const {
  if (mode_ != QuantMode::fake_quant || !weight_spec_) return w;
  const QuantParams p = weight_qparams(w);
  if (used != nullptr) *used = p;
  if (weight_scale_.defined()) {
    {
      torch::NoGradGuard no_grad;
      weight_scale_.clamp_min_(static_cast<float>(kMinScale));
    }
    const bool pc = weight_spec_->granularity == Granularity::per_channel;
    const int64_t shared = pc ? w.numel() / std::max<int64_t>(1, w.size(weight_spec_->axis)) : w.numel();
    const double g = learned_->grad_scale ? lsq_grad_factor(shared, weight_spec_->qmin(), weight_spec_->qmax()) : 1.0;
    const torch::Tensor s = weight_scale_.device() == w.device() ? weight_scale_ : weight_scale_.to(w.device());
    return lsq_fake_quantize(w, s, torch::Tensor(), weight_spec_->qmin(), weight_spec_->qmax(),
                             pc ? weight_spec_->axis : -1, g, weight_spec_->rounding);
  }
  return fake_quantize(w, p, weight_spec_->rounding);
}

torch::Tensor QuantHook::bias(const torch::Tensor& b, const std::optional<QuantParams>& w_params) const {
  if (!b.defined() || mode_ != QuantMode::fake_quant || !w_params || !quantizes_activations()) return b;
  const float s_in = input_scale();
  const torch::Tensor bq = dequantize_bias(quantize_bias(b.detach(), s_in, *w_params), s_in, *w_params);
  return b + (bq - b).detach();
}

float QuantHook::input_scale() const {
  const Point& p = points_[0];
  if (p.learned && p.learned->initialized)
    return learned_qparams(p.learned->scale, p.learned->zero_point, p.spec->qmin(), p.spec->qmax(), -1).scale[0];
  return p.observer->qparams().scale[0];
}

Rounding QuantHook::activation_rounding() const {
  return points_[0].spec ? points_[0].spec->rounding : Rounding::half_even;
}

std::pair<torch::Tensor, torch::Tensor> QuantHook::effective_weight_bias(const torch::Tensor& w,
                                                                          const torch::Tensor& b) const {
  if (bn_ == nullptr) return {w, b};
  const int64_t out = w.size(0);
  CSIPOSE_CHECK(bn_->bn_features() == out, "QuantHook ", name_, ": folded BatchNorm has ", bn_->bn_features(),
                " features, the weight ", out, " output channels");
  const torch::Tensor inv_std = (bn_->bn_running_var() + bn_->bn_eps()).rsqrt();
  const torch::Tensor gamma = bn_->bn_weight();
  const torch::Tensor a = gamma.defined() ? gamma * inv_std : inv_std;
  std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
  shape[0] = out;
  const torch::Tensor w_f = w * a.reshape(shape);
  torch::Tensor b_f = ((b.defined() ? b : torch::zeros_like(a)) - bn_->bn_running_mean()) * a;
  if (bn_->bn_bias().defined()) b_f = b_f + bn_->bn_bias();
  return {w_f, b_f};
}

void QuantHook::convert(const torch::Tensor& w_eff, const torch::Tensor& b_eff) {
  CSIPOSE_CHECK(!dynamic_, "QuantHook ", name_,
                ": a dynamic-quantization op has per-call activation qparams; convert needs frozen ones "
                "(calibrate with static PTQ or train with QAT)");
  torch::NoGradGuard no_grad;
  Int8State s;
  if (quantizes_activations()) {
    for (size_t i = 0; i + 1 < points_.size(); ++i) s.inputs.push_back(input_qparams(static_cast<int>(i)));
    s.output = output_qparams();
  }
  if (w_eff.defined()) {
    const torch::Tensor w = w_eff.detach().contiguous();
    const torch::Tensor b = b_eff.defined() ? b_eff.detach().contiguous() : b_eff;
    if (weight_spec_ && quantizes_activations()) {
      s.packed = weight_scale_.defined() ? pack_weight_with(w, b, *weight_spec_, weight_qparams(w), s.inputs.at(0))
                                         : pack_weight(w, b, *weight_spec_, s.inputs.at(0));
    } else {
      s.weight = weight_spec_ ? fake_quantize(w, weight_qparams(w), weight_spec_->rounding) : w.clone();
      s.bias = b.defined() ? b.clone() : b;
    }
  }
  set_int8(std::move(s));
}

const QuantHook::Int8State& QuantHook::int8_on(const torch::Device& device) {
  CSIPOSE_CHECK(int8_.has_value(), "QuantHook ", name_, ": not converted");
  Int8State& s = *int8_;
  if (s.packed && s.packed->q.device() != device) s.packed = s.packed->to(device);
  if (s.weight.defined() && s.weight.device() != device) s.weight = s.weight.to(device);
  if (s.bias.defined() && s.bias.device() != device) s.bias = s.bias.to(device);
  return s;
}

void QuantHook::set_int8(Int8State state) {
  CSIPOSE_CHECK(state.inputs.empty() == !quantizes_activations(), "QuantHook ", name_,
                ": int8 state disagrees with the policy on quantized activations");
  CSIPOSE_CHECK(!state.packed || weight_spec_, "QuantHook ", name_, ": int8 state has packed weights but the policy keeps them fp32");
  int8_ = std::move(state);
  mode_ = QuantMode::int8;
  std::lock_guard<std::mutex> lock(chain_mutex_);
  chain_tables_.clear();
}

namespace {
torch::Tensor apply_between(Int8Between fn, const torch::Tensor& x) {
  switch (fn) {
    case Int8Between::identity: return x;
    case Int8Between::relu: return torch::relu(x);
    case Int8Between::silu: return torch::silu(x);
    case Int8Between::gelu: return torch::gelu(x);  // exact (erf) form, as the models
  }
  return x;
}
}  // namespace

const int8_t* QuantHook::chain_table(Int8Between fn, const QuantParams& to, Rounding r) {
  CSIPOSE_CHECK(int8_ && int8_->output, "QuantHook ", name_, ": a chain table needs a converted op with an int8 output");
  std::lock_guard<std::mutex> lock(chain_mutex_);
  for (const auto& t : chain_tables_)
    if (t->fn == fn && t->rounding == r && t->to == to) return t->table.data();
  auto t = std::make_unique<ChainTable>(ChainTable{fn, to, r, {}});
  t->table = int8_code_table([fn](const torch::Tensor& v) { return apply_between(fn, v); }, *int8_->output, to, r);
  chain_tables_.push_back(std::move(t));
  return chain_tables_.back()->table.data();
}

QuantParams QuantHook::qparams_of(const Point& p, const std::string& which) const {
  CSIPOSE_CHECK(p.spec.has_value(), "QuantHook ", name_, ": the ", which, " is float in the policy");
  if (p.learned) {
    CSIPOSE_CHECK(p.learned->initialized, "QuantHook ", name_, ": the learned ", which,
                  " has seen no batch yet (train first)");
    return learned_qparams(p.learned->scale, p.learned->zero_point, p.spec->qmin(), p.spec->qmax(), -1);
  }
  CSIPOSE_CHECK(p.observer->batches() > 0, "QuantHook ", name_, ": the ", which,
                " has observed nothing yet (calibrate or train first)");
  return p.observer->qparams();
}

namespace {
std::string point_name(size_t i, size_t n) { return i + 1 == n ? "output" : "input" + std::to_string(i); }
Json floats_json(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
  Json a = Json::array();
  for (int64_t i = 0; i < c.numel(); ++i) a.push(static_cast<double>(c.data_ptr<float>()[i]));
  return a;
}
void load_floats(torch::Tensor& t, const Json& a, const std::string& what) {
  CSIPOSE_CHECK(a.is_array() && static_cast<int64_t>(a.size()) == t.numel(), what, ": ", a.size(),
                " values, expected ", t.numel());
  std::vector<float> v;
  for (size_t i = 0; i < a.size(); ++i) v.push_back(static_cast<float>(a.at(i).as_double()));
  torch::NoGradGuard no_grad;
  t.copy_(torch::tensor(v, torch::kFloat).reshape(t.sizes()));
}
}  // namespace

void QuantHook::enable_learned(const LearnedScalesConfig& c, const torch::Tensor& w_eff, const torch::Device& device) {
  CSIPOSE_CHECK(!learned_, "QuantHook ", name_, ": learned scales are already enabled");
  CSIPOSE_CHECK(!dynamic_ && mode_ != QuantMode::int8, "QuantHook ", name_,
                ": learned scales are for QAT (not dynamic or converted ops)");
  learned_ = c;
  if (c.weights && weight_spec_ && w_eff.defined()) {
    weight_scale_ = init_weight_scales(w_eff, *weight_spec_, c.init).to(device).set_requires_grad(true);
  }
  if (c.activations == LearnedActivations::none) return;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat).device(device);
  for (auto& p : points_) {
    if (!p.spec) continue;
    LearnedPoint l;
    l.scale = torch::ones({1}, f32).set_requires_grad(true);
    l.zero_point = torch::full({1}, static_cast<double>(qparams_from_range(*p.spec, {0.0f}, {1.0f}).zero_point[0]), f32);
    // LSQ+ learns the offset of affine points; a symmetric point's zero point is fixed by its spec.
    if (c.activations == LearnedActivations::lsq_plus && !p.spec->symmetric) l.zero_point.set_requires_grad(true);
    p.learned = std::move(l);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> QuantHook::learned_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  if (weight_scale_.defined()) out.emplace_back("weight.scale", weight_scale_);
  for (size_t i = 0; i < points_.size(); ++i) {
    if (!points_[i].learned) continue;
    const std::string n = point_name(i, points_.size());
    out.emplace_back(n + ".scale", points_[i].learned->scale);
    if (points_[i].learned->zero_point.requires_grad()) out.emplace_back(n + ".zero_point", points_[i].learned->zero_point);
  }
  return out;
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
  if (learned_) {
    Json l = Json::object(), lp = Json::array();
    l.set("weight_scale", weight_scale_.defined() ? floats_json(weight_scale_) : Json());
    for (const auto& p : points_) {
      if (!p.learned) {
        lp.push(Json());
        continue;
      }
      lp.push(Json::object()
                  .set("scale", floats_json(p.learned->scale))
                  .set("zero_point", floats_json(p.learned->zero_point))
                  .set("initialized", p.learned->initialized));
    }
    l.set("points", lp);
    j.set("learned", l);
  }
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
  CSIPOSE_CHECK(j.contains("learned") == learned_.has_value(), "quant state of ", name_, ": ",
                j.contains("learned") ? "has learned scales but the config learns none"
                                      : "has no learned scales but the config learns them (qat.learned_scales)");
  if (!learned_) return;
  const Json& l = j.at("learned");
  CSIPOSE_CHECK(l.at("weight_scale").is_null() != weight_scale_.defined(), "quant state of ", name_,
                ": learned weight scales disagree with the config");
  if (weight_scale_.defined()) load_floats(weight_scale_, l.at("weight_scale"), "quant state of " + name_ + " weight scales");
  const Json& lp = l.at("points");
  CSIPOSE_CHECK(lp.size() == points_.size(), "quant state of ", name_, ": learned points disagree with the policy");
  for (size_t i = 0; i < points_.size(); ++i) {
    CSIPOSE_CHECK(lp.at(i).is_null() != points_[i].learned.has_value(), "quant state of ", name_, ": learned point ", i,
                  " disagrees with the config");
    if (!points_[i].learned) continue;
    LearnedPoint& lpt = *points_[i].learned;
    load_floats(lpt.scale, lp.at(i).at("scale"), "quant state of " + name_ + " scale");
    load_floats(lpt.zero_point, lp.at(i).at("zero_point"), "quant state of " + name_ + " zero point");
    lpt.initialized = lp.at(i).at("initialized").as_bool();
  }
}

// ---- modules ------------------------------------------------------------------------------------

namespace {

// Conv padding is a c10::variant in LibTorch 1.x and a std::variant in 2.x.
template <size_t D, typename Variant>
const torch::ExpandingArray<D>* explicit_padding(const Variant& v) {
#if TORCH_VERSION_MAJOR >= 2
  return std::get_if<torch::ExpandingArray<D>>(&v);
#else
  return c10::get_if<torch::ExpandingArray<D>>(&v);
#endif
}

using FloatOp = std::function<torch::Tensor(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b)>;
using Int8Op = std::function<torch::Tensor(const torch::Tensor& x_q, const QuantParams& in, const PackedWeight& w,
                                           const QuantParams& out, Rounding r)>;

/// Reshapes per-channel values (C) to broadcast along dim 1 of a `dim`-dimensional tensor.
torch::Tensor along_channels(const torch::Tensor& v, int64_t dim) {
  std::vector<int64_t> shape(static_cast<size_t>(dim), 1);
  shape[1] = v.size(0);
  return v.reshape(shape);
}

/// The forward of a weighted op (conv / linear) whose hook is not off.
torch::Tensor hooked_forward(QuantHook& h, bool training, const torch::Tensor& x, const torch::Tensor& w,
                             const torch::Tensor& b, const FloatOp& op, const Int8Op& int8_op,
                             const std::function<Int8Conv()>& conv_geometry = nullptr) {
  if (h.mode() == QuantMode::int8) {
    const auto& s = h.int8_on(x.device());
    if (s.packed && int8_fused_available(x.device())) {
      // One fused quantize pass, oneDNN's s8 GEMM, one fused requantize + dequantize pass.
      if (!conv_geometry) return int8_op_float(x, s.inputs[0], *s.packed, *s.output, nullptr, h.activation_rounding());
      const Int8Conv g = conv_geometry();
      return int8_op_float(x, s.inputs[0], *s.packed, *s.output, &g, h.activation_rounding());
    }
    if (s.packed) {
      const torch::Tensor xq = quantize_tensor(x.contiguous(), s.inputs[0], h.activation_rounding());
      return dequantize_tensor(int8_op(xq, s.inputs[0], *s.packed, *s.output, h.activation_rounding()), *s.output);
    }
    const torch::Tensor xin = s.inputs.empty() ? x : fake_quantize(x, s.inputs[0], h.activation_rounding());
    const torch::Tensor y = op(xin, s.weight, s.bias);
    return s.output ? fake_quantize(y, *s.output, h.activation_rounding()) : y;
  }
  const torch::Tensor xin = h.input(x);
  FoldableBn* bn = h.bn();
  const bool batch_stats = bn != nullptr && training && !h.bn_frozen();
  const auto [w_eff, b_eff] = h.effective_weight_bias(w, b);
  std::optional<QuantParams> wqp;
  if (h.mode() == QuantMode::fake_quant && h.weight_spec()) wqp.emplace();
  const torch::Tensor wq = h.weight(w_eff, wqp ? &*wqp : nullptr);
  if (!batch_stats) return h.output(op(xin, wq, h.bias(b_eff, wqp)));
  // torchvision's ConvBn QAT: conv with the folded, quantized weight, undo the BatchNorm scale,
  // add the conv bias, then BatchNorm with this batch's statistics (updating the running ones).
  CSIPOSE_CHECK(x.dim() >= 3, "QuantHook ", h.name(), ": BatchNorm folding needs a conv (N, C, ...) output");
  const torch::Tensor inv_std = (bn->bn_running_var() + bn->bn_eps()).rsqrt();
  const torch::Tensor a = bn->bn_weight().defined() ? bn->bn_weight() * inv_std : inv_std;
  torch::Tensor y = op(xin, wq, torch::Tensor()) / along_channels(a, x.dim());
  if (b.defined()) y = y + along_channels(b, x.dim());
  double factor = bn->bn_momentum().value_or(0.0);
  torch::Tensor nbt = bn->bn_num_batches_tracked();
  if (nbt.defined()) {
    torch::NoGradGuard no_grad;
    nbt.add_(1);
    if (!bn->bn_momentum()) factor = 1.0 / nbt.item<double>();
  }
  y = torch::batch_norm(y, bn->bn_weight(), bn->bn_bias(), bn->bn_running_mean(), bn->bn_running_var(),
                        /*training=*/true, factor, bn->bn_eps(), /*cudnn_enabled=*/true);
  return h.output(y);
}

}  // namespace

torch::Tensor QConv1dImpl::forward(const torch::Tensor& x) {
  if (!hook || hook->mode() == QuantMode::off) return torch::nn::Conv1dImpl::forward(x);
  namespace F = torch::nn::functional;
  const auto& o = options;
  return hooked_forward(
      *hook, is_training(), x, weight, bias,
      [&](const torch::Tensor& in, const torch::Tensor& w, const torch::Tensor& b) {
        return F::detail::conv1d(in, w, b, o.stride(), o.padding(), o.dilation(), o.groups());
      },
      [&](const torch::Tensor& xq, const QuantParams& in, const PackedWeight& w, const QuantParams& out, Rounding r) {
        const auto* pad = explicit_padding<1>(o.padding());
        CSIPOSE_CHECK(pad != nullptr, "QConv1d: int8 needs explicit padding");
        return int8_conv1d(xq, in, w, out, (*o.stride())[0], (**pad)[0], (*o.dilation())[0], o.groups(), r);
      },
      [&] {
        const auto* pad = explicit_padding<1>(o.padding());
        CSIPOSE_CHECK(pad != nullptr, "QConv1d: int8 needs explicit padding");
        return Int8Conv{{(*o.stride())[0]}, {(**pad)[0]}, {(*o.dilation())[0]}, o.groups()};
      });
}

torch::Tensor QConv2dImpl::forward(const torch::Tensor& x) {
  if (!hook || hook->mode() == QuantMode::off) return torch::nn::Conv2dImpl::forward(x);
  namespace F = torch::nn::functional;
  const auto& o = options;
  return hooked_forward(
      *hook, is_training(), x, weight, bias,
      [&](const torch::Tensor& in, const torch::Tensor& w, const torch::Tensor& b) {
        return F::detail::conv2d(in, w, b, o.stride(), o.padding(), o.dilation(), o.groups());
      },
      [&](const torch::Tensor& xq, const QuantParams& in, const PackedWeight& w, const QuantParams& out, Rounding r) {
        const auto* pad = explicit_padding<2>(o.padding());
        CSIPOSE_CHECK(pad != nullptr, "QConv2d: int8 needs explicit padding");
        return int8_conv2d(xq, in, w, out, {(*o.stride())[0], (*o.stride())[1]}, {(**pad)[0], (**pad)[1]},
                           {(*o.dilation())[0], (*o.dilation())[1]}, o.groups(), r);
      },
      [&] {
        const auto* pad = explicit_padding<2>(o.padding());
        CSIPOSE_CHECK(pad != nullptr, "QConv2d: int8 needs explicit padding");
        return Int8Conv{{(*o.stride())[0], (*o.stride())[1]},
                        {(**pad)[0], (**pad)[1]},
                        {(*o.dilation())[0], (*o.dilation())[1]},
                        o.groups()};
      });
}

torch::Tensor quantized_linear(QuantHook* hook, bool training, const torch::Tensor& x, const torch::Tensor& w,
                               const torch::Tensor& b) {
  if (hook == nullptr || hook->mode() == QuantMode::off) return torch::linear(x, w, b);
  return hooked_forward(
      *hook, training, x, w, b,
      [](const torch::Tensor& in, const torch::Tensor& wt, const torch::Tensor& bt) { return torch::linear(in, wt, bt); },
      [](const torch::Tensor& xq, const QuantParams& in, const PackedWeight& pw, const QuantParams& out, Rounding r) {
        return int8_linear(xq, in, pw, out, r);
      });
}

torch::Tensor QLinearImpl::forward(const torch::Tensor& x) {
  return quantized_linear(hook.get(), is_training(), x, weight, bias);
}

torch::Tensor QMatmulImpl::forward(const torch::Tensor& a, const torch::Tensor& b) {
  if (!hook || hook->mode() == QuantMode::off) return small_matmul(a, b);
  if (hook->mode() == QuantMode::int8) {
    const auto* s = hook->int8_state();
    if (s->inputs.empty()) return small_matmul(a, b);
    const Rounding r = hook->activation_rounding();
    // An int8 operand holds codes at its input point already (int8_attention_probs).
    if (int8_fused_available(a.device())) return int8_matmul_float(a, s->inputs[0], b, s->inputs[1], *s->output, r);
    const auto codes = [&](const torch::Tensor& x, int i) {
      return x.scalar_type() == torch::kInt8 ? x.contiguous() : quantize_tensor(x.contiguous(), s->inputs[static_cast<size_t>(i)], r);
    };
    const torch::Tensor aq = codes(a, 0);
    const torch::Tensor bq = codes(b, 1);
    return dequantize_tensor(int8_matmul(aq, s->inputs[0], bq, s->inputs[1], *s->output, r), *s->output);
  }
  return hook->output(small_matmul(hook->input(a, 0), hook->input(b, 1)));
}

std::optional<Int8Conv> QConv1dImpl::int8_geometry() const {
  const auto& o = options;
  const auto* pad = explicit_padding<1>(o.padding());
  if (pad == nullptr) return std::nullopt;
  return Int8Conv{{(*o.stride())[0]}, {(**pad)[0]}, {(*o.dilation())[0]}, o.groups()};
}

std::optional<Int8Conv> QConv2dImpl::int8_geometry() const {
  const auto& o = options;
  const auto* pad = explicit_padding<2>(o.padding());
  if (pad == nullptr) return std::nullopt;
  return Int8Conv{{(*o.stride())[0], (*o.stride())[1]},
                  {(**pad)[0], (**pad)[1]},
                  {(*o.dilation())[0], (*o.dilation())[1]},
                  o.groups()};
}

namespace {
std::atomic<bool>& chaining_flag() {
  static std::atomic<bool> on{true};
  return on;
}
std::atomic<int64_t>& chain_runs() {
  static std::atomic<int64_t> n{0};
  return n;
}
}  // namespace

namespace {
std::atomic<int64_t>& attention_runs() {
  static std::atomic<int64_t> n{0};
  return n;
}
}  // namespace

torch::Tensor int8_attention_probs(QMatmulImpl& scores, QMatmulImpl& context, int input, const torch::Tensor& a,
                                   const torch::Tensor& b, float divisor, const torch::Tensor& scale,
                                   const torch::Tensor& shift, bool training) {
  CSIPOSE_CHECK(input == 0 || input == 1, "int8_attention_probs: input must be 0 or 1, got ", input);
  if (training || !int8_chaining() || !scores.hook || !context.hook) return {};
  for (const QuantHook* h : {scores.hook.get(), context.hook.get()})
    if (h->mode() != QuantMode::int8 || h->int8_state()->inputs.empty() || !h->int8_state()->output) return {};
  const Rounding r = scores.hook->activation_rounding();
  const auto operand = [](const torch::Tensor& t) {
    return t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kChar;  // int8: codes at the input point
  };
  if (context.hook->activation_rounding() != r || !operand(a) || !operand(b) || !int8_fused_available(a.device()) ||
      b.device() != a.device())
    return {};
  const auto* s = scores.hook->int8_state();
  const QuantParams& p_qp = context.hook->int8_state()->inputs[static_cast<size_t>(input)];
  torch::Tensor probs = int8_matmul_softmax(a, s->inputs[0], b, s->inputs[1], *s->output, divisor, scale, shift, p_qp, r);
  attention_runs().fetch_add(1);
  return probs;
}

int64_t int8_attention_runs() { return attention_runs().load(); }

void set_int8_chaining(bool on) { chaining_flag().store(on); }
bool int8_chaining() { return chaining_flag().load(); }
int64_t int8_chain_runs() { return chain_runs().load(); }

namespace {
/// Whether every link can run as an int8 chain on `device` (see int8_chain_forward).
bool chain_runnable(const std::vector<Int8Link>& links, const torch::Device& device, bool training) {
  if (links.empty() || training || !int8_chaining() || !int8_fused_available(device)) return false;
  for (const Int8Link& l : links) {
    if (l.op == nullptr || !l.op->hook || l.op->hook->mode() != QuantMode::int8) return false;
    const auto* s = l.op->hook->int8_state();
    if (s == nullptr || !s->packed || s->inputs.empty() || !s->output) return false;
    if (std::string(l.op->op_kind()) != "linear" && !l.op->int8_geometry()) return false;
    if (l.bn != nullptr && (l.bn->folded_into.get() != l.op->hook.get() || !l.bn->folded_active())) return false;
  }
  return true;
}
}  // namespace

std::optional<Int8ChainInput> int8_chain_input(Quantizable* op, const torch::Device& device, bool training) {
  if (!chain_runnable({{op}}, device, training)) return std::nullopt;
  return Int8ChainInput{op->hook->int8_on(device).inputs[0], op->hook->activation_rounding()};
}

namespace {
torch::Tensor run_chain(const std::vector<Int8Link>& links, const torch::Tensor& x, bool training, bool codes_out) {
  if (!x.defined() || (x.scalar_type() != torch::kFloat && x.scalar_type() != torch::kChar) ||
      !chain_runnable(links, x.device(), training))
    return {};
  ++chain_runs();
  torch::Tensor h = x;
  for (size_t i = 0; i < links.size(); ++i) {
    const Int8Link& l = links[i];
    QuantHook& hook = *l.op->hook;
    const auto& s = hook.int8_on(h.device());
    Int8Output out;
    if (i + 1 < links.size()) {
      QuantHook& next = *links[i + 1].op->hook;
      const QuantParams& to = next.int8_on(h.device()).inputs[0];
      out.int8 = true;
      // No table where the codes carry over unchanged (same point, nothing in between).
      if (!(l.then == Int8Between::identity && to == *s.output))
        out.table = hook.chain_table(l.then, to, next.activation_rounding());
    }
    if (i + 1 == links.size()) {
      out.int8 = codes_out;
      if (l.then == Int8Between::relu) out.relu = true;  // folded, exact
    }
    std::optional<Int8Conv> g = l.op->int8_geometry();
    // A narrow of the last dimension (a causal conv's chomp) is the conv's out_limit: only the kept
    // positions are computed, and the next op gets them dense (oneDNN's fast GEMMs want that).
    const bool limit = g && l.narrow_dim >= 0 && l.narrow_dim == h.dim() - 1;
    if (limit) g->out_limit = l.narrow_length;
    h = int8_op_fused(h, s.inputs[0], *s.packed, *s.output, g ? &*g : nullptr, out, hook.activation_rounding());
    if (l.narrow_dim >= 0 && !limit) h = h.narrow(l.narrow_dim, 0, l.narrow_length);
  }
  return h;
}
}  // namespace

torch::Tensor int8_chain_forward(const std::vector<Int8Link>& links, const torch::Tensor& x, bool training) {
  return run_chain(links, x, training, /*codes_out=*/false);
}

torch::Tensor int8_chain_codes(const std::vector<Int8Link>& links, const torch::Tensor& x, bool training) {
  return run_chain(links, x, training, /*codes_out=*/true);
}

std::optional<Int8ChainInput> int8_matmul_input(QMatmulImpl& mm, int input, const torch::Device& device,
                                                bool training) {
  CSIPOSE_CHECK(input == 0 || input == 1, "int8_matmul_input: input must be 0 or 1, got ", input);
  if (training || !int8_chaining() || !int8_fused_available(device) || !mm.hook ||
      mm.hook->mode() != QuantMode::int8)
    return std::nullopt;
  const auto* s = mm.hook->int8_state();
  if (s == nullptr || s->inputs.size() != 2 || !s->output) return std::nullopt;
  return Int8ChainInput{s->inputs[static_cast<size_t>(input)], mm.hook->activation_rounding()};
}

torch::Tensor int8_linear_split(Quantizable* op, const torch::Tensor& x, const std::vector<Int8ChainInput>& to,
                                int64_t heads, bool training) {
  if (to.empty() || !x.defined() || (x.scalar_type() != torch::kFloat && x.scalar_type() != torch::kChar) ||
      std::string(op->op_kind()) != "linear" || !chain_runnable({{op}}, x.device(), training))
    return {};
  QuantHook& hook = *op->hook;
  const auto& s = hook.int8_on(x.device());
  const auto groups = static_cast<int64_t>(to.size());
  if (s.packed->out_channels() % (groups * std::max<int64_t>(heads, 1)) != 0 || (heads > 0 && x.dim() < 2)) return {};
  ++chain_runs();
  Int8Output out;
  out.int8 = true;
  for (const Int8ChainInput& t : to)  // no table where the codes carry over unchanged
    out.column_tables.push_back(t.point == *s.output ? nullptr : hook.chain_table(Int8Between::identity, t.point, t.rounding));
  out.heads = heads;
  return int8_op_fused(x, s.inputs[0], *s.packed, *s.output, nullptr, out, hook.activation_rounding());
}

torch::Tensor int8_matmul_chain(QMatmulImpl& mm, const torch::Tensor& a, const torch::Tensor& b, Quantizable* next,
                                bool merge_heads, bool training) {
  const auto in0 = int8_matmul_input(mm, 0, a.device(), training);
  const auto into = int8_chain_input(next, a.device(), training);
  if (!in0 || !into || b.device() != a.device()) return {};
  const auto* s = mm.hook->int8_state();
  ++chain_runs();
  return int8_matmul_codes(a, s->inputs[0], b, s->inputs[1], *s->output, into->point, into->rounding, merge_heads);
}

std::optional<QuantParams> int8_chain_output(Quantizable* op, const torch::Device& device, bool training) {
  if (!chain_runnable({{op}}, device, training)) return std::nullopt;
  return *op->hook->int8_on(device).output;
}

QBatchNormImpl::QBatchNormImpl(int64_t num_features, double eps, double momentum)
    : num_features_(num_features), eps_(eps), momentum_(momentum) {
  CSIPOSE_CHECK(num_features > 0, "QBatchNorm: num_features must be > 0, got ", num_features);
  reset();
}

void QBatchNormImpl::set_momentum(double momentum) {
  CSIPOSE_CHECK(momentum > 0 && momentum <= 1, "QBatchNorm: momentum must be in (0, 1], got ", momentum);
  momentum_ = momentum;
}

void QBatchNormImpl::reset() {
  weight = register_parameter("weight", torch::ones({num_features_}));
  bias = register_parameter("bias", torch::zeros({num_features_}));
  running_mean = register_buffer("running_mean", torch::zeros({num_features_}));
  running_var = register_buffer("running_var", torch::ones({num_features_}));
  num_batches_tracked = register_buffer("num_batches_tracked", torch::tensor(0, torch::kLong));
}

torch::Tensor QBatchNormImpl::forward(const torch::Tensor& x) {
  if (folded_active()) return x;
  CSIPOSE_CHECK(x.dim() >= 2 && x.dim() <= 4 && x.size(1) == num_features_, "QBatchNorm(", num_features_,
                "): input of shape ", x.sizes(), "; expected (N, ", num_features_, "[, L | , H, W])");
  // torch.nn.BatchNorm*d.forward with momentum 0.1 and track_running_stats.
  if (is_training()) {
    torch::NoGradGuard no_grad;
    num_batches_tracked.add_(1);
  }
  return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training(), momentum_, eps_,
                           at::globalContext().userEnabledCuDNN());
}

void QBatchNormImpl::pretty_print(std::ostream& stream) const {
  stream << "csipose::QBatchNorm(" << num_features_ << ", eps=" << eps_ << ", momentum=" << momentum_ << ")";
}

}  // namespace csipose
