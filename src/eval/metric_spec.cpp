#include "eval/metric_spec.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/check.h"

namespace csipose {
namespace {

// Relative tolerance for double fields. JSON round-trips doubles exactly (json.cpp); the tolerance
// only keeps a spec whose thresholds were computed (0.1 * 3) equal to one written as literals (0.3).
constexpr double kRelTol = 1e-9;

bool close(double a, double b) { return a == b || std::abs(a - b) <= kRelTol * std::max(std::abs(a), std::abs(b)); }

// Shortest "%.Ng" that reads back as the same double: 0.1 -> "0.1", 1.0/3 -> "0.3333333333333333".
std::string format_double(double x) {
  char buf[40];
  for (int precision = 6; precision <= 17; ++precision) {
    std::snprintf(buf, sizeof buf, "%.*g", precision, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  return buf;
}

std::string format_list(const std::vector<double>& v) {
  std::string out = "{";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + format_double(v[i]);
  return out + "}";
}

// " = (RShoulder, LHip)" for known skeletons, "" otherwise.
std::string torso_names(const MetricSpec& s) {
  const auto& names = joint_names(s.skeleton);
  const auto n = static_cast<int64_t>(names.size());
  if (s.torso_a < 0 || s.torso_a >= n || s.torso_b < 0 || s.torso_b >= n) return "";
  return " = (" + names[static_cast<size_t>(s.torso_a)] + ", " + names[static_cast<size_t>(s.torso_b)] + ")";
}

MetricSpec locked_spec(std::string dataset, std::string skeleton, int64_t num_joints, int64_t torso_a,
                       int64_t torso_b, std::string units) {
  MetricSpec s;
  s.dataset = std::move(dataset);
  s.skeleton = std::move(skeleton);
  s.num_joints = num_joints;
  s.torso_a = torso_a;
  s.torso_b = torso_b;
  s.units = std::move(units);
  // norm_clamp and thresholds keep the declaration defaults (0.01; 0.1..0.5): MODELS.md section 4.
  return s;
}

}  // namespace

const std::vector<std::string>& joint_names(const std::string& skeleton) {
  // OpenPose BODY_25, first 15 keypoints (WiFlow labels).
  static const std::vector<std::string> body25_15 = {
      "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist",
      "MidHip", "RHip", "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle"};
  // COCO-17 keypoints (MM-Fi labels).
  static const std::vector<std::string> coco17 = {
      "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
      "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
      "left_knee", "right_knee", "left_ankle", "right_ankle"};
  static const std::vector<std::string> none;
  if (skeleton == "body25_15") return body25_15;
  if (skeleton == "coco17") return coco17;
  return none;
}

MetricSpec metric_spec_for(const std::string& dataset) {
  if (dataset == "wiflow")
    return locked_spec("wiflow", "body25_15", /*num_joints=*/15, /*torso_a=*/2, /*torso_b=*/12, "pixels/1000");
  if (dataset == "mmfi")
    return locked_spec("mmfi", "coco17", /*num_joints=*/17, /*torso_a=*/6, /*torso_b=*/11,
                       "normalized image coordinates [0,1]");
  fail("unknown dataset \"", dataset, "\" for the locked metric; expected one of: wiflow, mmfi");
}

void MetricSpec::validate() const {
  const std::string where = "metric spec \"" + dataset + "\": ";
  CSIPOSE_CHECK(num_joints > 0, where, "num_joints must be > 0, got ", num_joints);
  CSIPOSE_CHECK(torso_a >= 0 && torso_a < num_joints && torso_b >= 0 && torso_b < num_joints, where,
                "torso pair (", torso_a, ",", torso_b, ") out of range for ", num_joints, " joints");
  CSIPOSE_CHECK(torso_a != torso_b, where, "torso pair (", torso_a, ",", torso_b, ") names one joint twice");
  CSIPOSE_CHECK(norm_clamp > 0 && std::isfinite(norm_clamp), where, "norm_clamp must be finite and > 0, got ",
                format_double(norm_clamp));
  CSIPOSE_CHECK(!thresholds.empty(), where, "thresholds must not be empty");
  for (size_t i = 0; i < thresholds.size(); ++i) {
    CSIPOSE_CHECK(thresholds[i] > 0 && std::isfinite(thresholds[i]), where, "thresholds must be finite and > 0, got ",
                  format_list(thresholds));
    CSIPOSE_CHECK(i == 0 || thresholds[i] > thresholds[i - 1], where, "thresholds must be strictly increasing, got ",
                  format_list(thresholds));
  }
}

Json MetricSpec::to_json() const {
  Json j = Json::object();
  j.set("dataset", dataset)
      .set("skeleton", skeleton)
      .set("num_joints", num_joints)
      .set("torso_a", torso_a)
      .set("torso_b", torso_b)
      .set("norm_clamp", norm_clamp)
      .set("thresholds", thresholds)
      .set("units", units);
  return j;
}

MetricSpec MetricSpec::from_json(const Json& j) {
  CSIPOSE_CHECK(j.is_object(), "metric spec: expected a JSON object, got ", j.dump());
  MetricSpec s;
  s.dataset = j.at("dataset").as_string();
  s.skeleton = j.at("skeleton").as_string();
  s.num_joints = j.at("num_joints").as_int();
  s.torso_a = j.at("torso_a").as_int();
  s.torso_b = j.at("torso_b").as_int();
  s.norm_clamp = j.at("norm_clamp").as_double();
  s.thresholds.clear();
  for (const Json& t : j.at("thresholds").elements()) s.thresholds.push_back(t.as_double());
  s.units = j.at("units").as_string();
  s.validate();
  return s;
}

std::string MetricSpec::describe() const {
  return str_cat("torso-normalized PCK (", dataset, ", ", skeleton, ", ", num_joints, " joints): torso pair (", torso_a,
                 ",", torso_b, ")", torso_names(*this), ", norm = max(||gt[a] - gt[c]||, clamp ",
                 format_double(norm_clamp), ") from ground truth only; hit if ||pred - gt|| <= t * norm (inclusive), t in ",
                 format_list(thresholds), "; units ", units);
}

bool MetricSpec::operator==(const MetricSpec& o) const {
  if (dataset != o.dataset || skeleton != o.skeleton || num_joints != o.num_joints || torso_a != o.torso_a ||
      torso_b != o.torso_b || units != o.units || !close(norm_clamp, o.norm_clamp) ||
      thresholds.size() != o.thresholds.size())
    return false;
  for (size_t i = 0; i < thresholds.size(); ++i)
    if (!close(thresholds[i], o.thresholds[i])) return false;
  return true;
}

void require_same_spec(const MetricSpec& a, const MetricSpec& b) {
  auto differ = [](const char* field, const std::string& va, const std::string& vb) {
    fail("results are not comparable: metric specs differ in ", field, ": ", va, " vs ", vb);
  };
  if (a.dataset != b.dataset) differ("dataset", json_quote(a.dataset), json_quote(b.dataset));
  if (a.skeleton != b.skeleton) differ("skeleton", json_quote(a.skeleton), json_quote(b.skeleton));
  if (a.num_joints != b.num_joints) differ("num_joints", std::to_string(a.num_joints), std::to_string(b.num_joints));
  if (a.torso_a != b.torso_a || a.torso_b != b.torso_b)
    differ("torso pair (torso_a, torso_b)", str_cat("(", a.torso_a, ",", a.torso_b, ")"),
           str_cat("(", b.torso_a, ",", b.torso_b, ")"));
  if (!close(a.norm_clamp, b.norm_clamp)) differ("norm_clamp", format_double(a.norm_clamp), format_double(b.norm_clamp));
  bool same_thresholds = a.thresholds.size() == b.thresholds.size();
  for (size_t i = 0; same_thresholds && i < a.thresholds.size(); ++i)
    same_thresholds = close(a.thresholds[i], b.thresholds[i]);
  if (!same_thresholds) differ("thresholds", format_list(a.thresholds), format_list(b.thresholds));
  if (a.units != b.units) differ("units", json_quote(a.units), json_quote(b.units));
}

std::string pck_name(double threshold) {
  const double percent = threshold * 100.0;
  const double rounded = std::round(percent);
  if (std::abs(percent - rounded) <= 1e-6) return "pck@" + std::to_string(static_cast<long long>(rounded));
  return "pck@" + format_double(percent);
}

}  // namespace csipose
