#include "quant/quant_spec.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <sstream>

#include "common/check.h"
#include "common/config_node.h"
#include "common/json.h"
#include "quant/reference.h"

namespace csipose {
namespace {

constexpr std::initializer_list<std::pair<const char*, Granularity>> kGranularityNames = {
    {"per_tensor", Granularity::per_tensor}, {"per_channel", Granularity::per_channel}};
constexpr std::initializer_list<std::pair<const char*, Rounding>> kRoundingNames = {
    {"half_even", Rounding::half_even}, {"half_away", Rounding::half_away}};

/// The first impossible setting of a spec: its YAML key and a message naming field and value.
struct SpecIssue {
  std::string key;
  std::string message;
};

std::optional<SpecIssue> first_issue(const QuantSpec& s) {
  if (s.bits < 2 || s.bits > 8)
    return SpecIssue{"bits", str_cat("bits = ", s.bits, " is out of range; expected 2..8")};
  if (s.granularity == Granularity::per_channel && s.axis < 0)
    return SpecIssue{"axis", str_cat("axis = ", s.axis, " is negative; expected a channel axis >= 0")};
  return std::nullopt;
}

}  // namespace

const char* to_string(Granularity g) {
  switch (g) {
    case Granularity::per_tensor: return "per_tensor";
    case Granularity::per_channel: return "per_channel";
  }
  return "?";
}

Granularity parse_granularity(const std::string& text) {
  return parse_enum<Granularity>("granularity", text, kGranularityNames);
}

const char* to_string(Rounding r) {
  switch (r) {
    case Rounding::half_even: return "half_even";
    case Rounding::half_away: return "half_away";
  }
  return "?";
}

Rounding parse_rounding(const std::string& text) { return parse_enum<Rounding>("rounding", text, kRoundingNames); }

// ---- QuantSpec ---------------------------------------------------------------------------------

QuantSpec QuantSpec::weight_default() {
  QuantSpec s;
  s.bits = 8;
  s.is_signed = true;
  s.symmetric = true;
  s.granularity = Granularity::per_channel;
  s.axis = 0;
  s.rounding = Rounding::half_even;
  return s;
}

QuantSpec QuantSpec::activation_default() {
  QuantSpec s;
  s.bits = 8;
  s.is_signed = true;
  s.symmetric = false;
  s.granularity = Granularity::per_tensor;
  s.axis = 0;
  s.rounding = Rounding::half_even;
  return s;
}

int64_t QuantSpec::qmin() const { return is_signed ? -(int64_t{1} << (bits - 1)) : 0; }

int64_t QuantSpec::qmax() const { return is_signed ? (int64_t{1} << (bits - 1)) - 1 : (int64_t{1} << bits) - 1; }

void QuantSpec::validate() const {
  if (const auto bad = first_issue(*this)) fail("QuantSpec: ", bad->message);
}

QuantSpec QuantSpec::from_yaml(const ConfigNode& n, const QuantSpec& base) {
  QuantSpec s = base;
  s.bits = static_cast<int>(n.get_int("bits", s.bits, 2, 8));
  s.is_signed = n.get<bool>("signed", s.is_signed);
  s.symmetric = n.get<bool>("symmetric", s.symmetric);
  s.granularity = n.get_enum<Granularity>("granularity", s.granularity, kGranularityNames);
  s.axis = n.get_int("axis", s.axis, 0);
  s.rounding = n.get_enum<Rounding>("rounding", s.rounding, kRoundingNames);
  if (const auto bad = first_issue(s)) n.error(bad->key, bad->message);
  return s;
}

QuantSpec QuantSpec::from_yaml(const ConfigNode& n) { return from_yaml(n, QuantSpec()); }

std::string QuantSpec::to_yaml() const {
  std::ostringstream o;
  o << "bits: " << bits << "\n"
    << "signed: " << (is_signed ? "true" : "false") << "\n"
    << "symmetric: " << (symmetric ? "true" : "false") << "\n"
    << "granularity: " << to_string(granularity) << "\n"
    << "axis: " << axis << "\n"
    << "rounding: " << to_string(rounding) << "\n";
  return o.str();
}

std::string QuantSpec::describe() const {
  std::ostringstream o;
  o << (is_signed ? "int" : "uint") << bits << " ";
  if (granularity == Granularity::per_channel)
    o << "per_channel(axis " << axis << ")";
  else
    o << "per_tensor";
  o << (symmetric ? " symmetric " : " affine ") << (is_signed ? "signed" : "unsigned") << ", round "
    << (rounding == Rounding::half_even ? "half-even" : "half-away");
  return o.str();
}

bool QuantSpec::operator==(const QuantSpec& o) const {
  // axis only matters per-channel; two per-tensor specs that differ in a stale axis are equal.
  const bool same_axis = granularity == Granularity::per_tensor || axis == o.axis;
  return bits == o.bits && is_signed == o.is_signed && symmetric == o.symmetric && granularity == o.granularity &&
         same_axis && rounding == o.rounding;
}

// ---- QuantParams -------------------------------------------------------------------------------

QuantParams QuantParams::per_tensor(float scale, int32_t zero_point, int64_t qmin, int64_t qmax) {
  QuantParams p;
  p.scale = {scale};
  p.zero_point = {zero_point};
  p.qmin = qmin;
  p.qmax = qmax;
  p.axis = -1;
  p.validate();
  return p;
}

void QuantParams::validate() const {
  CSIPOSE_CHECK(qmin < qmax, "QuantParams: qmin = ", qmin, " must be < qmax = ", qmax);
  CSIPOSE_CHECK(qmin >= INT32_MIN && qmax <= INT32_MAX, "QuantParams: [qmin, qmax] = [", qmin, ", ", qmax,
                "] does not fit int32");
  CSIPOSE_CHECK(!scale.empty(), "QuantParams: no scales; expected at least one");
  CSIPOSE_CHECK(scale.size() == zero_point.size(), "QuantParams: ", scale.size(), " scales but ",
                zero_point.size(), " zero points; expected equal counts");
  CSIPOSE_CHECK(axis >= -1, "QuantParams: axis = ", axis, "; expected -1 (per-tensor) or a channel axis >= 0");
  CSIPOSE_CHECK(axis >= 0 || scale.size() == 1, "QuantParams: per-tensor (axis -1) with ", scale.size(),
                " scales; expected exactly one");
  for (size_t c = 0; c < scale.size(); ++c) {
    CSIPOSE_CHECK(std::isfinite(scale[c]) && scale[c] > 0.0f, "QuantParams: scale[", c, "] = ", scale[c],
                  "; expected a finite value > 0");
    CSIPOSE_CHECK(zero_point[c] >= qmin && zero_point[c] <= qmax, "QuantParams: zero_point[", c, "] = ",
                  zero_point[c], " is outside [", qmin, ", ", qmax, "]");
  }
}

Json QuantParams::to_json() const {
  Json j = Json::object();
  j.set("scale", scale);
  j.set("zero_point", zero_point);
  j.set("qmin", qmin);
  j.set("qmax", qmax);
  j.set("axis", axis);
  return j;
}

QuantParams QuantParams::from_json(const Json& j) {
  CSIPOSE_CHECK(j.is_object(), "QuantParams: expected a JSON object, got ", j.dump());
  QuantParams p;
  p.scale.clear();
  p.zero_point.clear();
  const Json& s = j.at("scale");
  const Json& z = j.at("zero_point");
  CSIPOSE_CHECK(s.is_array() && z.is_array(), "QuantParams: scale and zero_point must be arrays");
  for (const Json& v : s.elements()) p.scale.push_back(static_cast<float>(v.as_double()));
  for (const Json& v : z.elements()) {
    const int64_t zp = v.as_int();
    CSIPOSE_CHECK(zp >= INT32_MIN && zp <= INT32_MAX, "QuantParams: zero_point ", zp, " does not fit int32");
    p.zero_point.push_back(static_cast<int32_t>(zp));
  }
  p.qmin = j.at("qmin").as_int();
  p.qmax = j.at("qmax").as_int();
  p.axis = j.at("axis").as_int();
  p.validate();
  return p;
}

bool QuantParams::operator==(const QuantParams& o) const {
  return scale == o.scale && zero_point == o.zero_point && qmin == o.qmin && qmax == o.qmax && axis == o.axis;
}

// ---- qparams_from_range ------------------------------------------------------------------------

QuantParams qparams_from_range(const QuantSpec& spec, const std::vector<float>& min_val,
                               const std::vector<float>& max_val) {
  spec.validate();
  CSIPOSE_CHECK(min_val.size() == max_val.size(), "qparams_from_range: ", min_val.size(), " minima but ",
                max_val.size(), " maxima; expected equal counts");
  CSIPOSE_CHECK(!min_val.empty(), "qparams_from_range: empty range; expected one entry per tensor or channel");
  const bool per_channel = spec.granularity == Granularity::per_channel;
  CSIPOSE_CHECK(per_channel || min_val.size() == 1, "qparams_from_range: per-tensor spec (", spec.describe(),
                ") with ", min_val.size(), " ranges; expected exactly one");

  const int64_t qmin = spec.qmin();
  const int64_t qmax = spec.qmax();
  QuantParams p;
  p.qmin = qmin;
  p.qmax = qmax;
  p.axis = per_channel ? spec.axis : -1;
  p.scale.resize(min_val.size());
  p.zero_point.resize(min_val.size());
  for (size_t c = 0; c < min_val.size(); ++c) {
    // 1. A sane range.
    CSIPOSE_CHECK(std::isfinite(min_val[c]) && std::isfinite(max_val[c]), "qparams_from_range: range[", c,
                  "] = [", min_val[c], ", ", max_val[c], "] is not finite");
    CSIPOSE_CHECK(min_val[c] <= max_val[c], "qparams_from_range: range[", c, "] = [", min_val[c], ", ", max_val[c],
                  "] has min > max");
    // 2. Include 0 so that real 0 is exactly q = zero_point.
    const double lo = std::min<double>(min_val[c], 0.0);
    const double hi = std::max<double>(max_val[c], 0.0);
    if (spec.symmetric) {
      // 3a. Symmetric: zero point in the middle, +amax -> qmax exactly.
      const int64_t zp = spec.is_signed ? 0 : (qmin + qmax + 1) / 2;
      const double amax = std::max(-lo, hi);
      const double scale = std::max(amax / static_cast<double>(qmax - zp), kMinScale);  // 4.
      p.scale[c] = static_cast<float>(scale);                                          // 5.
      p.zero_point[c] = static_cast<int32_t>(zp);
    } else {
      // 3b. Affine: [lo, hi] -> [qmin, qmax]; zp from the float scale, rounded, clamped.
      const double scale = std::max((hi - lo) / static_cast<double>(qmax - qmin), kMinScale);  // 4.
      const float scale_f = static_cast<float>(scale);                                          // 5.
      const double zp = static_cast<double>(qmin) - round_value(lo / static_cast<double>(scale_f), spec.rounding);
      p.scale[c] = scale_f;
      p.zero_point[c] = static_cast<int32_t>(std::min<double>(std::max<double>(zp, qmin), qmax));
    }
  }
  p.validate();
  return p;
}

}  // namespace csipose
