#pragma once
// ConfigNode: the one door through which YAML becomes typed config structs.
//
// It knows the key path and source line of every value, applies `--set a.b.c=value` overrides to
// the YAML tree *before* any struct reads it (so a misspelled override fails exactly like a
// misspelled key), and `finish()` rejects every key nobody read. Errors read like
//   configs/half.yaml:22: quant.weights.granularity: unknown value "per_chanel"; expected one of: per_tensor, per_channel
#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"

namespace csipose {

class ConfigNode {
 public:
  /// Loads a YAML file and applies overrides ("a.b.c=value", value parsed as YAML).
  static ConfigNode load_file(const std::string& path, const std::vector<std::string>& overrides = {});
  /// Same from text; `source` names it in errors (e.g. "<test>").
  static ConfigNode load_string(const std::string& yaml, const std::string& source,
                                const std::vector<std::string>& overrides = {});

  /// The dotted key path of this node ("" for the root) and of a key below it.
  const std::string& path() const { return path_; }
  std::string path_of(const std::string& key) const;
  const std::string& source() const;

  bool has(const std::string& key) const;
  /// A required mapping below this one.
  ConfigNode child(const std::string& key) const;
  /// The elements of a required sequence of mappings (paths "key[i]").
  std::vector<ConfigNode> elements(const std::string& key) const;
  /// The keys present in this mapping, in file order.
  std::vector<std::string> keys() const;

  /// Required scalar of type T (bool, int, int64_t, double, std::string).
  template <typename T>
  T get(const std::string& key) const;
  /// Optional scalar: `fallback` when the key is absent (a present key of the wrong type is an error).
  template <typename T>
  T get(const std::string& key, const T& fallback) const;
  /// Integer in [lo, hi].
  int64_t get_int(const std::string& key, int64_t fallback, int64_t lo,
                  int64_t hi = std::numeric_limits<int64_t>::max()) const;
  /// Floating point in [lo, hi]; NaN and inf are rejected.
  double get_double(const std::string& key, double fallback, double lo, double hi) const;
  /// Required / optional list of scalars.
  template <typename T>
  std::vector<T> get_list(const std::string& key) const;
  template <typename T>
  std::vector<T> get_list(const std::string& key, const std::vector<T>& fallback) const;
  /// An enum parsed once from a string with its name table.
  template <typename E>
  E get_enum(const std::string& key, E fallback, std::initializer_list<std::pair<const char*, E>> table) const;
  template <typename E>
  E get_enum(const std::string& key, std::initializer_list<std::pair<const char*, E>> table) const;

  /// Throws for the first key under this node that no getter read ("unknown key").
  void finish() const;
  /// Throws csipose::Error "source:line: path.key: message".
  [[noreturn]] void error(const std::string& key, const std::string& message) const;
  /// The resolved YAML (after overrides) of this node, for run directories and reports.
  std::string dump() const;

 private:
  struct State;
  ConfigNode(std::shared_ptr<State> state, YAML::Node node, std::string path);
  YAML::Node lookup(const std::string& key) const;  // undefined node when absent
  std::string where(const std::string& key) const;   // "source:line: path"
  std::string location_of(const YAML::Node& node, const std::string& full_path) const;
  void mark_consumed(const std::string& key) const;
  std::string scalar_text(const YAML::Node& node) const;
  template <typename T>
  T convert(const YAML::Node& node, const std::string& key) const;
  template <typename E>
  E parse_enum_value(const std::string& key, const std::string& text,
                     std::initializer_list<std::pair<const char*, E>> table) const;

  std::shared_ptr<State> state_;
  YAML::Node node_;
  std::string path_;
};

/// Applies "a.b.c=value" overrides to a YAML tree, creating missing keys (which finish() then
/// reports as unknown). Returns the dotted paths that were set. Throws on malformed overrides.
std::vector<std::string> apply_overrides(YAML::Node& root, const std::vector<std::string>& overrides);

/// A human name for an expected type, used in messages.
template <typename T>
const char* type_name();
template <> const char* type_name<bool>();
template <> const char* type_name<int>();
template <> const char* type_name<int64_t>();
template <> const char* type_name<double>();
template <> const char* type_name<float>();
template <> const char* type_name<std::string>();

// ---- template implementations ------------------------------------------------------------------
template <typename T>
T ConfigNode::get(const std::string& key) const {
  YAML::Node n = lookup(key);
  if (!n.IsDefined() || n.IsNull()) error(key, std::string("required key is missing (expected ") + type_name<T>() + ")");
  mark_consumed(key);
  return convert<T>(n, key);
}

template <typename T>
T ConfigNode::get(const std::string& key, const T& fallback) const {
  YAML::Node n = lookup(key);
  mark_consumed(key);
  if (!n.IsDefined()) return fallback;
  if (n.IsNull()) error(key, std::string("empty value; expected ") + type_name<T>());
  return convert<T>(n, key);
}

template <typename T>
std::vector<T> ConfigNode::get_list(const std::string& key) const {
  YAML::Node n = lookup(key);
  if (!n.IsDefined()) error(key, std::string("required key is missing (expected a list of ") + type_name<T>() + ")");
  return get_list<T>(key, {});
}

template <typename T>
std::vector<T> ConfigNode::get_list(const std::string& key, const std::vector<T>& fallback) const {
  YAML::Node n = lookup(key);
  mark_consumed(key);
  if (!n.IsDefined()) return fallback;
  if (!n.IsSequence()) error(key, std::string("expected a list of ") + type_name<T>());
  std::vector<T> out;
  for (size_t i = 0; i < n.size(); ++i) out.push_back(convert<T>(n[i], key + "[" + std::to_string(i) + "]"));
  return out;
}

template <typename E>
E ConfigNode::get_enum(const std::string& key, E fallback, std::initializer_list<std::pair<const char*, E>> table) const {
  if (!lookup(key).IsDefined()) {
    mark_consumed(key);
    return fallback;
  }
  return parse_enum_value<E>(key, get<std::string>(key, std::string()), table);
}

template <typename E>
E ConfigNode::get_enum(const std::string& key, std::initializer_list<std::pair<const char*, E>> table) const {
  return parse_enum_value<E>(key, get<std::string>(key), table);
}

template <typename E>
E ConfigNode::parse_enum_value(const std::string& key, const std::string& text,
                               std::initializer_list<std::pair<const char*, E>> table) const {
  std::string names;
  for (const auto& entry : table) {
    if (text == entry.first) return entry.second;
    names += (names.empty() ? "" : ", ") + std::string(entry.first);
  }
  error(key, "unknown value \"" + text + "\"; expected one of: " + names);
}

/// Parses an enum from a string outside YAML (CLI flags); `what` names the option in errors.
template <typename E>
E parse_enum(const std::string& what, const std::string& text, std::initializer_list<std::pair<const char*, E>> table) {
  std::string names;
  for (const auto& entry : table) {
    if (text == entry.first) return entry.second;
    names += (names.empty() ? "" : ", ") + std::string(entry.first);
  }
  fail(what, ": unknown value \"", text, "\"; expected one of: ", names);
}

}  // namespace csipose
