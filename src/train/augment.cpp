#include "train/augment.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>

#include "common/check.h"

namespace csipose {

double sample_gamma(double shape, Rng& rng) {
  CSIPOSE_CHECK(shape > 0, "gamma shape must be > 0, got ", shape);
  if (shape < 1.0) {
    double u = rng.uniform();
    while (u <= 0.0) u = rng.uniform();
    return sample_gamma(shape + 1.0, rng) * std::pow(u, 1.0 / shape);
  }
  const double d = shape - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  for (;;) {
    double x, v;
    do {
      x = rng.normal();
      v = 1.0 + c * x;
    } while (v <= 0.0);
    v = v * v * v;
    const double u = rng.uniform();
    if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
    if (u > 0.0 && std::log(u) < 0.5 * x * x + d * (1.0 - v + std::log(v))) return d * v;
  }
}

double sample_beta(double a, double b, Rng& rng) {
  const double x = sample_gamma(a, rng), y = sample_gamma(b, rng);
  return x + y > 0 ? x / (x + y) : 0.5;
}

MixupDraw draw_mixup(const MixupConfig& config, int64_t batch_size, Rng& rng) {
  MixupDraw d;
  if (!config.enabled() || batch_size < 2) return d;
  if (rng.uniform() >= config.prob) return d;
  d.mixed = true;
  d.lambda = sample_beta(config.alpha, config.alpha, rng);
  d.partner.resize(static_cast<size_t>(batch_size));
  for (int64_t i = 0; i < batch_size; ++i) d.partner[static_cast<size_t>(i)] = i;
  rng.shuffle(d.partner);
  return d;
}

void apply_mixup(torch::Tensor& x, torch::Tensor& y, const MixupDraw& draw) {
  if (!draw.mixed) return;
  CSIPOSE_CHECK(static_cast<int64_t>(draw.partner.size()) == x.size(0), "mixup: draw for ", draw.partner.size(),
                " samples, batch has ", x.size(0));
  const auto idx = torch::tensor(draw.partner, torch::kInt64).to(x.device(), /*non_blocking=*/true);
  x = x * draw.lambda + x.index_select(0, idx) * (1.0 - draw.lambda);
  y = y * draw.lambda + y.index_select(0, idx) * (1.0 - draw.lambda);
}

int64_t num_links(const std::vector<int64_t>& input_shape) {
  CSIPOSE_CHECK(input_shape.size() >= 2, "augment: input needs at least (channels, time) per sample");
  const int64_t c = input_shape[0];
  if (c == 540) return 9;  // WiFlow: 3 tx x 3 rx links, 60 subcarriers each
  return c;                // MM-Fi: one link per antenna (3); any other layout: one per channel
}

torch::Tensor augment_inputs(const torch::Tensor& x_in, const AugmentConfig& config, int64_t links) {
  if (!config.enabled()) return x_in;
  torch::NoGradGuard no_grad;
  auto x = x_in;
  const int64_t b = x.size(0), c = x.size(1), t = x.size(-1);
  std::vector<int64_t> per_sample(static_cast<size_t>(x.dim()), 1);
  per_sample[0] = b;
  const auto opts = x.options();
  if (config.scale > 0) {
    const auto s = 1.0 + config.scale * (2.0 * torch::rand({b}, opts) - 1.0);
    x = x * s.view(per_sample);
  }
  if (config.link_drop > 0) {
    CSIPOSE_CHECK(c % links == 0, "augment: ", c, " channels do not split into ", links, " links");
    auto keep = (torch::rand({b, links}, opts) >= config.link_drop).to(x.scalar_type());
    keep = keep.repeat_interleave(c / links, /*dim=*/1);
    std::vector<int64_t> shape{b, c};
    for (int64_t d = 2; d < x.dim(); ++d) shape.push_back(1);
    x = x * keep.view(shape);
  }
  if (config.time_mask > 0) {
    const int64_t max_w = std::min(config.time_mask, t);
    const auto width = torch::floor(torch::rand({b}, opts) * static_cast<double>(max_w + 1));
    const auto start = torch::floor(torch::rand({b}, opts) * (static_cast<double>(t) - width + 1.0));
    const auto pos = torch::arange(t, opts).view({1, t});
    const auto inside = (pos >= start.view({b, 1})) & (pos < (start + width).view({b, 1}));
    std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
    shape[0] = b;
    shape.back() = t;
    x = x * (~inside).to(x.scalar_type()).view(shape);
  }
  if (config.noise_std > 0) x = x + torch::randn_like(x) * (config.noise_std * x.std());
  return x;
}

torch::Tensor tta_view(const torch::Tensor& x, const std::string& view) {
  if (view == "identity") return x;
  const auto colon = view.find(':');
  CSIPOSE_CHECK(colon != std::string::npos, "unknown TTA view \"", view, "\"");
  const std::string kind = view.substr(0, colon);
  const double arg = std::strtod(view.c_str() + colon + 1, nullptr);
  if (kind == "scale") return x * arg;
  if (kind == "shift") {
    const int64_t t = x.size(-1), k = static_cast<int64_t>(arg);
    if (k == 0) return x;
    // out[..., i] = x[..., clamp(i - k, 0, t - 1)]: content moves k steps later (k > 0), edges repeat.
    const auto idx = torch::clamp(torch::arange(t, torch::TensorOptions().dtype(torch::kInt64).device(x.device())) - k,
                                  0, t - 1);
    return x.index_select(-1, idx);
  }
  fail("unknown TTA view \"", view, "\"; expected identity, scale:F or shift:K");
}

}  // namespace csipose
