#pragma once
// A small ordered JSON value: reports, run metadata and safetensors headers. Objects keep insertion
// order so that written files read in the order they were built. Integers keep int64 precision.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace csipose {

class Json {
 public:
  enum class Type { null, boolean, integer, number, string, array, object };
  using Array = std::vector<Json>;
  using Object = std::vector<std::pair<std::string, Json>>;

  Json() = default;  // null
  Json(std::nullptr_t) {}
  Json(bool b) : type_(Type::boolean), bool_(b) {}
  Json(int v) : type_(Type::integer), int_(v) {}
  Json(long v) : type_(Type::integer), int_(v) {}
  Json(long long v) : type_(Type::integer), int_(v) {}
  Json(unsigned v) : type_(Type::integer), int_(v) {}
  Json(unsigned long v) : type_(Type::integer), int_(static_cast<int64_t>(v)) {}
  Json(unsigned long long v) : type_(Type::integer), int_(static_cast<int64_t>(v)) {}
  Json(double v) : type_(Type::number), num_(v) {}
  Json(float v) : type_(Type::number), num_(v) {}
  Json(const char* s) : type_(Type::string), str_(s) {}
  Json(std::string s) : type_(Type::string), str_(std::move(s)) {}
  Json(Array a) : type_(Type::array), arr_(std::make_shared<Array>(std::move(a))) {}
  template <typename T>
  Json(const std::vector<T>& v) : type_(Type::array), arr_(std::make_shared<Array>()) {
    for (const auto& x : v) arr_->emplace_back(x);
  }

  static Json object() { Json j; j.type_ = Type::object; j.obj_ = std::make_shared<Object>(); return j; }
  static Json array() { Json j; j.type_ = Type::array; j.arr_ = std::make_shared<Array>(); return j; }
  /// Parses JSON text; throws csipose::Error with the byte offset of the problem.
  static Json parse(const std::string& text);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::null; }
  bool is_object() const { return type_ == Type::object; }
  bool is_array() const { return type_ == Type::array; }
  bool is_string() const { return type_ == Type::string; }
  bool is_number() const { return type_ == Type::number || type_ == Type::integer; }
  bool is_integer() const { return type_ == Type::integer; }

  /// Object access: sets (replacing an existing key) and returns *this for chaining.
  Json& set(const std::string& key, Json value);
  /// Object access: the value for key; throws csipose::Error naming the key when absent.
  const Json& at(const std::string& key) const;
  bool contains(const std::string& key) const;
  /// Array access.
  Json& push(Json value);
  const Json& at(size_t i) const;
  size_t size() const;
  const Object& items() const;
  const Array& elements() const;

  bool as_bool() const;
  int64_t as_int() const;
  double as_double() const;
  const std::string& as_string() const;

  /// Serializes; indent < 0 gives one line (JSONL), otherwise pretty-printed.
  std::string dump(int indent = -1) const;

 private:
  void dump_to(std::string& out, int indent, int depth) const;
  Type type_ = Type::null;
  bool bool_ = false;
  int64_t int_ = 0;
  double num_ = 0.0;
  std::string str_;
  std::shared_ptr<Array> arr_;
  std::shared_ptr<Object> obj_;
};

/// Escapes a string as a JSON string literal (with quotes).
std::string json_quote(const std::string& s);

}  // namespace csipose
