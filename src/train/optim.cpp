#include "train/optim.h"

#include <torch/torch.h>

#include <cmath>

#include "common/check.h"

namespace csipose {

std::vector<NamedParam> optimizer_params(const torch::nn::Module& module, bool decay_norm_and_bias) {
  std::vector<NamedParam> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad()) continue;
    out.push_back({item.key(), item.value(), decay_norm_and_bias || item.value().dim() > 1});
  }
  return out;
}

Optimizer::Optimizer(OptimizerConfig config, std::vector<NamedParam> params)
    : config_(config), params_(std::move(params)), m_(params_.size()), v_(params_.size()) {
  CSIPOSE_CHECK(!params_.empty(), "optimizer: the model has no trainable parameters");
}

void Optimizer::zero_grad() {
  for (auto& p : params_) p.param.mutable_grad() = torch::Tensor();
}

void Optimizer::step(double lr) {
  torch::NoGradGuard no_grad;
  ++steps_;
  const double b1 = config_.beta1, b2 = config_.beta2, wd = config_.weight_decay;
  if (config_.type == OptimizerType::adamw) {
    const double bias1 = 1.0 - std::pow(b1, static_cast<double>(steps_));
    const double bias2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(steps_)));
    for (size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i].param;
      const auto& g = p.grad();
      if (!g.defined()) continue;
      if (!m_[i].defined()) {
        m_[i] = torch::zeros_like(p, torch::MemoryFormat::Preserve);
        v_[i] = torch::zeros_like(p, torch::MemoryFormat::Preserve);
      }
      const double lr_i = lr * params_[i].lr_scale;
      if (params_[i].decay && wd != 0.0) p.mul_(1.0 - lr_i * wd);
      m_[i].mul_(b1).add_(g, 1.0 - b1);
      v_[i].mul_(b2).addcmul_(g, g, 1.0 - b2);
      const auto denom = (v_[i].sqrt() / bias2_sqrt).add_(config_.eps);
      p.addcdiv_(m_[i], denom, -lr_i / bias1);
    }
  } else {
    for (size_t i = 0; i < params_.size(); ++i) {
      auto& p = params_[i].param;
      auto g = p.grad();
      if (!g.defined()) continue;
      if (params_[i].decay && wd != 0.0) g = g.add(p, wd);
      if (b1 != 0.0) {
        if (!m_[i].defined()) m_[i] = g.clone();
        else m_[i].mul_(b1).add_(g);
        g = m_[i];
      }
      p.add_(g, -lr * params_[i].lr_scale);
    }
  }
}

std::vector<std::pair<std::string, torch::Tensor>> Optimizer::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const bool adam = config_.type == OptimizerType::adamw;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!m_[i].defined()) continue;
    out.emplace_back("optim." + params_[i].name + (adam ? ".exp_avg" : ".momentum"), m_[i]);
    if (adam) out.emplace_back("optim." + params_[i].name + ".exp_avg_sq", v_[i]);
  }
  return out;
}

void Optimizer::load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t steps) {
  torch::NoGradGuard no_grad;
  const bool adam = config_.type == OptimizerType::adamw;
  size_t used = 0;
  auto take = [&](const std::string& key, const torch::Tensor& like) -> torch::Tensor {
    auto it = tensors.find(key);
    if (it == tensors.end()) return {};
    CSIPOSE_CHECK(it->second.sizes() == like.sizes(), "optimizer state ", key, " has shape ", it->second.sizes(),
                  " but the parameter has ", like.sizes());
    ++used;
    return it->second.to(like.device(), like.scalar_type()).clone();
  };
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& p = params_[i].param;
    m_[i] = take("optim." + params_[i].name + (adam ? ".exp_avg" : ".momentum"), p);
    if (adam) {
      v_[i] = take("optim." + params_[i].name + ".exp_avg_sq", p);
      CSIPOSE_CHECK(m_[i].defined() == v_[i].defined(), "optimizer state of ", params_[i].name, " is incomplete");
    }
  }
  size_t optim_entries = 0;
  for (const auto& kv : tensors) optim_entries += kv.first.rfind("optim.", 0) == 0;
  CSIPOSE_CHECK(used == optim_entries, "optimizer state has ", optim_entries - used,
                " entries that match no parameter of this model (", to_string(config_.type), ")");
  steps_ = steps;
}

torch::Tensor clip_grad_norm(const std::vector<NamedParam>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads, norms;
  for (const auto& p : params)
    if (p.param.grad().defined()) grads.push_back(p.param.grad());
  if (grads.empty()) return torch::zeros({});
  for (const auto& g : grads) norms.push_back(g.norm(2));
  const auto total = torch::stack(norms).norm(2);
  if (max_norm > 0) {
    const auto coef = torch::clamp(max_norm / (total + 1e-6), /*min=*/c10::nullopt, /*max=*/1.0);
    for (auto& g : grads) g.mul_(coef);
  }
  return total;
}

}  // namespace csipose
