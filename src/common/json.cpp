#include "common/json.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/check.h"

namespace csipose {

Json& Json::set(const std::string& key, Json value) {
  CSIPOSE_CHECK(type_ == Type::object, "json: set(\"", key, "\") on a non-object");
  // Copy-on-write: values share storage after copies, so detach before mutating.
  if (obj_.use_count() > 1) obj_ = std::make_shared<Object>(*obj_);
  for (auto& kv : *obj_) {
    if (kv.first == key) {
      kv.second = std::move(value);
      return *this;
    }
  }
  obj_->emplace_back(key, std::move(value));
  return *this;
}

const Json& Json::at(const std::string& key) const {
  CSIPOSE_CHECK(type_ == Type::object, "json: expected an object to look up \"", key, "\"");
  for (const auto& kv : *obj_)
    if (kv.first == key) return kv.second;
  fail("json: missing key \"", key, "\"");
}

bool Json::contains(const std::string& key) const {
  if (type_ != Type::object) return false;
  for (const auto& kv : *obj_)
    if (kv.first == key) return true;
  return false;
}

Json& Json::push(Json value) {
  CSIPOSE_CHECK(type_ == Type::array, "json: push on a non-array");
  if (arr_.use_count() > 1) arr_ = std::make_shared<Array>(*arr_);
  arr_->push_back(std::move(value));
  return *this;
}

const Json& Json::at(size_t i) const {
  CSIPOSE_CHECK(type_ == Type::array, "json: expected an array");
  CSIPOSE_CHECK(i < arr_->size(), "json: index ", i, " out of range (size ", arr_->size(), ")");
  return (*arr_)[i];
}

size_t Json::size() const {
  if (type_ == Type::array) return arr_->size();
  if (type_ == Type::object) return obj_->size();
  return 0;
}

const Json::Object& Json::items() const {
  CSIPOSE_CHECK(type_ == Type::object, "json: expected an object");
  return *obj_;
}

const Json::Array& Json::elements() const {
  CSIPOSE_CHECK(type_ == Type::array, "json: expected an array");
  return *arr_;
}

bool Json::as_bool() const {
  CSIPOSE_CHECK(type_ == Type::boolean, "json: expected a boolean");
  return bool_;
}

int64_t Json::as_int() const {
  if (type_ == Type::integer) return int_;
  // 2^63 bounds the doubles that convert to int64 without undefined behaviour.
  CSIPOSE_CHECK(type_ == Type::number && std::floor(num_) == num_ && std::fabs(num_) < 0x1p63,
                "json: expected an integer");
  return static_cast<int64_t>(num_);
}

double Json::as_double() const {
  if (type_ == Type::integer) return static_cast<double>(int_);
  CSIPOSE_CHECK(type_ == Type::number, "json: expected a number");
  return num_;
}

const std::string& Json::as_string() const {
  CSIPOSE_CHECK(type_ == Type::string, "json: expected a string");
  return str_;
}

std::string json_quote(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

static void newline(std::string& out, int indent, int depth) {
  if (indent < 0) return;
  out += '\n';
  out.append(static_cast<size_t>(indent * depth), ' ');
}

void Json::dump_to(std::string& out, int indent, int depth) const {
  switch (type_) {
    case Type::null: out += "null"; break;
    case Type::boolean: out += bool_ ? "true" : "false"; break;
    case Type::integer: out += std::to_string(int_); break;
    case Type::number: {
      if (!std::isfinite(num_)) {  // JSON has no NaN/Inf; null keeps the file parseable.
        out += "null";
        break;
      }
      // The shortest of 15..17 significant digits that reads back as the same double.
      char buf[32];
      for (int precision = 15; precision <= 17; ++precision) {
        std::snprintf(buf, sizeof buf, "%.*g", precision, num_);
        if (std::strtod(buf, nullptr) == num_) break;
      }
      out += buf;
      break;
    }
    case Type::string: out += json_quote(str_); break;
    case Type::array: {
      out += '[';
      for (size_t i = 0; i < arr_->size(); ++i) {
        if (i) out += indent < 0 ? ", " : ",";
        newline(out, indent, depth + 1);
        (*arr_)[i].dump_to(out, indent, depth + 1);
      }
      if (!arr_->empty()) newline(out, indent, depth);
      out += ']';
      break;
    }
    case Type::object: {
      out += '{';
      for (size_t i = 0; i < obj_->size(); ++i) {
        if (i) out += indent < 0 ? ", " : ",";
        newline(out, indent, depth + 1);
        out += json_quote((*obj_)[i].first);
        out += ": ";
        (*obj_)[i].second.dump_to(out, indent, depth + 1);
      }
      if (!obj_->empty()) newline(out, indent, depth);
      out += '}';
      break;
    }
  }
}

std::string Json::dump(int indent) const {
  std::string out;
  dump_to(out, indent, 0);
  return out;
}

namespace {
struct Parser {
  const std::string& s;
  size_t i = 0;

  [[noreturn]] void error(const std::string& what) const {
    fail("json: ", what, " at byte ", i);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t')) ++i;
  }
  bool consume(const char* lit) {
    size_t n = std::char_traits<char>::length(lit);
    if (s.compare(i, n, lit) == 0) {
      i += n;
      return true;
    }
    return false;
  }
  Json value() {
    ws();
    if (i >= s.size()) error("unexpected end of input");
    char c = s[i];
    if (c == '{') return object();
    if (c == '[') return array();
    if (c == '"') return Json(string());
    if (consume("true")) return Json(true);
    if (consume("false")) return Json(false);
    if (consume("null")) return Json();
    if (c == '-' || (c >= '0' && c <= '9')) return number();
    error(std::string("unexpected character '") + c + "'");
  }
  Json object() {
    Json o = Json::object();
    ++i;
    ws();
    if (i < s.size() && s[i] == '}') { ++i; return o; }
    while (true) {
      ws();
      if (i >= s.size() || s[i] != '"') error("expected a key string");
      std::string key = string();
      ws();
      if (i >= s.size() || s[i] != ':') error("expected ':'");
      ++i;
      o.set(key, value());
      ws();
      if (i < s.size() && s[i] == ',') { ++i; continue; }
      if (i < s.size() && s[i] == '}') { ++i; return o; }
      error("expected ',' or '}'");
    }
  }
  Json array() {
    Json a = Json::array();
    ++i;
    ws();
    if (i < s.size() && s[i] == ']') { ++i; return a; }
    while (true) {
      a.push(value());
      ws();
      if (i < s.size() && s[i] == ',') { ++i; continue; }
      if (i < s.size() && s[i] == ']') { ++i; return a; }
      error("expected ',' or ']'");
    }
  }
  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) out += static_cast<char>(cp);
    else if (cp < 0x800) { out += static_cast<char>(0xC0 | (cp >> 6)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) { out += static_cast<char>(0xE0 | (cp >> 12)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
    else { out += static_cast<char>(0xF0 | (cp >> 18)); out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F)); out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)); out += static_cast<char>(0x80 | (cp & 0x3F)); }
  }
  unsigned hex4() {
    if (i + 4 > s.size()) error("truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else error("bad \\u escape");
    }
    return v;
  }
  std::string string() {
    ++i;  // opening quote
    std::string out;
    while (true) {
      if (i >= s.size()) error("unterminated string");
      char c = s[i++];
      if (c == '"') return out;
      if (c != '\\') { out += c; continue; }
      if (i >= s.size()) error("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp < 0xE000) error("unpaired low surrogate in \\u escape");
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!consume("\\u")) error("high surrogate not followed by a \\u low surrogate");
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo >= 0xE000) error("high surrogate not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: error(std::string("bad escape \\") + e);
      }
    }
  }
  Json number() {
    size_t start = i;
    bool is_int = true;
    if (s[i] == '-') ++i;
    while (i < s.size()) {
      char c = s[i];
      if (c >= '0' && c <= '9') { ++i; continue; }
      if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') { is_int = false; ++i; continue; }
      break;
    }
    const std::string tok = s.substr(start, i - start);
    char* end = nullptr;
    if (is_int) {
      errno = 0;
      long long v = std::strtoll(tok.c_str(), &end, 10);
      if (errno == 0 && end && *end == '\0') return Json(v);
    }
    double d = std::strtod(tok.c_str(), &end);
    if (tok.empty() || !end || *end != '\0') {
      i = start;  // report where the number begins
      error("bad number '" + tok + "'");
    }
    return Json(d);
  }
};
}  // namespace

Json Json::parse(const std::string& text) {
  Parser p{text};
  Json v = p.value();
  p.ws();
  if (p.i != text.size()) p.error("trailing characters");
  return v;
}

}  // namespace csipose
