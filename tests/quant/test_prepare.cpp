// prepare() on the real models: which ops get hooks under a policy, fp32 unchanged in observe mode
// and without hooks, int8 fake-quant close to fp32, fp32 islands, state round trip.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "common/config_node.h"
#include "models/registry.h"
#include "quant/prepare.h"
#include "testing.h"

namespace csipose {
namespace {

QuantPolicy policy_from(const std::string& yaml) {
  const ConfigNode n = ConfigNode::load_string(yaml, "<test>");
  QuantPolicy p = QuantPolicy::from_yaml(n);
  n.finish();
  return p;
}

TEST(Prepare, WiFlowGetsAHookPerConvAndAttentionProduct) {
  torch::manual_seed(0);
  auto m = make_model(model_preset("wiflow_tiny"));
  m->eval();
  const PreparedModel p = prepare(*m, QuantPolicy{});
  // wiflow_tiny: 4 TCN levels x (4 convs + a downsample conv where channels change: 4 levels,
  // 68->56->44->32 plus 540->68) = 20; 2D encoder: up + 4 blocks, each 3 convs + a 1x1 shortcut
  // = 20; 2 axial attentions x (qkv conv + 2 products) = 6; decoder 2 convs. Total 48.
  EXPECT_EQ(p.hooks.size(), 48u) << p.describe();
  EXPECT_EQ(p.hooks.front().first, "tcn.network.0.conv1_group");
  bool has_scores = false;
  for (const auto& h : p.hooks) has_scores = has_scores || h.first == "attention.width_axis.scores_mm";
  EXPECT_TRUE(has_scores) << p.describe();
}

TEST(Prepare, ObserveIsFp32AndFakeQuantIsClose) {
  torch::manual_seed(1);
  auto m = make_model(model_preset("wiflow_tiny"));
  m->eval();
  torch::NoGradGuard g;
  const auto x = torch::rand({8, 540, 20});
  const auto fp32 = m->forward(x);
  PreparedModel p = prepare(*m, QuantPolicy{});
  p.set_mode(QuantMode::observe);
  EXPECT_TRUE(torch::equal(m->forward(x), fp32));  // calibration does not change the result
  p.freeze_observers(true);
  p.set_mode(QuantMode::fake_quant);
  const auto fq = m->forward(x);
  const double rel = ((fq - fp32).norm() / fp32.norm()).item<double>();
  EXPECT_GT(rel, 0.0);   // something is quantized
  EXPECT_LT(rel, 0.1);   // int8 everywhere stays close (random init, one calibration batch)
  unprepare(*m);
  EXPECT_TRUE(torch::equal(m->forward(x), fp32));
}

TEST(Prepare, PolicyRulesMakeFp32IslandsAndPoseTransformersWork) {
  torch::manual_seed(2);
  auto m = make_model(model_preset("pose_micro"));
  m->eval();
  const QuantPolicy all_fp32 = policy_from("rules:\n  - {match: \"*\", weights: fp32, activations: fp32}\n");
  EXPECT_THROW(prepare(*m, all_fp32), Error);
  const QuantPolicy islands = policy_from(
      "rules:\n  - {match: \"gr.*\", weights: fp32, activations: fp32}\n  - {match: \"*_mm\", activations: fp32}\n");
  const PreparedModel p = prepare(*m, islands);
  for (const auto& h : p.hooks) {
    EXPECT_NE(h.first.rfind("gr.", 0), 0u) << h.first;
    EXPECT_EQ(h.first.find("_mm"), std::string::npos) << h.first;
  }
  bool in_proj = false;
  for (const auto& h : p.hooks) in_proj = in_proj || h.first == "tf.layers.0.self_attn";
  EXPECT_TRUE(in_proj) << p.describe();
  torch::NoGradGuard g;
  PreparedModel q = prepare(*m, QuantPolicy{});
  q.set_mode(QuantMode::fake_quant);
  const auto x = torch::rand({4, 3, 114, 10});
  const auto y = m->forward(x);
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{4, 17, 2}));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  // Observer state round trip into a second preparation of the same model.
  auto m2 = make_model(model_preset("pose_micro"));
  PreparedModel q2 = prepare(*m2, QuantPolicy{});
  q2.load_state(q.state());
  EXPECT_EQ(q2.state().dump(), q.state().dump());
}

}  // namespace
}  // namespace csipose
