#include "quant/prepare.h"

#include <torch/torch.h>

#include <sstream>

#include "common/check.h"

namespace csipose {

PreparedModel prepare(torch::nn::Module& model, const QuantPolicy& policy,
                      const std::vector<std::pair<std::string, std::string>>& fold_pairs) {
  policy.validate();
  unprepare(model);
  PreparedModel out;
  const auto modules = model.named_modules(/*name_prefix=*/"", /*include_self=*/false);
  for (const auto& item : modules) {
    auto* q = dynamic_cast<Quantizable*>(item.value().get());
    if (q == nullptr) continue;
    const std::string kind = q->op_kind();
    const LayerScheme s = policy.resolve(item.key());
    // A matmul multiplies two activations: it has no weight side.
    const std::optional<QuantSpec> weights = kind == "matmul" ? std::nullopt : s.weights;
    if (!weights && !s.activations) {
      q->hook.reset();
      continue;
    }
    q->hook = std::make_shared<QuantHook>(item.key(), s.activations, weights, policy.activation_observer,
                                          kind == "matmul" ? 2 : 1);
    out.hooks.emplace_back(item.key(), q->hook);
  }
  CSIPOSE_CHECK(!out.hooks.empty(), "prepare: the policy quantizes no op of this model");
  if (policy.fold_bn) {
    for (const auto& [conv_name, bn_name] : fold_pairs) {
      CSIPOSE_CHECK(modules.contains(conv_name) && modules.contains(bn_name), "prepare: fold pair ", conv_name, " -> ",
                    bn_name, " names no module of this model");
      auto* q = dynamic_cast<Quantizable*>(modules[conv_name].get());
      auto* bn = dynamic_cast<FoldableBn*>(modules[bn_name].get());
      CSIPOSE_CHECK(q != nullptr && bn != nullptr, "prepare: fold pair ", conv_name, " -> ", bn_name,
                    " is not a quantizable conv and a foldable BatchNorm");
      if (!q->hook || !q->hook->weight_spec()) continue;  // fp32 weights: the BatchNorm stays a float op
      CSIPOSE_CHECK(q->op_weight().defined() && q->op_weight().size(0) == bn->bn_features(), "prepare: ", bn_name,
                    " has ", bn->bn_features(), " features, ", conv_name, " a different number of outputs");
      q->hook->set_bn(bn);
      bn->folded_into = q->hook;
    }
  }
  return out;
}

void unprepare(torch::nn::Module& model) {
  for (const auto& item : model.named_modules("", false)) {
    if (auto* q = dynamic_cast<Quantizable*>(item.value().get())) q->hook.reset();
    if (auto* bn = dynamic_cast<FoldableBn*>(item.value().get())) bn->folded_into.reset();
  }
}

PreparedModel prepared_hooks(torch::nn::Module& model) {
  PreparedModel out;
  for (const auto& item : model.named_modules("", false))
    if (auto* q = dynamic_cast<Quantizable*>(item.value().get()); q != nullptr && q->hook)
      out.hooks.emplace_back(item.key(), q->hook);
  return out;
}

void PreparedModel::freeze_bn(bool frozen) {
  for (auto& h : hooks) h.second->freeze_bn(frozen);
}

int64_t PreparedModel::folded_bn() const {
  int64_t n = 0;
  for (const auto& h : hooks) n += h.second->bn() != nullptr ? 1 : 0;
  return n;
}

void PreparedModel::convert(torch::nn::Module& model) {
  const auto modules = model.named_modules("", false);
  for (auto& [name, hook] : hooks) {
    CSIPOSE_CHECK(modules.contains(name), "convert: the model has no module ", name);
    auto* q = dynamic_cast<Quantizable*>(modules[name].get());
    CSIPOSE_CHECK(q != nullptr && q->hook == hook, "convert: ", name, " is not the prepared op");
    torch::NoGradGuard no_grad;
    const auto [w, b] = hook->effective_weight_bias(q->op_weight(), q->op_bias());
    hook->convert(w, b);
  }
}

void PreparedModel::enable_learned(torch::nn::Module& model, const LearnedScalesConfig& config) {
  const auto modules = model.named_modules("", false);
  const auto params = model.parameters();
  const torch::Device device = params.empty() ? torch::Device(torch::kCPU) : params.front().device();
  for (auto& [name, hook] : hooks) {
    CSIPOSE_CHECK(modules.contains(name), "enable_learned: the model has no module ", name);
    auto* q = dynamic_cast<Quantizable*>(modules[name].get());
    CSIPOSE_CHECK(q != nullptr && q->hook == hook, "enable_learned: ", name, " is not the prepared op");
    torch::NoGradGuard no_grad;
    torch::Tensor w = q->op_weight();
    if (w.defined()) w = hook->effective_weight_bias(w, q->op_bias()).first;
    hook->enable_learned(config, w, device);
  }
}

std::vector<std::pair<std::string, torch::Tensor>> PreparedModel::learned_parameters() const {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& h : hooks)
    for (auto& kv : h.second->learned_parameters()) out.emplace_back(h.first + "." + kv.first, kv.second);
  return out;
}

void PreparedModel::set_mode(QuantMode m) {
  for (auto& h : hooks) h.second->set_mode(m);
}

void PreparedModel::freeze_observers(bool frozen) {
  for (auto& h : hooks) h.second->freeze_observers(frozen);
}

void PreparedModel::set_dynamic(bool dynamic) {
  for (auto& h : hooks) h.second->set_dynamic(dynamic);
}

Json PreparedModel::state() const {
  Json j = Json::object();
  for (const auto& h : hooks) j.set(h.first, h.second->state());
  return j;
}

void PreparedModel::load_state(const Json& state) {
  CSIPOSE_CHECK(state.is_object() && state.size() == hooks.size(), "quant state has ", state.size(),
                " ops, the prepared model ", hooks.size());
  for (auto& h : hooks) {
    CSIPOSE_CHECK(state.contains(h.first), "quant state has no entry for ", h.first);
    h.second->load_state(state.at(h.first));
  }
}

std::string PreparedModel::describe() const {
  std::ostringstream o;
  for (const auto& h : hooks) {
    const auto& w = h.second->weight_spec();
    o << h.first << ": weights " << (w ? w->describe() : std::string("fp32")) << "; activations "
      << (h.second->quantizes_activations() ? "quantized" : "fp32") << "\n";
  }
  return o.str();
}

}  // namespace csipose
