#include "quant/prepare.h"

#include <torch/torch.h>

#include <sstream>

#include "common/check.h"

namespace csipose {

PreparedModel prepare(torch::nn::Module& model, const QuantPolicy& policy) {
  policy.validate();
  PreparedModel out;
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
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
  return out;
}

void unprepare(torch::nn::Module& model) {
  for (const auto& item : model.named_modules("", false))
    if (auto* q = dynamic_cast<Quantizable*>(item.value().get())) q->hook.reset();
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
