#include "eval/pck.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "common/check.h"

namespace csipose {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

/// The threshold that pck_per_joint and summary() report: the second one (t = 0.2 by default),
/// or the only one.
size_t headline_index(const MetricSpec& spec) { return std::min<size_t>(1, spec.thresholds.size() - 1); }

/// "PCK@20" for display; pck_name() gives the JSON key "pck@20".
std::string display_name(double t) { return "PCK" + pck_name(t).substr(3); }

void check_pose_tensor(const torch::Tensor& t, const char* what, const MetricSpec& spec) {
  CSIPOSE_CHECK(t.defined(), "PckAccumulator::add: ", what, " is an undefined tensor");
  CSIPOSE_CHECK(t.dim() == 3 && t.size(2) == 2, "PckAccumulator::add: ", what, " must have shape (B, ",
                spec.num_joints, ", 2), got ", t.sizes());
  CSIPOSE_CHECK(t.is_floating_point(), "PckAccumulator::add: ", what, " must be a floating-point tensor, got ",
                t.scalar_type());
}

}  // namespace

// ---- PckAccumulator ---------------------------------------------------------------------------

PckAccumulator::PckAccumulator(MetricSpec spec) : spec_(std::move(spec)) {
  spec_.validate();
  hits_.assign(spec_.thresholds.size(), 0);
  joint_hits_.assign(static_cast<size_t>(spec_.num_joints), 0);
}

void PckAccumulator::add(const torch::Tensor& pred, const torch::Tensor& gt) {
  check_pose_tensor(pred, "pred", spec_);
  check_pose_tensor(gt, "gt", spec_);
  CSIPOSE_CHECK(pred.sizes() == gt.sizes(), "PckAccumulator::add: pred shape ", pred.sizes(), " and gt shape ",
                gt.sizes(), " differ");
  CSIPOSE_CHECK(pred.size(1) == spec_.num_joints, "PckAccumulator::add: shape ", pred.sizes(), " has ", pred.size(1),
                " joints; the ", spec_.dataset, " metric (", spec_.skeleton, ") expects ", spec_.num_joints);
  const int64_t batch = pred.size(0);
  if (batch == 0) return;

  // Everything below runs on pred's device in float64; only the counts and one distance sum
  // travel to the host.
  torch::NoGradGuard no_grad;
  const torch::Tensor p = pred.detach().to(torch::kFloat64);
  const torch::Tensor g = gt.detach().to(p.device(), torch::kFloat64);

  const int64_t gt_nonfinite = torch::logical_not(torch::isfinite(g)).sum().item<int64_t>();
  CSIPOSE_CHECK(gt_nonfinite == 0, "PckAccumulator::add: gt of shape ", gt.sizes(), " holds ", gt_nonfinite,
                " non-finite values; ground truth must be finite");

  // dist[b,j] = ||pred - gt||; a joint with a non-finite predicted coordinate gets +inf (a miss).
  const torch::Tensor finite = torch::isfinite(p).all(/*dim=*/-1);  // (B, J)
  const torch::Tensor diff = p - g;
  const torch::Tensor dist = torch::hypot(diff.select(-1, 0), diff.select(-1, 1)).masked_fill(
      torch::logical_not(finite), kInf);

  // norm[b] = max(||gt[b,a] - gt[b,c]||, clamp), from ground truth only.
  const torch::Tensor torso = g.select(1, spec_.torso_a) - g.select(1, spec_.torso_b);  // (B, 2)
  const torch::Tensor norm =
      torch::hypot(torso.select(-1, 0), torso.select(-1, 1)).clamp_min(spec_.norm_clamp).unsqueeze(1);  // (B, 1)

  std::vector<torch::Tensor> counts;
  torch::Tensor joint_hits;
  for (size_t i = 0; i < spec_.thresholds.size(); ++i) {
    const torch::Tensor hit = dist <= norm * spec_.thresholds[i];  // inclusive
    counts.push_back(hit.sum());
    if (i == headline_index(spec_)) joint_hits = hit.sum(/*dim=*/0);
  }
  counts.push_back(torch::logical_not(finite).sum());
  const torch::Tensor host = torch::cat({torch::stack(counts), joint_hits}).to(torch::kCPU, torch::kInt64);
  const double dist_sum = dist.sum().item<double>();

  const int64_t* c = host.data_ptr<int64_t>();
  const size_t num_thresholds = spec_.thresholds.size();
  for (size_t i = 0; i < num_thresholds; ++i) hits_[i] += c[i];
  num_nonfinite_ += c[num_thresholds];
  for (size_t j = 0; j < joint_hits_.size(); ++j) joint_hits_[j] += c[num_thresholds + 1 + j];
  dist_sum_ += dist_sum;
  num_samples_ += batch;
}

PoseMetrics PckAccumulator::result(const std::string& split, const std::string& subset) const {
  CSIPOSE_CHECK(num_samples_ > 0, "PckAccumulator::result: no samples were added (split \"", split, "\", subset \"",
                subset, "\"); PCK of an empty set is undefined");
  CSIPOSE_CHECK(!split.empty() && !subset.empty(), "PckAccumulator::result: split and subset must be named, got \"",
                split, "\" / \"", subset, "\"");
  PoseMetrics m;
  m.spec = spec_;
  m.split = split;
  m.subset = subset;
  m.num_samples = num_samples_;
  const double points = static_cast<double>(num_samples_) * static_cast<double>(spec_.num_joints);
  for (int64_t h : hits_) m.pck.push_back(static_cast<double>(h) / points);
  for (int64_t h : joint_hits_) m.pck_per_joint.push_back(static_cast<double>(h) / static_cast<double>(num_samples_));
  m.mpjpe = dist_sum_ / points;  // +inf when any prediction was non-finite (see PoseMetrics::num_nonfinite)
  m.num_nonfinite = num_nonfinite_;
  return m;
}

// ---- PoseMetrics ------------------------------------------------------------------------------

double PoseMetrics::pck_at(double t) const {
  for (size_t i = 0; i < spec.thresholds.size() && i < pck.size(); ++i)
    if (std::abs(spec.thresholds[i] - t) <= 1e-9) return pck[i];
  std::string known;
  for (double x : spec.thresholds) known += (known.empty() ? "" : ", ") + pck_name(x);
  fail("PoseMetrics::pck_at: threshold ", t, " is not one of the spec's thresholds (", known, ")");
}

Json PoseMetrics::to_json() const {
  Json pck_obj = Json::object();
  for (size_t i = 0; i < pck.size(); ++i) pck_obj.set(pck_name(spec.thresholds[i]), pck[i]);
  Json j = Json::object();
  j.set("definition", spec.describe())
      .set("spec", spec.to_json())
      .set("split", split)
      .set("subset", subset)
      .set("num_samples", num_samples)
      .set("pck", pck_obj)
      .set("mpjpe", mpjpe)  // +inf is written as null
      .set("num_nonfinite", num_nonfinite)
      .set("pck_per_joint_threshold", spec.thresholds[headline_index(spec)])
      .set("pck_per_joint", pck_per_joint);
  return j;
}

PoseMetrics PoseMetrics::from_json(const Json& j) {
  CSIPOSE_CHECK(j.is_object(), "pose metrics: expected a JSON object, got ", j.dump());
  PoseMetrics m;
  m.spec = MetricSpec::from_json(j.at("spec"));
  m.split = j.at("split").as_string();
  m.subset = j.at("subset").as_string();
  m.num_samples = j.at("num_samples").as_int();
  const Json& pck_obj = j.at("pck");
  CSIPOSE_CHECK(pck_obj.is_object() && pck_obj.size() == m.spec.thresholds.size(), "pose metrics: \"pck\" must hold ",
                m.spec.thresholds.size(), " entries (one per spec threshold), got ", pck_obj.dump());
  for (double t : m.spec.thresholds) m.pck.push_back(pck_obj.at(pck_name(t)).as_double());
  const Json& mpjpe = j.at("mpjpe");
  m.mpjpe = mpjpe.is_null() ? kInf : mpjpe.as_double();  // null: non-finite predictions made it inf
  m.num_nonfinite = j.at("num_nonfinite").as_int();
  for (const Json& x : j.at("pck_per_joint").elements()) m.pck_per_joint.push_back(x.as_double());
  CSIPOSE_CHECK(static_cast<int64_t>(m.pck_per_joint.size()) == m.spec.num_joints, "pose metrics: pck_per_joint has ",
                m.pck_per_joint.size(), " entries, expected ", m.spec.num_joints);
  return m;
}

std::string PoseMetrics::summary() const {
  const size_t h = headline_index(spec);
  char pck_buf[32], mpjpe_buf[32];
  std::snprintf(pck_buf, sizeof pck_buf, "%.2f%%", h < pck.size() ? 100.0 * pck[h] : std::nan(""));
  std::snprintf(mpjpe_buf, sizeof mpjpe_buf, "%.6g", mpjpe);
  std::string out = str_cat(display_name(spec.thresholds[h]), " ", pck_buf, "  MPJPE ", mpjpe_buf);
  if (num_nonfinite > 0)
    out += str_cat(" (", num_nonfinite, " non-finite predicted joints: counted as misses, MPJPE is inf)");
  return out + str_cat(" (", split, "/", subset, ", ", num_samples, " samples)");
}

// ---- whole-set helpers ------------------------------------------------------------------------

PoseMetrics score_predictions(const torch::Tensor& pred, const torch::Tensor& gt, const MetricSpec& spec,
                              const std::string& split, const std::string& subset) {
  PckAccumulator acc(spec);
  acc.add(pred, gt);
  return acc.result(split, subset);
}

std::vector<double> metric_difference(const PoseMetrics& a, const PoseMetrics& b) {
  require_same_spec(a.spec, b.spec);
  CSIPOSE_CHECK(a.split == b.split, "results are not comparable: split \"", a.split, "\" vs \"", b.split, "\"");
  CSIPOSE_CHECK(a.subset == b.subset, "results are not comparable: subset \"", a.subset, "\" vs \"", b.subset,
                "\" (full and clean test sets hold different windows)");
  const size_t n = a.spec.thresholds.size();
  CSIPOSE_CHECK(a.pck.size() == n && b.pck.size() == n, "metric_difference: pck has ", a.pck.size(), " and ",
                b.pck.size(), " entries, expected ", n);
  std::vector<double> d;
  for (size_t i = 0; i < n; ++i) d.push_back(b.pck[i] - a.pck[i]);
  d.push_back(b.mpjpe - a.mpjpe);
  return d;
}

}  // namespace csipose
