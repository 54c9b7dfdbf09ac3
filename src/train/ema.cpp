#include "train/ema.h"

#include <torch/torch.h>

#include <algorithm>

#include "common/check.h"

namespace csipose {
namespace {

// Parameters then buffers, in registration order: the same order for any two models of one config.
std::vector<std::pair<std::string, torch::Tensor>> entries(const torch::nn::Module& m, std::vector<bool>* is_param) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(true)) {
    out.emplace_back(p.key(), p.value());
    if (is_param) is_param->push_back(true);
  }
  for (const auto& b : m.named_buffers(true)) {
    out.emplace_back(b.key(), b.value());
    if (is_param) is_param->push_back(false);
  }
  return out;
}

}  // namespace

Ema::Ema(EmaConfig config, const torch::nn::Module& model) : config_(config) {
  torch::NoGradGuard no_grad;
  for (const auto& kv : entries(model, &is_param_)) {
    names_.push_back(kv.first);
    shadow_.push_back(kv.second.detach().clone());
  }
}

double Ema::next_decay() const {
  const double n = static_cast<double>(updates_);
  return config_.warmup ? std::min(config_.decay, (1.0 + n) / (10.0 + n)) : config_.decay;
}

void Ema::update(const torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  const double d = next_decay();
  const auto current = entries(model, nullptr);
  CSIPOSE_CHECK(current.size() == shadow_.size(), "EMA: model has ", current.size(), " tensors, EMA holds ",
                shadow_.size());
  for (size_t i = 0; i < shadow_.size(); ++i) {
    if (shadow_[i].is_floating_point()) shadow_[i].mul_(d).add_(current[i].second, 1.0 - d);
    else shadow_[i].copy_(current[i].second);
  }
  ++updates_;
}

void Ema::copy_to(torch::nn::Module& model) const {
  torch::NoGradGuard no_grad;
  const auto target = entries(model, nullptr);
  CSIPOSE_CHECK(target.size() == shadow_.size(), "EMA: target model has ", target.size(), " tensors, EMA holds ",
                shadow_.size());
  for (size_t i = 0; i < shadow_.size(); ++i) {
    CSIPOSE_CHECK(target[i].first == names_[i], "EMA: tensor ", i, " is ", target[i].first, ", expected ", names_[i]);
    target[i].second.copy_(shadow_[i]);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> Ema::state_tensors() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (size_t i = 0; i < shadow_.size(); ++i) out.emplace_back("ema." + names_[i], shadow_[i]);
  return out;
}

void Ema::load_state(const std::map<std::string, torch::Tensor>& tensors, int64_t updates) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < shadow_.size(); ++i) {
    auto it = tensors.find("ema." + names_[i]);
    CSIPOSE_CHECK(it != tensors.end(), "checkpoint has no EMA tensor ema.", names_[i]);
    CSIPOSE_CHECK(it->second.sizes() == shadow_[i].sizes(), "EMA tensor ema.", names_[i], " has shape ",
                  it->second.sizes(), ", expected ", shadow_[i].sizes());
    shadow_[i].copy_(it->second);
  }
  updates_ = updates;
}

}  // namespace csipose
