#include "quant/lsq.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "common/check.h"
#include "common/config_node.h"
#include "quant/fake_quant.h"

namespace csipose {

const char* to_string(LearnedActivations a) {
  switch (a) {
    case LearnedActivations::none: return "none";
    case LearnedActivations::lsq: return "lsq";
    case LearnedActivations::lsq_plus: return "lsq_plus";
  }
  return "?";
}

const char* to_string(LsqInit i) { return i == LsqInit::mse ? "mse" : "minmax"; }

LearnedScalesConfig LearnedScalesConfig::from_yaml(const ConfigNode& n) {
  LearnedScalesConfig c;
  c.weights = n.get<bool>("weights", c.weights);
  c.activations = n.get_enum<LearnedActivations>(
      "activations", c.activations,
      {{"none", LearnedActivations::none}, {"lsq", LearnedActivations::lsq}, {"lsq_plus", LearnedActivations::lsq_plus}});
  c.init = n.get_enum<LsqInit>("init", c.init, {{"mse", LsqInit::mse}, {"minmax", LsqInit::minmax}});
  c.grad_scale = n.get<bool>("grad_scale", c.grad_scale);
  c.lr_scale = n.get_double("lr_scale", c.lr_scale, 0.0, 1e3);
  if (!(c.lr_scale > 0.0)) n.error("lr_scale", "must be > 0");
  return c;
}

std::string LearnedScalesConfig::to_yaml() const {
  std::ostringstream o;
  o.precision(17);
  o << "weights: " << (weights ? "true" : "false") << "\nactivations: " << to_string(activations)
    << "\ninit: " << to_string(init) << "\ngrad_scale: " << (grad_scale ? "true" : "false")
    << "\nlr_scale: " << lr_scale << "\n";
  return o.str();
}

bool LearnedScalesConfig::operator==(const LearnedScalesConfig& o) const {
  return weights == o.weights && activations == o.activations && init == o.init && grad_scale == o.grad_scale &&
         lr_scale == o.lr_scale;
}

double lsq_grad_factor(int64_t elements, int64_t qmin, int64_t qmax) {
  const double qp = static_cast<double>(std::max(-qmin, qmax));
  return 1.0 / std::sqrt(static_cast<double>(std::max<int64_t>(elements, 1)) * qp);
}

namespace {

/// Shape that broadcasts a (C) parameter along `axis` of x (a 0-dim view for per-tensor).
torch::Tensor broadcast_param(const torch::Tensor& p, const torch::Tensor& x, int64_t axis) {
  if (axis < 0) return p.reshape({});
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[static_cast<size_t>(axis)] = p.size(0);
  return p.reshape(shape);
}

/// Sums an elementwise gradient of x's shape down to the parameter's shape.
torch::Tensor reduce_to_param(const torch::Tensor& g, int64_t axis, const torch::Tensor& param) {
  if (axis < 0) return g.sum().reshape(param.sizes());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < g.dim(); ++d)
    if (d != axis) dims.push_back(d);
  return (dims.empty() ? g : g.sum(dims)).reshape(param.sizes());
}

struct LsqArgs {
  int64_t qmin, qmax, axis;
  double grad_factor;
  Rounding rounding;
};

/// The forward pieces on broadcast parameters: s (clamped), 1/s, z (rounded, clamped), u.
struct LsqForward {
  torch::Tensor s, inv, z, u, out;
};

LsqForward lsq_forward(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& zero_point,
                       const LsqArgs& a) {
  torch::NoGradGuard no_grad;
  LsqForward f;
  f.s = broadcast_param(scale.detach().clamp_min(static_cast<float>(kMinScale)), x, a.axis);
  f.inv = torch::reciprocal(f.s);  // float32 1/s, correctly rounded: the contract's inv_scale
  f.z = zero_point.defined()
            ? broadcast_param(torch::round(zero_point.detach()).clamp(static_cast<double>(a.qmin), static_cast<double>(a.qmax)),
                              x, a.axis)
            : torch::zeros({}, x.options());
  f.u = round_tensor(x.detach() * f.inv, a.rounding) + f.z;
  f.out = (f.u.clamp(static_cast<double>(a.qmin), static_cast<double>(a.qmax)) - f.z) * f.s;
  return f;
}

struct LsqFunction : public torch::autograd::Function<LsqFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& scale, const torch::Tensor& zero_point, const LsqArgs& a) {
    LsqForward f = lsq_forward(x, scale, zero_point, a);
    ctx->save_for_backward({x, scale, zero_point});
    ctx->saved_data["qmin"] = a.qmin;
    ctx->saved_data["qmax"] = a.qmax;
    ctx->saved_data["axis"] = a.axis;
    ctx->saved_data["g"] = a.grad_factor;
    ctx->saved_data["half_away"] = a.rounding == Rounding::half_away;
    return f.out;
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &scale = saved[1], &zero_point = saved[2];
    LsqArgs a{ctx->saved_data["qmin"].toInt(), ctx->saved_data["qmax"].toInt(), ctx->saved_data["axis"].toInt(),
              ctx->saved_data["g"].toDouble(),
              ctx->saved_data["half_away"].toBool() ? Rounding::half_away : Rounding::half_even};
    const LsqForward f = lsq_forward(x, scale, zero_point, a);
    const torch::Tensor dout = grad_out[0];
    const double qmin = static_cast<double>(a.qmin), qmax = static_cast<double>(a.qmax);
    const torch::Tensor below = f.u.lt(qmin), above = f.u.gt(qmax);
    const torch::Tensor inside = below.logical_or(above).logical_not();
    const torch::Tensor dx = dout * inside;
    // ds: (out - x) / s inside, (qmin - z) below, (qmax - z) above; dz: -s outside, 0 inside.
    torch::Tensor ds_e = torch::where(inside, (f.out - x) * f.inv, torch::where(below, qmin - f.z, qmax - f.z));
    ds_e = ds_e * dout * a.grad_factor;
    const torch::Tensor ds = reduce_to_param(ds_e, a.axis, scale);
    torch::Tensor dz;
    if (zero_point.defined()) {
      const torch::Tensor dz_e = torch::where(inside, torch::zeros_like(dout), -f.s * dout) * a.grad_factor;
      dz = reduce_to_param(dz_e, a.axis, zero_point);
    }
    return {dx, ds, dz, torch::Tensor()};
  }
};

/// Squared error of fake-quantizing the rows of x2 (C, K) with per-row scales s (C), zero point 0.
torch::Tensor row_errors(const torch::Tensor& x2, const torch::Tensor& s, int64_t qmin, int64_t qmax, Rounding r) {
  const torch::Tensor sc = s.reshape({-1, 1});
  const torch::Tensor u = round_tensor(x2 * torch::reciprocal(sc), r);
  const torch::Tensor out = u.clamp(static_cast<double>(qmin), static_cast<double>(qmax)) * sc;
  return (out - x2).pow(2).sum(1);
}

/// The clipping-range multipliers the init searches: {0.20, 0.21, .., 1.00} for mse, {1} for minmax.
std::vector<double> init_grid(LsqInit init) {
  if (init == LsqInit::minmax) return {1.0};
  std::vector<double> g;
  for (int k = 20; k <= 100; ++k) g.push_back(k / 100.0);
  return g;
}

}  // namespace

torch::Tensor lsq_fake_quantize(const torch::Tensor& x, const torch::Tensor& scale, const torch::Tensor& zero_point,
                                int64_t qmin, int64_t qmax, int64_t axis, double grad_factor, Rounding r) {
  CSIPOSE_CHECK(x.defined() && x.scalar_type() == torch::kFloat, "lsq_fake_quantize: expected a float32 tensor");
  CSIPOSE_CHECK(scale.defined() && scale.scalar_type() == torch::kFloat && scale.dim() == 1,
                "lsq_fake_quantize: scale must be a float32 vector");
  CSIPOSE_CHECK(qmin < qmax, "lsq_fake_quantize: qmin ", qmin, " >= qmax ", qmax);
  if (axis < 0) {
    CSIPOSE_CHECK(scale.numel() == 1, "lsq_fake_quantize: per-tensor scale has ", scale.numel(), " entries");
  } else {
    CSIPOSE_CHECK(axis < x.dim() && x.size(axis) == scale.numel(), "lsq_fake_quantize: tensor of shape ", x.sizes(),
                  " does not have ", scale.numel(), " channels along axis ", axis);
  }
  CSIPOSE_CHECK(!zero_point.defined() || zero_point.sizes() == scale.sizes(),
                "lsq_fake_quantize: zero point of shape ", zero_point.sizes(), " vs scale ", scale.sizes());
  const LsqArgs a{qmin, qmax, axis, grad_factor, r};
  const bool grad = torch::GradMode::is_enabled() &&
                    (x.requires_grad() || scale.requires_grad() || (zero_point.defined() && zero_point.requires_grad()));
  if (!grad) return lsq_forward(x, scale, zero_point, a).out;
  // Function::apply wants defined tensors: an absent zero point is a constant zero.
  const torch::Tensor zp = zero_point.defined() ? zero_point : torch::zeros_like(scale);
  return LsqFunction::apply(x, scale, zp, a);
}

QuantParams learned_qparams(const torch::Tensor& scale, const torch::Tensor& zero_point, int64_t qmin, int64_t qmax,
                            int64_t axis) {
  torch::NoGradGuard no_grad;
  const torch::Tensor s = scale.detach().clamp_min(static_cast<float>(kMinScale)).to(torch::kCPU).contiguous();
  QuantParams p;
  p.scale.assign(s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
  if (zero_point.defined()) {
    const torch::Tensor z = torch::round(zero_point.detach())
                                .clamp(static_cast<double>(qmin), static_cast<double>(qmax))
                                .to(torch::kCPU)
                                .contiguous();
    for (int64_t i = 0; i < z.numel(); ++i) p.zero_point.push_back(static_cast<int32_t>(z.data_ptr<float>()[i]));
  } else {
    p.zero_point.assign(p.scale.size(), 0);
  }
  p.qmin = qmin;
  p.qmax = qmax;
  p.axis = axis;
  p.validate();
  return p;
}

torch::Tensor init_weight_scales(const torch::Tensor& w, const QuantSpec& spec, LsqInit init) {
  torch::NoGradGuard no_grad;
  CSIPOSE_CHECK(spec.symmetric && spec.is_signed, "learned weight scales need signed symmetric weights, got ",
                spec.describe());
  const torch::Tensor wd = w.detach().to(torch::kFloat);
  const bool per_channel = spec.granularity == Granularity::per_channel;
  const torch::Tensor w2 = per_channel ? wd.transpose(0, spec.axis).reshape({wd.size(spec.axis), -1}) : wd.reshape({1, -1});
  const double qmax = static_cast<double>(spec.qmax());
  const torch::Tensor amax = w2.abs().amax(1);
  torch::Tensor best_s, best_err;
  for (const double a : init_grid(init)) {
    const torch::Tensor s = (amax * a / qmax).clamp_min(static_cast<float>(kMinScale));
    const torch::Tensor err = row_errors(w2, s, spec.qmin(), spec.qmax(), spec.rounding);
    if (!best_s.defined()) {
      best_s = s;
      best_err = err;
    } else {
      const torch::Tensor better = err.lt(best_err);
      best_s = torch::where(better, s, best_s);
      best_err = torch::where(better, err, best_err);
    }
  }
  return best_s.contiguous();
}

QuantParams init_activation_qparams(const torch::Tensor& x, const QuantSpec& spec, LsqInit init) {
  torch::NoGradGuard no_grad;
  CSIPOSE_CHECK(spec.granularity == Granularity::per_tensor, "learned activation scales are per-tensor, got ",
                spec.describe());
  const torch::Tensor flat = x.detach().to(torch::kFloat).reshape({-1});
  CSIPOSE_CHECK(flat.numel() > 0, "learned activation init: empty batch");
  const float lo = std::min(flat.min().item<float>(), 0.0f), hi = std::max(flat.max().item<float>(), 0.0f);
  CSIPOSE_CHECK(std::isfinite(lo) && std::isfinite(hi), "learned activation init: non-finite activations");
  // The search runs on at most 2^18 evenly strided values (the range above is the whole batch's).
  const int64_t stride = std::max<int64_t>(1, flat.numel() >> 18);
  const torch::Tensor sample = flat.slice(0, 0, flat.numel(), stride);
  QuantParams best;
  double best_err = 0.0;
  for (const double a : init_grid(init)) {
    const QuantParams p = qparams_from_range(spec, {static_cast<float>(lo * a)}, {static_cast<float>(hi * a)});
    const double err = (fake_quantize(sample, p, spec.rounding) - sample).pow(2).sum().item<double>();
    if (best.scale.empty() || err < best_err) {
      best = p;
      best_err = err;
    }
  }
  return best;
}

}  // namespace csipose
