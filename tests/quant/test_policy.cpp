// QuantPolicy (src/quant/policy.h): first match wins, fp32 islands, rule specs starting from the
// defaults, glob corner cases, errors naming file, line and key path, and the YAML round trip.
#include <gtest/gtest.h>

#include <string>

#include "common/check.h"
#include "common/config_node.h"
#include "quant/policy.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

QuantPolicy parse(const std::string& yaml, const std::string& source = "policy.yaml") {
  const ConfigNode n = ConfigNode::load_string(yaml, source);
  QuantPolicy p = QuantPolicy::from_yaml(n);
  n.finish();
  return p;
}

/// The message of parsing `yaml` (from_yaml, then finish()).
std::string parse_error(const std::string& yaml) {
  return error_of([&] { parse(yaml); });
}

QuantSpec weights_bits(int bits) {
  QuantSpec s = QuantSpec::weight_default();
  s.bits = bits;
  return s;
}

TEST(QuantPolicy, EmptyFileIsTheBuiltInDefaults) {
  const QuantPolicy p = parse("{}");
  EXPECT_EQ(p, QuantPolicy());
  EXPECT_EQ(p.defaults.weights, QuantSpec::weight_default());
  EXPECT_EQ(p.defaults.activations, QuantSpec::activation_default());
  EXPECT_EQ(p.weight_observer.type, ObserverType::per_channel_minmax);
  EXPECT_EQ(p.activation_observer.type, ObserverType::moving_average);
  EXPECT_EQ(p.activation_observer.averaging_constant, 0.01);
  EXPECT_EQ(p.resolve("tcn.0.conv1_group"), p.defaults);
  EXPECT_EQ(p.first_match("anything"), -1);
  p.validate();
}

TEST(QuantPolicy, FirstMatchingRuleWins) {
  const QuantPolicy p = parse(
      "rules:\n"
      "  - match: \"tcn.0.*\"\n"
      "    weights: {bits: 4}\n"
      "  - match: \"tcn.*\"\n"
      "    weights: fp32\n"
      "  - match: \"*attn*\"\n"
      "    activations: fp32\n"
      "  - match: \"tcn.1.conv1\"\n"  // shadowed by tcn.*
      "    weights: {bits: 6}\n");
  ASSERT_EQ(p.rules.size(), 4u);
  EXPECT_EQ(p.first_match("tcn.0.conv1_group"), 0);
  EXPECT_EQ(p.resolve("tcn.0.conv1_group"), (LayerScheme{weights_bits(4), QuantSpec::activation_default()}));
  EXPECT_EQ(p.first_match("tcn.1.conv1"), 1);
  EXPECT_EQ(p.resolve("tcn.1.conv1"), (LayerScheme{std::nullopt, QuantSpec::activation_default()}));
  // tcn.* comes before *attn*, so a TCN attention layer gets fp32 weights and default activations.
  EXPECT_EQ(p.resolve("tcn.2.attn"), (LayerScheme{std::nullopt, QuantSpec::activation_default()}));
  EXPECT_EQ(p.resolve("encoder.attn.qkv"), (LayerScheme{QuantSpec::weight_default(), std::nullopt}));
  EXPECT_EQ(p.first_match("head"), -1);
  EXPECT_EQ(p.resolve("head"), p.defaults);
}

TEST(QuantPolicy, Fp32IslandsAndRuleSpecsStartFromTheDefaults) {
  const QuantPolicy p = parse(
      "defaults:\n"
      "  weights: {bits: 6, granularity: per_tensor}\n"
      "  activations: {bits: 7, rounding: half_away}\n"
      "observers:\n"
      "  weights: {type: minmax}\n"
      "  activations: {type: histogram, bins: 512, method: percentile, percentile: 99.9}\n"
      "rules:\n"
      "  - match: pose_head*\n"
      "    weights: fp32\n"
      "    activations: fp32\n"
      "  - match: input_proj\n"
      "    weights: {bits: 8}\n"
      "    activations: {symmetric: true}\n");
  EXPECT_EQ(p.resolve("pose_head.fc"), (LayerScheme{std::nullopt, std::nullopt}));
  QuantSpec w = QuantSpec::weight_default();
  w.granularity = Granularity::per_tensor;  // from defaults.weights; bits from the rule
  QuantSpec a = QuantSpec::activation_default();
  a.bits = 7;
  a.rounding = Rounding::half_away;
  EXPECT_EQ(p.resolve("other").activations, a);
  a.symmetric = true;
  EXPECT_EQ(p.resolve("input_proj"), (LayerScheme{w, a}));
  w.bits = 6;
  EXPECT_EQ(p.resolve("other").weights, w);
  EXPECT_EQ(p.activation_observer.type, ObserverType::histogram);
  EXPECT_EQ(p.activation_observer.bins, 512);
  // fp32 defaults: nothing is quantized unless a rule says so; a rule's spec then starts from
  // the built-in format.
  const QuantPolicy q = parse(
      "defaults: {weights: fp32, activations: fp32}\n"
      "rules:\n"
      "  - match: \"tcn.*\"\n"
      "    weights: {bits: 4}\n");
  EXPECT_EQ(q.resolve("head"), (LayerScheme{std::nullopt, std::nullopt}));
  EXPECT_EQ(q.resolve("tcn.3.conv2_pw"), (LayerScheme{weights_bits(4), std::nullopt}));
}

TEST(QuantPolicy, GlobCornerCases) {
  struct G {
    const char* pattern;
    const char* name;
    bool match;
  };
  const G cases[] = {
      {"", "", true},
      {"", "a", false},
      {"*", "", true},
      {"*", "tcn.0.conv1", true},
      {"**", "a.b", true},
      {"?", "", false},
      {"?", "a", true},
      {"?", "ab", false},
      {"a?c", "abc", true},
      {"a?c", "a.c", true},
      {"a?c", "ac", false},
      {"tcn.*", "tcn.0.conv1", true},
      {"tcn.*", "tcn", false},
      {"tcn.*", "tcn.", true},
      {"tcn*", "tcn", true},
      {"*.conv?", "x.y.conv1", true},
      {"*.conv?", "x.y.conv12", false},
      {"a.b", "axb", false},
      {"a*b*c", "abc", true},
      {"a*b*c", "aXbYbZc", true},
      {"a*b*c", "acb", false},
      {"*ab", "aab", true},
      {"*a*b", "xaxxb", true},
      {"*a*b", "xbxxa", false},
      {"A", "a", false},
      {"[a]", "[a]", true},
      {"[a]", "a", false},
      {"tcn.?.conv*", "tcn.3.conv2_pw", true},
      {"tcn.?.conv*", "tcn.10.conv2_pw", false},
      {"*_pw", "tcn.0.conv1_pw", true},
      {"*_pw", "tcn.0.conv1_pw.x", false},
  };
  for (const G& g : cases) EXPECT_EQ(glob_match(g.pattern, g.name), g.match) << g.pattern << " vs " << g.name;
}

TEST(QuantPolicy, BadValuesNameFileLineAndKeyPath) {
  EXPECT_EQ(parse_error("rules:\n  - match: a\n    weights: fp16\n"),
            "policy.yaml:3: rules[0].weights: unknown value \"fp16\"; expected fp32 or a mapping of QuantSpec keys");
  EXPECT_EQ(parse_error("rules:\n  - match: a\n    activations: [8]\n"),
            "policy.yaml:3: rules[0].activations: expected fp32 or a mapping of QuantSpec keys");
  EXPECT_TRUE(contains(parse_error("rules:\n  - match: a\n  - match: b\n    weights: {bits: 9}\n"),
                       "policy.yaml:4: rules[1].weights.bits:"));
  EXPECT_TRUE(contains(parse_error("rules:\n  - weights: fp32\n"), "rules[0].match: required key is missing"));
  EXPECT_TRUE(contains(parse_error("rules:\n  - match: \"\"\n"), "rules[0].match: empty glob"));
  // Unknown keys, at every level.
  EXPECT_EQ(parse_error("rules:\n  - match: a\n    wieghts: fp32\n"),
            "policy.yaml:3: rules[0].wieghts: unknown key (misspelled, or not used by this component)");
  EXPECT_TRUE(
      contains(parse_error("rules:\n  - match: a\n    weights: {bitz: 4}\n"), "rules[0].weights.bitz: unknown key"));
  EXPECT_TRUE(contains(parse_error("default:\n  weights: fp32\n"), "policy.yaml:1: default: unknown key"));
  EXPECT_TRUE(contains(parse_error("observers:\n  weights: {type: per_channel_minmax, bins: 4}\n"),
                       "observers.weights.bins: unknown key"));
  // Formats the int8 ops cannot run.
  EXPECT_TRUE(contains(parse_error("rules:\n  - match: a\n    weights: {symmetric: false}\n"),
                       "policy.yaml:3: rules[0].weights: weights int8 per_channel(axis 0) affine signed"));
  EXPECT_TRUE(contains(parse_error("rules:\n  - match: a\n    weights: {axis: 1}\n"), "must use axis 0"));
  EXPECT_TRUE(contains(parse_error("defaults:\n  activations: {granularity: per_channel}\n"),
                       "policy.yaml:2: defaults.activations: activations int8 per_channel(axis 0) affine signed, round "
                       "half-even: activations must be per_tensor"));
  EXPECT_TRUE(contains(parse_error("defaults:\n  activations: {signed: false}\n"), "does not fit int8 [-128, 127]"));
  EXPECT_TRUE(contains(parse_error("rules:\n  - match: a\n    weights: {granularity: per_tensor}\n"),
                       "do not fit the weight observer per_channel_minmax (per_channel specs only)"));
  EXPECT_TRUE(contains(parse_error("observers:\n  weights: {type: minmax}\n"),
                       "observers.weights.type: weights int8 per_channel(axis 0) symmetric signed, round half-even do "
                       "not fit the weight observer minmax (per_tensor specs only) (the default weights; set "
                       "defaults.weights)"));
  EXPECT_TRUE(contains(parse_error("observers:\n  activations: {type: per_channel_minmax}\n"),
                       "observers.activations.type: per_channel_minmax cannot observe per_tensor activations"));
}

TEST(QuantPolicy, YamlRoundTripAndLoadFile) {
  QuantPolicy p;
  p.defaults.activations->rounding = Rounding::half_away;
  p.activation_observer.averaging_constant = 0.05;
  QuantRule fp32_island;
  fp32_island.match = "pose_head.*";
  fp32_island.sets_weights = fp32_island.sets_activations = true;
  QuantRule four;
  four.match = "odd \"name\" with \\ and * and ?";
  four.sets_weights = true;
  four.weights = weights_bits(4);
  QuantRule acts;
  acts.match = "*";
  acts.sets_activations = true;
  acts.activations = QuantSpec::activation_default();
  acts.activations->symmetric = true;
  p.rules = {fp32_island, four, acts};
  p.validate();
  const std::string yaml = p.to_yaml();
  const QuantPolicy q = parse(yaml, "<to_yaml>");
  EXPECT_EQ(q, p) << yaml;
  EXPECT_EQ(q.to_yaml(), yaml);
  EXPECT_EQ(q.resolve("odd \"name\" with \\ and * and ?").weights, weights_bits(4));
  // A rule that sets nothing is kept (and shields later rules).
  QuantRule nothing;
  nothing.match = "keep.*";
  p.rules.insert(p.rules.begin(), nothing);
  EXPECT_EQ(parse(p.to_yaml()), p);
  EXPECT_EQ(p.resolve("keep.me"), p.defaults);
  EXPECT_EQ(parse(QuantPolicy().to_yaml()), QuantPolicy());

  testing::TempDir dir;
  testing::write_file(dir.file("policy.yaml"), yaml);
  const QuantPolicy loaded = QuantPolicy::load_file(dir.file("policy.yaml"), {"defaults.weights.bits=6"});
  EXPECT_EQ(loaded.defaults.weights->bits, 6);
  EXPECT_EQ(loaded.rules, q.rules);
  EXPECT_TRUE(contains(error_of([&] { QuantPolicy::load_file(dir.file("policy.yaml"), {"defaults.wieghts=fp32"}); }),
                       "--set defaults.wieghts: defaults.wieghts: unknown key"));
}

TEST(QuantPolicy, ValidateNamesTheRule) {
  QuantPolicy p;
  QuantRule r;
  r.match = "tcn.*";
  r.sets_weights = true;
  r.weights = QuantSpec::weight_default();
  r.weights->symmetric = false;
  p.rules = {QuantRule{}, r};
  p.rules[0].match = "a";
  EXPECT_TRUE(
      contains(error_of([&] { p.validate(); }), "QuantPolicy: rules[1] (match \"tcn.*\").weights: weights int8"));
  p.rules[1].sets_weights = false;  // an unset side is not checked
  p.validate();
  p.rules[0].match = "";
  EXPECT_EQ(error_of([&] { p.validate(); }), "QuantPolicy: rules[0].match: empty glob");
}

}  // namespace
}  // namespace csipose
