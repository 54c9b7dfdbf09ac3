#include "quant/policy.h"

#include <yaml-cpp/yaml.h>

#include <cstdio>
#include <sstream>

#include "common/check.h"
#include "common/config_node.h"

namespace csipose {
namespace {

// ---- format checks shared by from_yaml (errors at a YAML key) and validate() ------------------

std::optional<std::string> weight_issue(const QuantSpec& s, const ObserverConfig& observer) {
  if (!s.symmetric || !s.is_signed)
    return str_cat("weights ", s.describe(), " have a non-zero zero point; the int8 ops need signed symmetric weights");
  if (s.granularity == Granularity::per_channel && s.axis != 0)
    return str_cat("weights ", s.describe(), ": per-channel weights must use axis 0 (output channels)");
  const bool per_channel_observer = observer.type == ObserverType::per_channel_minmax;
  if (per_channel_observer != (s.granularity == Granularity::per_channel))
    return str_cat("weights ", s.describe(), " do not fit the weight observer ", to_string(observer.type),
                   per_channel_observer ? " (per_channel specs only)" : " (per_tensor specs only)");
  return std::nullopt;
}

std::optional<std::string> activation_issue(const QuantSpec& s) {
  if (s.granularity != Granularity::per_tensor)
    return str_cat("activations ", s.describe(), ": activations must be per_tensor");
  if (s.qmin() < -128 || s.qmax() > 127)
    return str_cat("activations ", s.describe(), ": integer range [", s.qmin(), ", ", s.qmax(),
                   "] does not fit int8 [-128, 127]");
  return std::nullopt;
}

std::optional<std::string> activation_observer_issue(const ObserverConfig& o) {
  if (o.type == ObserverType::per_channel_minmax)
    return std::string("per_channel_minmax cannot observe per_tensor activations");
  return std::nullopt;
}

// ---- YAML helpers ------------------------------------------------------------------------------

/// The YAML node kind of `key` in the mapping `n` (ConfigNode has no kind query; its dump does).
YAML::NodeType::value kind_of(const ConfigNode& n, const std::string& key) {
  const YAML::Node root = YAML::Load(n.dump());
  const YAML::Node v = root[key];
  return v.IsDefined() ? v.Type() : YAML::NodeType::Undefined;
}

/// A side `key` of `n` (which must be present): the string fp32 -> std::nullopt, a mapping -> its
/// QuantSpec with absent keys from `base`.
std::optional<QuantSpec> read_side(const ConfigNode& n, const std::string& key, const QuantSpec& base) {
  switch (kind_of(n, key)) {
    case YAML::NodeType::Map:
      return QuantSpec::from_yaml(n.child(key), base);
    case YAML::NodeType::Scalar: {
      const std::string text = n.get<std::string>(key);
      if (text != "fp32") n.error(key, "unknown value \"" + text + "\"; expected fp32 or a mapping of QuantSpec keys");
      return std::nullopt;
    }
    default:
      n.error(key, "expected fp32 or a mapping of QuantSpec keys");
  }
}

/// YAML double-quoted scalar.
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

/// `text` (lines ending in '\n') with every line indented by `spaces`.
std::string indented(const std::string& text, int spaces) {
  std::string out, pad(static_cast<size_t>(spaces), ' ');
  size_t start = 0;
  while (start < text.size()) {
    const size_t end = text.find('\n', start);
    const size_t stop = end == std::string::npos ? text.size() : end;
    out += pad + text.substr(start, stop - start) + "\n";
    start = stop + 1;
  }
  return out;
}

/// `key: fp32` or `key:` and the spec's lines, indented by `spaces`.
std::string side_yaml(const std::string& key, const std::optional<QuantSpec>& side, int spaces) {
  const std::string pad(static_cast<size_t>(spaces), ' ');
  if (!side) return pad + key + ": fp32\n";
  return pad + key + ":\n" + indented(side->to_yaml(), spaces + 2);
}

}  // namespace

// ---- glob ------------------------------------------------------------------------------------------

bool glob_match(const std::string& pattern, const std::string& name) {
  // Greedy match with backtracking to the last '*': O(|pattern| * |name|) at worst.
  size_t p = 0, n = 0;
  size_t star = std::string::npos, star_n = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || (pattern[p] != '*' && pattern[p] == name[n]))) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      star_n = n;
    } else if (star != std::string::npos) {
      p = star + 1;
      n = ++star_n;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

// ---- QuantRule / QuantPolicy -------------------------------------------------------------------

bool QuantRule::operator==(const QuantRule& o) const {
  return match == o.match && sets_weights == o.sets_weights && (!sets_weights || weights == o.weights) &&
         sets_activations == o.sets_activations && (!sets_activations || activations == o.activations);
}

ObserverConfig QuantPolicy::default_weight_observer() {
  ObserverConfig c;
  c.type = ObserverType::per_channel_minmax;
  return c;
}

ObserverConfig QuantPolicy::default_activation_observer() {
  ObserverConfig c;
  c.type = ObserverType::moving_average;
  c.averaging_constant = 0.01;
  return c;
}

int64_t QuantPolicy::first_match(const std::string& name) const {
  for (size_t i = 0; i < rules.size(); ++i)
    if (glob_match(rules[i].match, name)) return static_cast<int64_t>(i);
  return -1;
}

LayerScheme QuantPolicy::resolve(const std::string& name) const {
  LayerScheme s = defaults;
  const int64_t i = first_match(name);
  if (i < 0) return s;
  const QuantRule& r = rules[static_cast<size_t>(i)];
  if (r.sets_weights) s.weights = r.weights;
  if (r.sets_activations) s.activations = r.activations;
  return s;
}

QuantPolicy QuantPolicy::from_yaml(const ConfigNode& node) {
  QuantPolicy p;
  if (node.has("fold_bn")) p.fold_bn = node.get<bool>("fold_bn");
  bool weight_observer_set = false;
  if (node.has("observers")) {
    const ConfigNode obs = node.child("observers");
    if (obs.has("weights")) {
      p.weight_observer = ObserverConfig::from_yaml(obs.child("weights"));
      weight_observer_set = true;
    }
    if (obs.has("activations")) {
      const ConfigNode a = obs.child("activations");
      p.activation_observer = ObserverConfig::from_yaml(a);
      if (const auto bad = activation_observer_issue(p.activation_observer)) a.error("type", *bad);
    }
  }
  // Checks a side read from `n`'s `key`, reporting at that key.
  const auto check_weights = [&](const ConfigNode& n, const std::optional<QuantSpec>& w) {
    if (!w) return;
    if (const auto bad = weight_issue(*w, p.weight_observer)) n.error("weights", *bad);
  };
  const auto check_activations = [&](const ConfigNode& n, const std::optional<QuantSpec>& a) {
    if (!a) return;
    if (const auto bad = activation_issue(*a)) n.error("activations", *bad);
  };
  if (node.has("defaults")) {
    const ConfigNode d = node.child("defaults");
    if (d.has("weights")) p.defaults.weights = read_side(d, "weights", QuantSpec::weight_default());
    if (d.has("activations")) p.defaults.activations = read_side(d, "activations", QuantSpec::activation_default());
    check_weights(d, p.defaults.weights);
    check_activations(d, p.defaults.activations);
  } else if (weight_observer_set) {
    // The built-in default weights (per_channel) must fit a weight observer the file changed.
    if (const auto bad = weight_issue(*p.defaults.weights, p.weight_observer))
      node.child("observers").child("weights").error("type", *bad + " (the default weights; set defaults.weights)");
  }
  const QuantSpec weight_base = p.defaults.weights.value_or(QuantSpec::weight_default());
  const QuantSpec activation_base = p.defaults.activations.value_or(QuantSpec::activation_default());
  if (node.has("rules")) {
    for (const ConfigNode& r : node.elements("rules")) {
      QuantRule rule;
      rule.match = r.get<std::string>("match");
      if (rule.match.empty()) r.error("match", "empty glob; it would match no module name");
      if (r.has("weights")) {
        rule.sets_weights = true;
        rule.weights = read_side(r, "weights", weight_base);
        check_weights(r, rule.weights);
      }
      if (r.has("activations")) {
        rule.sets_activations = true;
        rule.activations = read_side(r, "activations", activation_base);
        check_activations(r, rule.activations);
      }
      p.rules.push_back(std::move(rule));
    }
  }
  return p;
}

QuantPolicy QuantPolicy::load_file(const std::string& path, const std::vector<std::string>& overrides) {
  const ConfigNode root = ConfigNode::load_file(path, overrides);
  QuantPolicy p = from_yaml(root);
  root.finish();
  return p;
}

std::string QuantPolicy::to_yaml() const {
  std::ostringstream o;
  o << "fold_bn: " << (fold_bn ? "true" : "false") << "\n";
  o << "defaults:\n" << side_yaml("weights", defaults.weights, 2) << side_yaml("activations", defaults.activations, 2);
  o << "observers:\n"
    << "  weights:\n"
    << indented(weight_observer.to_yaml(), 4) << "  activations:\n"
    << indented(activation_observer.to_yaml(), 4);
  if (rules.empty()) {
    o << "rules: []\n";
  } else {
    o << "rules:\n";
    for (const QuantRule& r : rules) {
      o << "  - match: " << quoted(r.match) << "\n";
      if (r.sets_weights) o << side_yaml("weights", r.weights, 4);
      if (r.sets_activations) o << side_yaml("activations", r.activations, 4);
    }
  }
  return o.str();
}

void QuantPolicy::validate() const {
  weight_observer.validate();
  activation_observer.validate();
  if (const auto bad = activation_observer_issue(activation_observer))
    fail("QuantPolicy: observers.activations: ", *bad);
  const auto check = [&](const std::string& where, const LayerScheme& s, bool w, bool a) {
    if (w && s.weights) {
      s.weights->validate();
      if (const auto bad = weight_issue(*s.weights, weight_observer)) fail("QuantPolicy: ", where, ".weights: ", *bad);
    }
    if (a && s.activations) {
      s.activations->validate();
      if (const auto bad = activation_issue(*s.activations)) fail("QuantPolicy: ", where, ".activations: ", *bad);
    }
  };
  check("defaults", defaults, true, true);
  for (size_t i = 0; i < rules.size(); ++i) {
    const QuantRule& r = rules[i];
    CSIPOSE_CHECK(!r.match.empty(), "QuantPolicy: rules[", i, "].match: empty glob");
    check(str_cat("rules[", i, "] (match ", quoted(r.match), ")"), LayerScheme{r.weights, r.activations},
          r.sets_weights, r.sets_activations);
  }
}

bool QuantPolicy::operator==(const QuantPolicy& o) const {
  return fold_bn == o.fold_bn && defaults == o.defaults && weight_observer == o.weight_observer &&
         activation_observer == o.activation_observer && rules == o.rules;
}

}  // namespace csipose
