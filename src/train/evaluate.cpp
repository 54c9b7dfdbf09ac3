#include "train/evaluate.h"

#include <torch/torch.h>

#include <cmath>
#include <cstdlib>

#include "common/check.h"
#include "models/pose_model.h"
#include "train/augment.h"

namespace csipose {
namespace {

struct MonitorParts {
  std::string subset, measure;
  double threshold = 0.0;  // pck only
};

MonitorParts split_monitor(const MonitorSpec& m) {
  const auto a = m.metric.find('/'), b = m.metric.find('/', a + 1);
  MonitorParts p{m.metric.substr(a + 1, b - a - 1), m.metric.substr(b + 1)};
  if (p.measure.rfind("pck@", 0) == 0) p.threshold = std::strtod(p.measure.c_str() + 4, nullptr) / 100.0;
  return p;
}

}  // namespace

void check_monitor(const MonitorSpec& monitor, const MetricSpec& spec, const std::string& what) {
  const MonitorParts p = split_monitor(monitor);
  if (p.measure.rfind("pck@", 0) != 0) return;
  for (double t : spec.thresholds)
    if (std::abs(t - p.threshold) < 1e-9) return;
  std::string names;
  for (double t : spec.thresholds) names += (names.empty() ? "" : ", ") + pck_name(t);
  fail(what, ": metric ", monitor.metric, " is not computed for this dataset; its thresholds give ", names);
}

double EvalMetrics::value(const MonitorSpec& monitor) const {
  const MonitorParts p = split_monitor(monitor);
  const PoseMetrics& m = p.subset == "clean" ? clean : full;
  if (p.measure == "loss") return p.subset == "clean" ? loss_clean : loss_full;
  if (p.measure == "mpjpe") return m.mpjpe;
  return m.pck_at(p.threshold);
}

Json EvalMetrics::to_json() const {
  Json j = Json::object();
  j.set("views", views).set("loss_full", loss_full).set("loss_clean", loss_clean);
  j.set("full", full.to_json()).set("clean", clean.to_json());
  return j;
}

EvalSet::EvalSet(const PoseDataset& data, Split split, c10::Device device, int64_t batch_size)
    : split_(to_string(split)),
      spec_(data.spec),
      loader_(data.x, data.y, data.indices(split, Subset::full), [&] {
        LoaderOptions o;
        o.batch_size = batch_size;
        o.shuffle = false;
        o.drop_last = false;
        o.device = device;
        return o;
      }()) {
  const auto idx = data.indices(split, Subset::full);
  CSIPOSE_CHECK(!idx.empty(), "split ", split_, " of ", data.root, " has no windows");
  const auto index = torch::tensor(idx, torch::kInt64);
  y_ = data.y.index_select(0, index);
  clean_ = data.corrupted.index_select(0, index).logical_not();
  num_clean_ = clean_.sum().item<int64_t>();
  loader_.set_epoch(0);
}

torch::Tensor EvalSet::predict(PoseModelImpl& model, const std::vector<std::string>& views) const {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  std::vector<torch::Tensor> parts;
  for (int64_t b = 0; b < loader_.num_batches(); ++b) {
    const Batch batch = loader_.batch(b);
    torch::Tensor sum;
    for (const auto& v : views) {
      const auto p = model.forward(tta_view(batch.x, v));
      sum = sum.defined() ? sum + p : p;
    }
    if (views.size() > 1) sum = sum / static_cast<double>(views.size());
    parts.push_back(sum.to(torch::kCPU, torch::kFloat32));
  }
  if (was_training) model.train();
  return torch::cat(parts, 0);
}

EvalMetrics EvalSet::evaluate(PoseModelImpl& model, const PoseLoss& loss, const std::vector<std::string>& views) const {
  const auto pred = predict(model, views);
  EvalMetrics m;
  m.views = views;
  m.full = score_predictions(pred, y_, spec_, split_, "full");
  m.loss_full = loss(pred, y_).item<double>();
  if (num_clean_ > 0) {
    const auto keep = clean_.nonzero().squeeze(1);
    const auto pc = pred.index_select(0, keep), yc = y_.index_select(0, keep);
    m.clean = score_predictions(pc, yc, spec_, split_, "clean");
    m.loss_clean = loss(pc, yc).item<double>();
  } else {
    m.clean = m.full;
    m.clean.subset = "clean";
    m.clean.num_samples = 0;
  }
  return m;
}

}  // namespace csipose
