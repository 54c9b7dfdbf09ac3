#include "common/config_node.h"

#include <charconv>
#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <type_traits>

namespace csipose {

struct ConfigNode::State {
  std::string source;
  YAML::Node root;
  std::set<std::string> visited;     // mappings entered with child()/elements()
  std::set<std::string> consumed;    // keys read whole by a getter
  std::set<std::string> overridden;  // paths set by --set
};

template <> const char* type_name<bool>() { return "a boolean"; }
template <> const char* type_name<int>() { return "an integer"; }
template <> const char* type_name<int64_t>() { return "an integer"; }
template <> const char* type_name<double>() { return "a number"; }
template <> const char* type_name<float>() { return "a number"; }
template <> const char* type_name<std::string>() { return "a string"; }

static std::vector<std::string> split_path(const std::string& dotted) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : dotted) {
    if (c == '.') {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  return parts;
}

std::vector<std::string> apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides) {
  std::vector<std::string> paths;
  for (const auto& ov : overrides) {
    const auto eq = ov.find('=');
    CSIPOSE_CHECK(eq != std::string::npos && eq > 0, "--set ", ov, ": expected key.path=value");
    const std::string key = ov.substr(0, eq);
    const std::string text = ov.substr(eq + 1);
    const auto parts = split_path(key);
    for (const auto& p : parts)
      CSIPOSE_CHECK(!p.empty(), "--set ", ov, ": empty component in key path \"", key, "\"");
    YAML::Node value;
    try {
      value = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      fail("--set ", ov, ": value is not valid YAML: ", e.msg);
    }
    // Walk the tree by reassigning copies: YAML::Node::operator= on a handle would overwrite data.
    std::vector<YAML::Node> chain{root};
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      YAML::Node next = chain.back()[parts[i]];
      if (!next.IsDefined() || next.IsNull()) {
        chain.back()[parts[i]] = YAML::Node(YAML::NodeType::Map);
        next = chain.back()[parts[i]];
      }
      CSIPOSE_CHECK(next.IsMap(), "--set ", ov, ": \"", parts[i], "\" is not a mapping");
      chain.push_back(next);
    }
    chain.back()[parts.back()] = value;
    paths.push_back(key);
  }
  return paths;
}

static bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// yaml-cpp keeps every pair of a mapping with a repeated key and lookups return the first, so the
// second value would be silently ignored (and never reported by finish()). Complex keys
// ("? [a, b]") would make finish() and keys() throw a bare yaml-cpp exception.
static void reject_duplicate_keys(const YAML::Node& node, const std::string& path, const std::string& source) {
  if (node.IsMap()) {
    std::map<std::string, int> first_line;
    for (auto it = node.begin(); it != node.end(); ++it) {
      if (!it->first.IsScalar())
        fail(source, ":", it->first.Mark().line + 1, ": ", path.empty() ? "top level" : path,
             ": keys must be plain scalars");
      const std::string key = it->first.Scalar();
      const std::string p = path.empty() ? key : path + "." + key;
      const auto [seen, inserted] = first_line.emplace(key, it->first.Mark().line);
      if (!inserted)
        fail(source, ":", it->first.Mark().line + 1, ": ", p, ": duplicate key (first given on line ",
             seen->second + 1, ")");
      reject_duplicate_keys(it->second, p, source);
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) reject_duplicate_keys(node[i], path + "[" + std::to_string(i) + "]", source);
  }
}

ConfigNode ConfigNode::load_string(const std::string& yaml, const std::string& source,
                                   const std::vector<std::string>& overrides) {
  auto state = std::make_shared<State>();
  state->source = source;
  std::vector<YAML::Node> documents;
  try {
    documents = YAML::LoadAll(yaml);
  } catch (const YAML::ParserException& e) {
    fail(source, ":", e.mark.line + 1, ": YAML syntax error: ", e.msg);
  }
  // YAML::Load would silently drop every document after the first.
  if (documents.size() > 1)
    fail(source, ":", documents[1].Mark().line + 1, ": a config file holds one YAML document, found a second");
  if (!documents.empty()) state->root = documents[0];
  if (!state->root.IsDefined() || state->root.IsNull()) state->root = YAML::Node(YAML::NodeType::Map);
  CSIPOSE_CHECK(state->root.IsMap(), source, ": the top level must be a mapping of keys");
  reject_duplicate_keys(state->root, "", source);
  try {
    for (const auto& p : apply_overrides(state->root, overrides)) state->overridden.insert(p);
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
  return ConfigNode(state, state->root, "");
}

ConfigNode ConfigNode::load_file(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  CSIPOSE_CHECK(in.good(), "cannot open config file ", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return load_string(ss.str(), path, overrides);
}

ConfigNode::ConfigNode(std::shared_ptr<State> state, YAML::Node node, std::string path)
    : state_(std::move(state)), node_(std::move(node)), path_(std::move(path)) {}

const std::string& ConfigNode::source() const { return state_->source; }

std::string ConfigNode::path_of(const std::string& key) const {
  if (path_.empty()) return key;
  if (!key.empty() && key[0] == '[') return path_ + key;
  return path_ + "." + key;
}

YAML::Node ConfigNode::lookup(const std::string& key) const {
  const YAML::Node& n = node_;  // const access never inserts
  if (!n.IsMap()) return YAML::Node(YAML::NodeType::Undefined);
  return n[key];
}

bool ConfigNode::has(const std::string& key) const { return lookup(key).IsDefined(); }

std::string ConfigNode::location_of(const YAML::Node& node, const std::string& full_path) const {
  // A value set by --set (the path itself or anything inside it, list elements included).
  for (const auto& ov : state_->overridden) {
    if (full_path == ov || starts_with(full_path, ov + ".") || starts_with(full_path, ov + "["))
      return state_->source + ": --set " + ov + ": " + full_path;
  }
  if (node.IsDefined() && node.Mark().line >= 0)
    return state_->source + ":" + std::to_string(node.Mark().line + 1) + ": " + full_path;
  // No line: a mapping that --set created on the way to its key.
  for (const auto& ov : state_->overridden) {
    if (starts_with(ov, full_path + ".")) return state_->source + ": --set " + ov + ": " + full_path;
  }
  return state_->source + ": " + full_path;
}

// The key node of `key` in a mapping: errors point at the key's line, not at its value's (an empty
// value or a block list/mapping starts on a later line).
static YAML::Node key_node(const YAML::Node& map, const std::string& key) {
  if (map.IsMap()) {
    for (auto it = map.begin(); it != map.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() == key) return it->first;
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

std::string ConfigNode::where(const std::string& key) const {
  const YAML::Node k = key_node(node_, key);
  return location_of(k.IsDefined() ? k : node_, path_of(key));
}

void ConfigNode::error(const std::string& key, const std::string& message) const {
  throw Error(where(key) + ": " + message);
}

void ConfigNode::mark_consumed(const std::string& key) const { state_->consumed.insert(path_of(key)); }

ConfigNode ConfigNode::child(const std::string& key) const {
  YAML::Node n = lookup(key);
  if (!n.IsDefined()) error(key, "required section is missing");
  if (!n.IsMap()) error(key, "expected a mapping of keys");
  state_->visited.insert(path_of(key));
  return ConfigNode(state_, n, path_of(key));
}

std::vector<ConfigNode> ConfigNode::elements(const std::string& key) const {
  YAML::Node n = lookup(key);
  if (!n.IsDefined()) error(key, "required list is missing");
  if (!n.IsSequence()) error(key, "expected a list");
  state_->visited.insert(path_of(key));
  std::vector<ConfigNode> out;
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string p = path_of(key) + "[" + std::to_string(i) + "]";
    if (!n[i].IsMap()) throw Error(location_of(n[i], p) + ": expected a mapping of keys");
    state_->visited.insert(p);
    out.push_back(ConfigNode(state_, n[i], p));
  }
  return out;
}

std::vector<std::string> ConfigNode::keys() const {
  std::vector<std::string> out;
  if (!node_.IsMap()) return out;
  for (auto it = node_.begin(); it != node_.end(); ++it) out.push_back(it->first.as<std::string>());
  return out;
}

std::string ConfigNode::scalar_text(const YAML::Node& node) const {
  if (node.IsScalar()) return node.Scalar();
  if (node.IsSequence()) return "a list";
  if (node.IsMap()) return "a mapping";
  return "an empty value";
}

// YAML 1.2 core-schema integers: decimal (a leading zero stays decimal: yaml-cpp would read "010"
// as octal 8), "0x" hex, "0o" octal, optional sign. False when malformed or out of range for Int.
template <typename Int>
static bool parse_int(const std::string& text, Int& out, bool& out_of_range) {
  out_of_range = false;
  size_t i = 0;
  bool negative = false;
  if (i < text.size() && (text[i] == '+' || text[i] == '-')) negative = text[i++] == '-';
  int base = 10;
  if (text.size() - i > 2 && text[i] == '0' && (text[i + 1] == 'x' || text[i + 1] == 'X')) {
    base = 16;
    i += 2;
  } else if (text.size() - i > 2 && text[i] == '0' && text[i + 1] == 'o') {
    base = 8;
    i += 2;
  }
  if (i == text.size()) return false;
  uint64_t magnitude = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data() + i, end, magnitude, base);
  if (ptr != end) return false;
  const uint64_t max_mag = negative ? static_cast<uint64_t>(std::numeric_limits<Int>::max()) + 1
                                    : static_cast<uint64_t>(std::numeric_limits<Int>::max());
  if (ec == std::errc::result_out_of_range || magnitude > max_mag) {
    out_of_range = true;
    return false;
  }
  if (ec != std::errc()) return false;
  // -(m - 1) - 1 reaches the minimum without overflowing.
  out = negative && magnitude > 0 ? static_cast<Int>(-static_cast<Int>(magnitude - 1) - 1) : static_cast<Int>(magnitude);
  return true;
}

template <typename T>
T ConfigNode::convert(const YAML::Node& node, const std::string& key) const {
  const YAML::Node k = key_node(node_, key);
  const std::string loc = location_of(k.IsDefined() ? k : node, path_of(key));
  if (!node.IsScalar()) throw Error(loc + ": expected " + type_name<T>() + ", got " + scalar_text(node));
  if constexpr (std::is_same_v<T, std::string>) {
    return node.Scalar();
  } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    T v{};
    bool out_of_range = false;
    if (!parse_int(node.Scalar(), v, out_of_range))
      throw Error(loc + ": expected " + type_name<T>() + ", got \"" + node.Scalar() + "\"" +
                  (out_of_range ? " (out of range)" : ""));
    return v;
  } else {
    try {
      return node.as<T>();
    } catch (const YAML::Exception&) {
      throw Error(loc + ": expected " + type_name<T>() + ", got \"" + node.Scalar() + "\"");
    }
  }
}

template bool ConfigNode::convert<bool>(const YAML::Node&, const std::string&) const;
template int ConfigNode::convert<int>(const YAML::Node&, const std::string&) const;
template int64_t ConfigNode::convert<int64_t>(const YAML::Node&, const std::string&) const;
template double ConfigNode::convert<double>(const YAML::Node&, const std::string&) const;
template float ConfigNode::convert<float>(const YAML::Node&, const std::string&) const;
template std::string ConfigNode::convert<std::string>(const YAML::Node&, const std::string&) const;

int64_t ConfigNode::get_int(const std::string& key, int64_t fallback, int64_t lo, int64_t hi) const {
  const int64_t v = get<int64_t>(key, fallback);
  if (v < lo || v > hi) {
    std::string range = "[" + std::to_string(lo) + ", " +
                        (hi == std::numeric_limits<int64_t>::max() ? std::string("inf") : std::to_string(hi)) + "]";
    error(key, "value " + std::to_string(v) + " is out of range " + range);
  }
  return v;
}

double ConfigNode::get_double(const std::string& key, double fallback, double lo, double hi) const {
  const double v = get<double>(key, fallback);
  if (!std::isfinite(v) || v < lo || v > hi)
    error(key, str_cat("value ", v, " is out of range [", lo, ", ", hi, "]"));
  return v;
}

static void check_unread(const ConfigNode& self, const YAML::Node& node, const std::string& path,
                         const std::set<std::string>& visited, const std::set<std::string>& consumed,
                         const std::function<std::string(const YAML::Node&, const std::string&)>& loc) {
  auto join = [&](const std::string& k) { return path.empty() ? k : path + "." + k; };
  if (node.IsMap()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      const std::string key = it->first.as<std::string>();
      const std::string p = join(key);
      if (consumed.count(p)) continue;
      if (visited.count(p)) {
        check_unread(self, it->second, p, visited, consumed, loc);
        continue;
      }
      throw Error(loc(it->first, p) + ": unknown key (misspelled, or not used by this component)");
    }
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      const std::string p = path + "[" + std::to_string(i) + "]";
      if (visited.count(p)) check_unread(self, node[i], p, visited, consumed, loc);
    }
  }
}

void ConfigNode::finish() const {
  check_unread(*this, node_, path_, state_->visited, state_->consumed,
               [this](const YAML::Node& n, const std::string& p) { return location_of(n, p); });
}

std::string ConfigNode::dump() const {
  YAML::Emitter out;
  out << node_;
  return std::string(out.c_str()) + "\n";
}

}  // namespace csipose
