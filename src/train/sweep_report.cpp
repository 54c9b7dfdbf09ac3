#include "train/sweep_report.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "common/atomic_file.h"
#include "common/check.h"
#include "models/int8_checkpoint.h"
#include "models/pose_model.h"
#include "train/trainer.h"
#include "train/sweep.h"

namespace csipose {
namespace fs = std::filesystem;
namespace {

Json read_json_if(const fs::path& p) { return fs::exists(p) ? Json::parse(read_text_file(p.string())) : Json(); }

/// test/clean PCK@20 of an EvalMetrics JSON ("clean" -> "pck" -> "pck@20").
Json clean_pck20(const Json& eval) {
  if (eval.is_null()) return Json();
  return eval.at("clean").at("pck").at("pck@20");
}

Json int8_bytes(const fs::path& csq) {
  if (!fs::exists(csq)) return Json();
  const Int8Size s = int8_checkpoint_size(csq.string());
  return Json(s.int8_weight_bytes + s.float_bytes);
}

std::string fixed(double v, int digits) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

enum class Cell { count, percent, points };

/// A markdown cell; JSON may give a float that happens to be whole back as an integer, so the
/// column, not the value, decides the format.
std::string cell(const Json& v, Cell kind) {
  if (v.is_null()) return "-";
  if (kind == Cell::count) return std::to_string(v.as_int());
  return kind == Cell::percent ? fixed(100.0 * v.as_double(), 2) + "%" : fixed(v.as_double(), 2);
}

std::string csv_cell(const std::string& column, const Json& v) {
  if (v.is_null()) return "";
  if (column == "index" || column == "params" || column.find("bytes") != std::string::npos) return std::to_string(v.as_int());
  if (v.is_number()) return fixed(v.as_double(), 6);
  std::string s = v.as_string();
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '&') out += "&amp;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

Json diff_points(const Json& a, const Json& b) {
  if (a.is_null() || b.is_null()) return Json();
  return Json(100.0 * (a.as_double() - b.as_double()));
}

/// accuracy vs size (or vs batch-1 latency, `latency`: the points' x is then microseconds), log-scale
/// x axis; the Pareto front as a step line with its points labelled.
std::string pareto_svg(const std::string& name, const std::vector<ParetoPoint>& pts, bool latency = false) {
  const double W = 720, H = 460, L = 70, R = 20, T = 40, B = 60;
  double xmin = 1e300, xmax = 0, ymin = 1.0, ymax = 0.0;
  for (const auto& p : pts) {
    xmin = std::min(xmin, p.bytes);
    xmax = std::max(xmax, p.bytes);
    ymin = std::min(ymin, p.pck20);
    ymax = std::max(ymax, p.pck20);
  }
  if (pts.empty()) xmin = 1e3, xmax = 1e6, ymin = 0, ymax = 1;
  double lx0 = std::floor(std::log10(std::max(1.0, xmin)) * 4) / 4, lx1 = std::ceil(std::log10(std::max(1.0, xmax)) * 4) / 4;
  if (lx1 - lx0 < 0.5) lx0 -= 0.25, lx1 += 0.25;
  double y0 = std::max(0.0, std::floor(ymin * 10 - 0.5) / 10), y1 = std::min(1.0, std::ceil(ymax * 10 + 0.5) / 10);
  if (y1 - y0 < 0.1) y1 = std::min(1.0, y0 + 0.1), y0 = y1 - 0.1;
  auto X = [&](double b) { return L + (std::log10(std::max(1.0, b)) - lx0) / (lx1 - lx0) * (W - L - R); };
  auto Y = [&](double a) { return H - B - (a - y0) / (y1 - y0) * (H - T - B); };
  std::ostringstream s;
  s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H
    << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s << "<text x=\"" << W / 2 << "\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">" << xml_escape(name)
    << ": test/clean PCK@20 vs " << (latency ? "batch-1 CPU latency" : "model bytes") << " (Pareto front marked)</text>\n";
  // axes, grid and ticks
  s << "<line x1=\"" << L << "\" y1=\"" << H - B << "\" x2=\"" << W - R << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  s << "<line x1=\"" << L << "\" y1=\"" << T << "\" x2=\"" << L << "\" y2=\"" << H - B << "\" stroke=\"black\"/>\n";
  for (double e = std::ceil(lx0 * 4) / 4; e <= lx1 + 1e-9; e += 0.25) {
    const double b = std::pow(10.0, e), x = X(b);
    s << "<line x1=\"" << fixed(x, 1) << "\" y1=\"" << T << "\" x2=\"" << fixed(x, 1) << "\" y2=\"" << H - B
      << "\" stroke=\"#eee\"/>\n";
    const std::string label = latency ? fixed(b / 1e3, b < 1e3 ? 2 : 1) + " ms"
                              : b >= 1e6  ? fixed(b / 1e6, 2) + " MB"
                              : b >= 1e3  ? fixed(b / 1e3, 0) + " kB"
                                          : fixed(b, 0) + " B";
    s << "<text x=\"" << fixed(x, 1) << "\" y=\"" << H - B + 16 << "\" text-anchor=\"middle\">" << label << "</text>\n";
  }
  for (double a = y0; a <= y1 + 1e-9; a += (y1 - y0) / 5) {
    const double y = Y(a);
    s << "<line x1=\"" << L << "\" y1=\"" << fixed(y, 1) << "\" x2=\"" << W - R << "\" y2=\"" << fixed(y, 1)
      << "\" stroke=\"#eee\"/>\n";
    s << "<text x=\"" << L - 6 << "\" y=\"" << fixed(y + 4, 1) << "\" text-anchor=\"end\">" << fixed(100 * a, 0) << "%</text>\n";
  }
  s << "<text x=\"" << (L + W - R) / 2 << "\" y=\"" << H - 20 << "\" text-anchor=\"middle\">"
    << (latency ? "median batch-1 forward, ms (log scale)" : "model bytes (log scale)") << "</text>\n";
  s << "<text transform=\"translate(18," << (T + H - B) / 2 << ") rotate(-90)\" text-anchor=\"middle\">test/clean PCK@20</text>\n";
  // the front as a staircase: best accuracy achievable at each size
  std::vector<const ParetoPoint*> front;
  for (const auto& p : pts)
    if (p.front) front.push_back(&p);
  if (!front.empty()) {
    s << "<polyline fill=\"none\" stroke=\"#d62728\" stroke-width=\"1.5\" points=\"";
    for (size_t i = 0; i < front.size(); ++i) {
      if (i) s << fixed(X(front[i]->bytes), 1) << "," << fixed(Y(front[i - 1]->pck20), 1) << " ";
      s << fixed(X(front[i]->bytes), 1) << "," << fixed(Y(front[i]->pck20), 1) << " ";
    }
    s << "\"/>\n";
  }
  for (const auto& p : pts) {
    const double x = X(p.bytes), y = Y(p.pck20);
    const char* color = p.numerics == "fp32" ? "#1f77b4" : "#ff7f0e";
    s << "<g><title>" << xml_escape(p.run + " " + p.numerics + " " + p.overrides) << "</title>";
    if (p.numerics == "fp32")
      s << "<circle cx=\"" << fixed(x, 1) << "\" cy=\"" << fixed(y, 1) << "\" r=\"4\" fill=\"" << color << "\"";
    else
      s << "<rect x=\"" << fixed(x - 4, 1) << "\" y=\"" << fixed(y - 4, 1) << "\" width=\"8\" height=\"8\" fill=\"" << color << "\"";
    s << (p.front ? " stroke=\"#d62728\" stroke-width=\"2\"" : "") << "/></g>\n";
    if (p.front)
      s << "<text x=\"" << fixed(x + 6, 1) << "\" y=\"" << fixed(y - 6, 1) << "\" fill=\"#d62728\">" << xml_escape(p.run)
        << " " << p.numerics << "</text>\n";
  }
  s << "<circle cx=\"" << W - R - 150 << "\" cy=\"" << H - B - 40 << "\" r=\"4\" fill=\"#1f77b4\"/><text x=\"" << W - R - 140
    << "\" y=\"" << H - B - 36 << "\">fp32</text>\n";
  s << "<rect x=\"" << W - R - 154 << "\" y=\"" << H - B - 24 << "\" width=\"8\" height=\"8\" fill=\"#ff7f0e\"/><text x=\""
    << W - R - 140 << "\" y=\"" << H - B - 16 << "\">int8</text>\n";
  s << "<line x1=\"" << W - R - 156 << "\" y1=\"" << H - B - 4 << "\" x2=\"" << W - R - 144 << "\" y2=\"" << H - B - 4
    << "\" stroke=\"#d62728\" stroke-width=\"1.5\"/><text x=\"" << W - R - 140 << "\" y=\"" << H - B << "\">Pareto front</text>\n";
  s << "</svg>\n";
  return s.str();
}

}  // namespace

double batch1_latency_ms(const std::string& model_file, int64_t iters, int64_t threads) {
  CSIPOSE_CHECK(iters > 0, "batch1_latency_ms: iters must be > 0, got ", iters);
  const int saved = torch::get_num_threads();
  torch::set_num_threads(static_cast<int>(threads));
  auto model = load_eval_model(model_file);
  std::vector<int64_t> shape{1};
  for (int64_t d : model->input_shape()) shape.push_back(d);
  const torch::Tensor x = torch::full(shape, 0.5);
  torch::NoGradGuard no_grad;
  std::vector<double> ms;
  for (int64_t i = 0; i < iters + 3; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    (void)model->forward(x);
    const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (i >= 3) ms.push_back(t);
  }
  torch::set_num_threads(saved);
  std::nth_element(ms.begin(), ms.begin() + static_cast<long>(ms.size() / 2), ms.end());
  return ms[ms.size() / 2];
}

Json collect_run_result(const std::string& run_dir, const SweepRun& run, int64_t latency_iters, int64_t threads) {
  const fs::path rd(run_dir);
  const Json train = read_json_if(rd / "train" / "report.json");
  CSIPOSE_CHECK(!train.is_null(), run_dir, ": no train/report.json; the train stage has not finished");
  const Json dyn = read_json_if(rd / "ptq_dynamic.json");
  const Json stat = read_json_if(rd / "ptq_static.json");
  const Json qat = read_json_if(rd / "qat" / "report.json");
  const Json& model = train.at("model");
  Json r = Json::object();
  std::string ov;
  for (const auto& o : run.overrides) ov += (ov.empty() ? "" : " ") + o;
  r.set("id", run.id).set("index", run.index).set("overrides", ov);
  r.set("model", model.at("preset").as_string().empty() ? model.at("family") : model.at("preset"));
  r.set("params", model.at("params")).set("fp32_bytes", model.at("fp32_bytes"));
  r.set("pck20_fp32", clean_pck20(train.at("test")));
  r.set("pck20_ptq_dynamic", dyn.is_null() ? Json() : clean_pck20(dyn.at("fake_quant")));
  r.set("pck20_ptq_static_fq", stat.is_null() ? Json() : clean_pck20(stat.at("fake_quant")));
  r.set("pck20_ptq_static_int8", stat.is_null() ? Json() : clean_pck20(stat.at("int8")));
  r.set("ptq_static_int8_bytes", int8_bytes(rd / "ptq_static.csq"));
  const Json qq = qat.is_null() ? Json() : qat.at("quantization");
  r.set("pck20_qat_fq", qq.is_null() ? Json() : clean_pck20(qq.at("fake_quant")));
  r.set("pck20_qat_int8", qq.is_null() ? Json() : clean_pck20(qq.at("int8")));
  r.set("qat_int8_bytes", int8_bytes(rd / "qat" / "model.csq"));
  // The deployable int8 model: QAT's when the sweep ran QAT, else static PTQ's.
  const bool use_qat = !qq.is_null();
  const Json i8 = use_qat ? r.at("pck20_qat_int8") : r.at("pck20_ptq_static_int8");
  const Json fq = use_qat ? r.at("pck20_qat_fq") : r.at("pck20_ptq_static_fq");
  r.set("int8_source", use_qat ? Json("qat") : stat.is_null() ? Json() : Json("ptq_static"));
  r.set("int8_bytes", use_qat ? r.at("qat_int8_bytes") : r.at("ptq_static_int8_bytes"));
  r.set("pck20_int8", i8);
  r.set("gap_fp32_minus_int8_points", diff_points(r.at("pck20_fp32"), i8));
  r.set("gap_fq_minus_int8_points", diff_points(fq, i8));
  r.set("metric_definition", train.at("metric_definition"));
  if (latency_iters > 0) {
    r.set("latency_ms_fp32", batch1_latency_ms((rd / "train" / "checkpoints" / "best.safetensors").string(), latency_iters, threads));
    const fs::path i8 = use_qat ? rd / "qat" / "model.csq" : rd / "ptq_static.csq";
    r.set("latency_ms_int8", fs::exists(i8) ? Json(batch1_latency_ms(i8.string(), latency_iters, threads)) : Json());
  }
  return r;
}

std::vector<ParetoPoint> pareto_front(std::vector<ParetoPoint> pts) {
  for (auto& p : pts) {
    p.front = true;
    for (const auto& q : pts)
      if (q.bytes <= p.bytes && q.pck20 >= p.pck20 && (q.bytes < p.bytes || q.pck20 > p.pck20)) {
        p.front = false;
        break;
      }
  }
  std::sort(pts.begin(), pts.end(), [](const ParetoPoint& a, const ParetoPoint& b) {
    if (a.bytes != b.bytes) return a.bytes < b.bytes;
    if (a.pck20 != b.pck20) return a.pck20 > b.pck20;
    return a.run + a.numerics < b.run + b.numerics;
  });
  return pts;
}

Json write_sweep_report(const std::string& dir) {
  const fs::path d(dir);
  const Json plan = Json::parse(read_text_file((d / "plan.json").string()));
  const std::string name = plan.at("name").as_string();
  Json rows = Json::array();
  std::vector<std::string> missing;
  for (const Json& r : plan.at("runs").elements()) {
    const fs::path res = d / "runs" / r.at("id").as_string() / "result.json";
    if (fs::exists(res))
      rows.push(Json::parse(read_text_file(res.string())));
    else
      missing.push_back(r.at("id").as_string());
  }
  static const std::vector<std::string> cols = {
      "id", "index", "overrides", "model", "params", "fp32_bytes", "int8_bytes", "int8_source", "pck20_fp32",
      "pck20_ptq_dynamic", "pck20_ptq_static_fq", "pck20_ptq_static_int8", "pck20_qat_fq", "pck20_qat_int8", "pck20_int8",
      "gap_fp32_minus_int8_points", "gap_fq_minus_int8_points", "ptq_static_int8_bytes", "qat_int8_bytes",
      "latency_ms_fp32", "latency_ms_int8"};
  std::ostringstream csv;
  for (size_t i = 0; i < cols.size(); ++i) csv << (i ? "," : "") << cols[i];
  csv << "\n";
  for (const Json& r : rows.elements()) {
    for (size_t i = 0; i < cols.size(); ++i) csv << (i ? "," : "") << csv_cell(cols[i], r.contains(cols[i]) ? r.at(cols[i]) : Json());
    csv << "\n";
  }
  write_text_atomic((d / "report" / "results.csv").string(), csv.str());

  std::vector<ParetoPoint> pts;
  for (const Json& r : rows.elements()) {
    pts.push_back({r.at("id").as_string(), "fp32", r.at("overrides").as_string(),
                   static_cast<double>(r.at("fp32_bytes").as_int()), r.at("pck20_fp32").as_double()});
    if (!r.at("pck20_int8").is_null() && !r.at("int8_bytes").is_null())
      pts.push_back({r.at("id").as_string(), "int8", r.at("overrides").as_string(),
                     static_cast<double>(r.at("int8_bytes").as_int()), r.at("pck20_int8").as_double()});
  }
  pts = pareto_front(pts);

  bool latency = false;
  for (const Json& r : rows.elements()) latency = latency || r.contains("latency_ms_fp32");
  std::ostringstream md;
  md << "# Sweep " << name << "\n\n" << rows.size() << " of " << plan.at("runs").size() << " runs have results";
  if (!missing.empty()) {
    md << " (no result yet:";
    for (const auto& m : missing) md << " " << m;
    md << ")";
  }
  md << ". Accuracy is test/clean PCK@20 under the locked metric";
  if (rows.size() > 0) md << " (" << rows.at(size_t{0}).at("metric_definition").as_string() << ")";
  md << ". int8 = QAT's converted model when the sweep ran QAT, else static PTQ's; int8 bytes = int8 weights, int32 "
        "biases and float tensors of the .csq; gaps in PCK@20 points"
     << (latency ? "; latency: median batch-1 forward on the CPU (indicative, not reproducible)" : "") << ".\n\n";
  md << "| run | overrides | model | params | bytes fp32 | bytes int8 | PCK@20 fp32 | PTQ dyn. | PTQ static fq | "
        "fake-quant | int8 | fp32 - int8 | fq - int8 |"
     << (latency ? " ms fp32 (b=1) | ms int8 (b=1) |" : "") << "\n";
  md << "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" << (latency ? "---:|---:|" : "") << "\n";
  for (const Json& r : rows.elements()) {
    const Json fq = r.at("int8_source").is_string() && r.at("int8_source").as_string() == "qat" ? r.at("pck20_qat_fq")
                                                                                                : r.at("pck20_ptq_static_fq");
    md << "| " << r.at("id").as_string() << " | " << r.at("overrides").as_string() << " | " << r.at("model").as_string()
       << " | " << cell(r.at("params"), Cell::count) << " | " << cell(r.at("fp32_bytes"), Cell::count) << " | "
       << cell(r.at("int8_bytes"), Cell::count) << " | " << cell(r.at("pck20_fp32"), Cell::percent) << " | "
       << cell(r.at("pck20_ptq_dynamic"), Cell::percent) << " | " << cell(r.at("pck20_ptq_static_fq"), Cell::percent) << " | "
       << cell(fq, Cell::percent) << " | " << cell(r.at("pck20_int8"), Cell::percent) << " | "
       << cell(r.at("gap_fp32_minus_int8_points"), Cell::points) << " | " << cell(r.at("gap_fq_minus_int8_points"), Cell::points)
       << " |";
    if (latency)
      md << " " << cell(r.contains("latency_ms_fp32") ? r.at("latency_ms_fp32") : Json(), Cell::points) << " | "
         << cell(r.contains("latency_ms_int8") ? r.at("latency_ms_int8") : Json(), Cell::points) << " |";
    md << "\n";
  }
  md << "\n## Pareto front: accuracy vs size\n\nNo other (run, numerics) is both smaller and at least as accurate. "
        "Plot: pareto.svg.\n\n| bytes | PCK@20 | numerics | run | overrides |\n|---:|---:|---|---|---|\n";
  for (const auto& p : pts)
    if (p.front)
      md << "| " << static_cast<int64_t>(p.bytes) << " | " << fixed(100 * p.pck20, 2) << "% | " << p.numerics << " | " << p.run
         << " | " << p.overrides << " |\n";
  if (latency) {
    // The same front over batch-1 latency (x in microseconds so the log axis stays >= 1).
    std::vector<ParetoPoint> lat;
    for (const Json& r : rows.elements())
      for (const char* numerics : {"fp32", "int8"}) {
        const Json& ms = r.contains(std::string("latency_ms_") + numerics) ? r.at(std::string("latency_ms_") + numerics) : Json();
        const Json& acc = r.at(std::string(numerics) == "fp32" ? "pck20_fp32" : "pck20_int8");
        if (ms.is_number() && acc.is_number())
          lat.push_back({r.at("id").as_string(), numerics, r.at("overrides").as_string(), 1000.0 * ms.as_double(),
                         acc.as_double()});
      }
    lat = pareto_front(lat);
    md << "\n## Pareto front: accuracy vs batch-1 latency\n\nNo other (run, numerics) is both faster and at least as "
          "accurate (median batch-1 CPU forward; indicative). Plot: pareto_latency.svg.\n\n"
          "| ms (b=1) | PCK@20 | numerics | run | overrides |\n|---:|---:|---|---|---|\n";
    for (const auto& p : lat)
      if (p.front)
        md << "| " << fixed(p.bytes / 1000.0, 3) << " | " << fixed(100 * p.pck20, 2) << "% | " << p.numerics << " | "
           << p.run << " | " << p.overrides << " |\n";
    write_text_atomic((d / "report" / "pareto_latency.svg").string(), pareto_svg(name, lat, /*latency=*/true));
  }
  write_text_atomic((d / "report" / "pareto.md").string(), md.str());
  write_text_atomic((d / "report" / "pareto.svg").string(), pareto_svg(name, pts));
  return rows;
}

}  // namespace csipose
