// The model registry (models/artifact_registry.h), `csipose gate` (train/gate.h) and `csipose
// export` (train/export.h) on tiny MM-Fi-layout synthetic data and pose_nano.
//
// The gate's data is relabelled with the fp32 model's own predictions, so fp32 scores PCK 100%
// exactly and any quantization error can only lower it (as in test_sensitivity.cpp); one op of the
// static .csq has 2-bit weights and activations, so its drop is large and a 1-point budget fails.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/config_node.h"
#include "common/hash.h"
#include "common/json.h"
#include "data/dataset.h"
#include "data/npy_torch.h"
#include "data/synth/generator.h"
#include "data/synth/synth_config.h"
#include "models/artifact_registry.h"
#include "models/checkpoint.h"
#include "models/int8_checkpoint.h"
#include "models/safetensors.h"
#include "eval/pck.h"
#include "models/registry.h"
#include "train/export.h"
#include "testing.h"

namespace csipose {
namespace {
namespace fs = std::filesystem;
using testing::error_of;
using testing::run_csipose;
using testing::TempDir;

std::string sha_of(const std::string& path) { return sha256_hex(read_text_file(path)); }
Json read_json(const std::string& path) { return Json::parse(read_text_file(path)); }

/// The gate row of `name` in a gate JSON.
Json row_of(const Json& gate, const std::string& name) {
  for (const Json& r : gate.at("entries").elements())
    if (r.at("name").as_string() == name) return r;
  ADD_FAILURE() << "no gate row " << name;
  return Json();
}

class GateTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    const auto synth = SynthConfig::from_yaml(ConfigNode::load_string(
        "layout: mmfi\nsubjects: 2\nactivities: [wave, squat]\nsessions: 3\nwindows_per_file: 8\n", "<test>"));
    generate_synthetic(synth, data_dir(), 1);
    generate_synthetic(synth, rel_dir(), 1);
    // rel: labels := a seeded pose_nano's predictions; that model is the fp32 checkpoint.
    const PoseDataset data = open_dataset(rel_dir());
    torch::manual_seed(5);
    const ModelConfig mc = model_preset("pose_nano");
    auto model = make_model(mc);
    model->eval();
    {
      torch::NoGradGuard no_grad;
      save_npy(rel_dir() + "/Y.npy", model->forward(data.x).detach().contiguous());
    }
    save_checkpoint(fp32(), mc, *model);
  }
  static void TearDownTestSuite() { delete dir_; }
  static std::string data_dir() { return dir_->file("data"); }
  static std::string rel_dir() { return dir_->file("rel"); }
  static std::string fp32() { return dir_->file("fp32.ckpt"); }

  static TempDir* dir_;
};
TempDir* GateTest::dir_ = nullptr;

/// The same data set up for the export tests (their own suite for --gtest_filter=Export*).
class ExportTest : public GateTest {};

// ---- registry ---------------------------------------------------------------------------------

const char* kRegistry =
    "entries:\n"
    "  - name: a\n"
    "    fp32: a.ckpt\n"
    "    quant_mode: static\n"
    "    int8: a.csq\n"
    "    budget: {max_pck20_drop: 0.5, max_latency_ms: 12}\n"
    "  - name: b\n"
    "    fp32: b.ckpt\n"
    "    quant_mode: dynamic\n"
    "    policy: p.yaml\n"
    "    budget: {max_pck20_drop: 1}\n"
    "    split: val\n";

TEST(ModelRegistry, ParsesAndRoundTrips) {
  const ModelRegistry r = ModelRegistry::parse(kRegistry, "<test>");
  ASSERT_EQ(r.entries.size(), 2u);
  EXPECT_EQ(r.entries[0].quant_mode, DeployMode::static_int8);
  EXPECT_EQ(r.entries[0].artefact(), "a.csq");
  EXPECT_DOUBLE_EQ(*r.entries[0].budget.max_latency_ms, 12.0);
  EXPECT_EQ(r.entries[0].split, "test");  // defaults
  EXPECT_EQ(r.entries[0].device, "cpu");
  EXPECT_EQ(r.entries[1].artefact(), "b.ckpt");
  EXPECT_FALSE(r.entries[1].budget.max_latency_ms.has_value());
  EXPECT_EQ(r.entries[1].split, "val");
  EXPECT_EQ(ModelRegistry::parse(r.to_yaml(), "<again>").to_yaml(), r.to_yaml());
}

TEST(ModelRegistry, ErrorsNameFileLineAndKey) {
  auto err = [](const std::string& yaml) { return error_of([&] { ModelRegistry::parse(yaml, "reg.yaml"); }); };
  std::string e = err(std::string(kRegistry) + "    budgte: {max_pck20_drop: 1}\n");
  EXPECT_NE(e.find("reg.yaml:13: entries[1].budgte: unknown key"), std::string::npos) << e;
  e = err("entries:\n  - name: a\n    fp32: a.ckpt\n    quant_mode: static\n    budget: {max_pck20_drop: 1}\n");
  EXPECT_NE(e.find("entries[0].int8: required for quant_mode static"), std::string::npos) << e;
  e = err("entries:\n  - name: a\n    fp32: a.ckpt\n    quant_mode: int4\n    budget: {}\n");
  EXPECT_NE(e.find("reg.yaml:4: entries[0].quant_mode: unknown value \"int4\"; expected one of: fp32, dynamic, static, qat"),
            std::string::npos) << e;
  e = err("entries:\n  - name: a\n    fp32: a.ckpt\n    quant_mode: fp32\n    budget: {max_pck20_drop: -1}\n");
  EXPECT_NE(e.find("entries[0].budget.max_pck20_drop: value -1 is out of range"), std::string::npos) << e;
  e = err("entries:\n  - {name: a, fp32: x, quant_mode: fp32, budget: {}}\n  - {name: a, fp32: y, quant_mode: fp32, budget: {}}\n");
  EXPECT_NE(e.find("entries[1].name: duplicate entry name \"a\" (first at entries[0].name)"), std::string::npos) << e;
  e = err("entries:\n  - {name: a, fp32: x, quant_mode: fp32, budget: {}, sha256: abc}\n");
  EXPECT_NE(e.find("entries[0].sha256: expected 64 lower-case hex digits"), std::string::npos) << e;
  e = err("entries:\n  - {name: a, quant_mode: fp32, budget: {}}\n");
  EXPECT_NE(e.find("entries[0].fp32: required key is missing"), std::string::npos) << e;

  // add(): a same-named entry is replaced only when asked; other entries keep their order.
  ModelRegistry r = ModelRegistry::parse(kRegistry, "<test>");
  RegistryEntry x = r.entries[0];
  x.int8 = "other.csq";
  e = error_of([&] { r.add(x, false, "reg.yaml"); });
  EXPECT_NE(e.find("registry reg.yaml: an entry named \"a\" exists"), std::string::npos) << e;
  EXPECT_NE(e.find("--replace"), std::string::npos) << e;
  r.add(x, true, "reg.yaml");
  ASSERT_EQ(r.entries.size(), 2u);
  EXPECT_EQ(r.entries[0].int8, "other.csq");
  EXPECT_EQ(r.entries[1].name, "b");
  e = error_of([&] { r.select({"b", "zz"}, "reg.yaml"); });
  EXPECT_NE(e.find("no entry named \"zz\"; entries: a, b"), std::string::npos) << e;
}

// ---- gate -------------------------------------------------------------------------------------

TEST_F(GateTest, ExitCodesTableValuesAndShaMismatch) {
  TempDir tmp;
  testing::write_file(tmp.file("frag.yaml"),
                      "rules:\n  - match: \"tf.layers.0.linear1\"\n    weights: {bits: 2}\n    activations: {bits: 2}\n");
  auto r = run_csipose({"ptq", "--checkpoint", fp32(), "--data", rel_dir(), "--calibration", "2", "--batch-size", "16",
                        "--policy", tmp.file("frag.yaml"), "--out", tmp.file("frag.csq"), "--calibration-out",
                        tmp.file("calib.json")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_csipose({"ptq", "--checkpoint", fp32(), "--data", rel_dir(), "--mode", "dynamic", "--json", tmp.file("dyn.json")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string common = "    fp32: \"" + fp32() + "\"\n    data: \"" + rel_dir() + "\"\n";
  const std::string frag = "    quant_mode: static\n    int8: \"" + tmp.file("frag.csq") + "\"\n    calibration: \"" +
                           tmp.file("calib.json") + "\"\n    policy: \"" + tmp.file("frag.yaml") + "\"\n";
  testing::write_file(tmp.file("reg.yaml"),
                      "entries:\n"
                      "  - name: frag_tight\n" + common + frag + "    budget: {max_pck20_drop: 1}\n"
                      "  - name: frag_loose\n" + common + frag + "    budget: {max_pck20_drop: 100}\n    sha256: " +
                          sha_of(tmp.file("frag.csq")) + "\n"
                      "  - name: dyn\n" + common + "    quant_mode: dynamic\n"
                      "    budget: {max_pck20_drop: 100, max_latency_ms: 100000}\n"
                      "  - name: ref\n" + common + "    quant_mode: fp32\n    budget: {max_pck20_drop: 0}\n"
                      "  - name: slow\n" + common + "    quant_mode: fp32\n    budget: {max_pck20_drop: 0, max_latency_ms: 1.0e-6}\n"
                      "  - name: tampered\n" + common + frag + "    budget: {max_pck20_drop: 100}\n    sha256: " +
                          std::string(64, '0') + "\n");
  r = run_csipose({"gate", "--registry", tmp.file("reg.yaml"), "--latency-iters", "3", "--latency-warmup", "1", "--json",
                   tmp.file("g.json")});
  ASSERT_EQ(r.exit_code, 3) << r.output;
  std::printf("%s\n", r.output.c_str());
  const Json g = read_json(tmp.file("g.json"));
  EXPECT_FALSE(g.at("pass").as_bool());
  EXPECT_EQ(g.at("exit_code").as_int(), 3);

  // The numbers are `csipose eval`'s of the same files (same split, device, batches).
  r = run_csipose({"eval", "--checkpoint", fp32(), "--data", rel_dir(), "--json", tmp.file("e32.json")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = run_csipose({"eval", "--checkpoint", tmp.file("frag.csq"), "--data", rel_dir(), "--json", tmp.file("e8.json")});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json e32 = read_json(tmp.file("e32.json")).at("result"), e8 = read_json(tmp.file("e8.json")).at("result");
  const Json tight = row_of(g, "frag_tight");
  for (const char* sub : {"full", "clean"}) {
    EXPECT_EQ(tight.at("fp32_metrics").at(sub).dump(), e32.at(sub).dump()) << sub;
    EXPECT_EQ(tight.at("shipped_metrics").at(sub).dump(), e8.at(sub).dump()) << sub;
  }
  const double fp32_pck = PoseMetrics::from_json(e32.at("clean")).pck_at(0.2);
  const double int8_pck = PoseMetrics::from_json(e8.at("clean")).pck_at(0.2);
  const double int8_full = PoseMetrics::from_json(e8.at("full")).pck_at(0.2);
  EXPECT_DOUBLE_EQ(fp32_pck, 1.0);  // labels are the fp32 predictions
  EXPECT_DOUBLE_EQ(tight.at("pck@20_drop_points").at("clean").as_double(), 100.0 * (fp32_pck - int8_pck));
  EXPECT_DOUBLE_EQ(tight.at("pck@20_drop_points").at("full").as_double(),
                   100.0 * (PoseMetrics::from_json(e32.at("full")).pck_at(0.2) - int8_full));
  EXPECT_GT(tight.at("pck@20_drop_points").at("clean").as_double(), 5.0);
  EXPECT_FALSE(tight.at("pass").as_bool());
  EXPECT_NE(tight.at("failures").at(0).as_string().find("> budget 1.00 points"), std::string::npos) << tight.dump();
  // The table row: name, mode, split, fp32 and shipped PCK@20, drop, budget, verdict.
  char expect[128];
  std::snprintf(expect, sizeof expect, "%-20s %-7s %-5s %11s ", "frag_tight", "static", "test", "100.00%");
  const Json frag_loose = row_of(g, "frag_loose");
  EXPECT_TRUE(frag_loose.at("pass").as_bool()) << frag_loose.dump();
  EXPECT_EQ(frag_loose.at("sha256").as_string(), sha_of(tmp.file("frag.csq")));

  // Dynamic PTQ is `ptq --mode dynamic`'s fake-quant model; latency only where budgeted.
  const Json dyn = row_of(g, "dyn");
  EXPECT_TRUE(dyn.at("pass").as_bool()) << dyn.dump();
  EXPECT_EQ(dyn.at("shipped_metrics").at("clean").dump(), read_json(tmp.file("dyn.json")).at("fake_quant").at("clean").dump());
  EXPECT_GT(dyn.at("latency_ms").as_double(), 0.0);
  EXPECT_TRUE(tight.at("latency_ms").is_null());
  const Json ref = row_of(g, "ref");
  EXPECT_TRUE(ref.at("pass").as_bool()) << ref.dump();
  EXPECT_DOUBLE_EQ(ref.at("pck@20_drop_points").at("clean").as_double(), 0.0);

  // A latency budget no forward pass can meet: FAIL with the measured median.
  const Json slow = row_of(g, "slow");
  EXPECT_FALSE(slow.at("pass").as_bool());
  EXPECT_GT(slow.at("latency_ms").as_double(), 1e-6);
  EXPECT_NE(slow.at("failures").at(0).as_string().find("latency"), std::string::npos) << slow.dump();
  EXPECT_EQ(slow.at("failures").size(), 1u);  // its accuracy is within budget (drop 0)

  // A sha256 mismatch is a FAIL row with the reason, not a crash, and nothing is evaluated.
  const Json tampered = row_of(g, "tampered");
  EXPECT_FALSE(tampered.at("pass").as_bool());
  EXPECT_FALSE(tampered.at("evaluated").as_bool());
  EXPECT_NE(tampered.at("failures").at(0).as_string().find("sha256 mismatch"), std::string::npos) << tampered.dump();

  // The printed table (gate's stdout) carries the same values and the metric definition.
  r = run_csipose({"gate", "--registry", tmp.file("reg.yaml"), "--only", "frag_tight", "tampered"});
  EXPECT_EQ(r.exit_code, 3) << r.output;
  char pct[32];
  std::snprintf(pct, sizeof pct, "%.2f%%", 100.0 * int8_pck);
  const std::string row = testing::line_with(r.output, "frag_tight");
  EXPECT_EQ(row.rfind(expect, 0), 0u) << row;
  EXPECT_NE(row.find(pct), std::string::npos) << row;
  EXPECT_NE(row.find("FAIL (PCK@20 drop"), std::string::npos) << row;
  EXPECT_NE(testing::line_with(r.output, "tampered").find("FAIL (sha256 mismatch"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("metric: " + PoseMetrics::from_json(e32.at("clean")).spec.describe()), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("FAIL: 0 of 2 entries pass"), std::string::npos) << r.output;

  // Within budget: exit 0.
  r = run_csipose({"gate", "--registry", tmp.file("reg.yaml"), "--only", "frag_loose", "ref"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("PASS: 2 of 2 entries pass"), std::string::npos) << r.output;

  // Errors stay exit 1: a registry error names file, line and key; an unknown --only name.
  testing::write_file(tmp.file("bad.yaml"), "entries:\n  - name: x\n" + common + "    quant_mode: fp32\n    budget: {max_drop: 1}\n");
  r = run_csipose({"gate", "--registry", tmp.file("bad.yaml")});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("bad.yaml:6: entries[0].budget.max_drop: unknown key"), std::string::npos) << r.output;
  r = run_csipose({"gate", "--registry", tmp.file("reg.yaml"), "--only", "nope"});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no entry named \"nope\""), std::string::npos) << r.output;
}

// ---- export -----------------------------------------------------------------------------------

TEST_F(ExportTest, TrainAndQatRunsWithCardsAndRegistry) {
  TempDir tmp;
  testing::write_file(tmp.file("fp32.yaml"), "name: nano\nseed: 1\ndata: {root: \"" + data_dir() +
                                                 "\"}\nmodel: {type: pose_transformer, preset: pose_nano}\n"
                                                 "train: {epochs: 1, batch_size: 16, eval_batch_size: 64}\n");
  const std::string train_run = tmp.file("train_run"), qat_run = tmp.file("qat_run"), reg = tmp.file("models/registry.yaml");
  auto r = run_csipose({"train", "--config", tmp.file("fp32.yaml"), "--run-dir", train_run});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  testing::write_file(tmp.file("qat.yaml"), read_text_file(tmp.file("fp32.yaml")) +
                                                "qat: {bn_update_epochs: 1, observer_update_epochs: 1}\n");
  r = run_csipose({"qat", "--config", tmp.file("qat.yaml"), "--set", "train.init_output=none", "--init-from",
                   train_run + "/checkpoints/best.safetensors", "--run-dir", qat_run});
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // fp32 run -> safetensors.
  r = run_csipose({"export", "--run", train_run, "--format", "safetensors", "--out", tmp.file("ship32"), "--registry", reg,
                   "--name", "nano_fp32"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json c32 = read_json(tmp.file("ship32/model_card.json"));
  const std::string st = tmp.file("ship32/model.safetensors");
  EXPECT_EQ(c32.at("artefact").at("sha256").as_string(), sha_of(st));
  EXPECT_EQ(c32.at("artefact").at("bytes").as_int(), static_cast<int64_t>(fs::file_size(st)));
  EXPECT_EQ(c32.at("architecture").at("model").as_string(), "pose_nano");
  EXPECT_EQ(c32.at("architecture").at("params").as_int(), 39971);      // README's table
  EXPECT_EQ(c32.at("architecture").at("fp32_bytes").as_int(), 159884);
  EXPECT_TRUE(c32.at("architecture").at("int8_weight_bytes").is_null());
  EXPECT_TRUE(c32.at("quant_policy").is_null());
  const Json train_report = read_json(train_run + "/report.json");
  EXPECT_EQ(c32.at("metrics").at("test").dump(), train_report.at("test").dump());
  EXPECT_EQ(c32.at("metrics").at("definition").as_string(), train_report.at("metric_definition").as_string());
  EXPECT_EQ(c32.at("reproduce").at(0).as_string(), "csipose train --config " + train_run + "/config.yaml --run-dir " + train_run);
  EXPECT_NE(read_text_file(tmp.file("ship32/model_card.md")).find("metric: " + train_report.at("metric_definition").as_string()),
            std::string::npos);
  // The shipped weights are the best checkpoint's (PyTorch names: plain safetensors).
  const auto w = load_safetensors(st);
  EXPECT_EQ(w.metadata.at("format"), "pt");

  // QAT run -> csq; the registry keeps the first entry.
  r = run_csipose({"export", "--run", qat_run, "--format", "csq", "--out", tmp.file("ship8"), "--registry", reg,
                   "--budget", "100"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const Json c8 = read_json(tmp.file("ship8/model_card.json"));
  const std::string csq = tmp.file("ship8/model.csq");
  EXPECT_EQ(c8.at("artefact").at("sha256").as_string(), sha_of(csq));
  EXPECT_EQ(sha_of(csq), sha_of(qat_run + "/model.csq"));  // the run's own int8 model, copied
  EXPECT_GT(c8.at("architecture").at("int8_weight_bytes").as_int(), 0);
  EXPECT_EQ(c8.at("quant_mode").as_string(), "qat");
  EXPECT_FALSE(c8.at("quant_policy").is_null());
  const Json qat_report = read_json(qat_run + "/report.json");
  EXPECT_EQ(c8.at("metrics").at("quantization").at("int8").dump(), qat_report.at("quantization").at("int8").dump());
  EXPECT_EQ(c8.at("reproduce").size(), 3u);  // train the warm start, qat, export
  ModelRegistry m = ModelRegistry::load(reg);
  ASSERT_EQ(m.entries.size(), 2u);
  EXPECT_EQ(m.entries[0].name, "nano_fp32");
  EXPECT_EQ(m.entries[0].quant_mode, DeployMode::fp32);
  EXPECT_EQ(m.entries[0].fp32, train_run + "/checkpoints/best.safetensors");
  EXPECT_EQ(m.entries[0].sha256, sha_of(m.entries[0].fp32));
  EXPECT_DOUBLE_EQ(m.entries[0].budget.max_pck20_drop, 0.5);
  const RegistryEntry& q = m.entries[1];
  EXPECT_EQ(q.name, "nano");  // the run's config name
  EXPECT_EQ(q.quant_mode, DeployMode::qat);
  EXPECT_EQ(q.fp32, train_run + "/checkpoints/best.safetensors");  // qat.init_from
  EXPECT_EQ(q.int8, csq);
  EXPECT_EQ(q.sha256, sha_of(csq));
  EXPECT_DOUBLE_EQ(q.budget.max_pck20_drop, 100.0);
  EXPECT_FALSE(q.git_sha.empty());
  EXPECT_FALSE(q.created.empty());

  // The same name again: refused without --replace, nothing written; replaced with it.
  const std::string before = read_text_file(reg);
  r = run_csipose({"export", "--run", qat_run, "--format", "csq", "--out", tmp.file("ship8b"), "--registry", reg});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("an entry named \"nano\" exists"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--replace"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(tmp.file("ship8b")));
  EXPECT_EQ(read_text_file(reg), before);
  // A QAT run does not ship as safetensors.
  r = run_csipose({"export", "--run", qat_run, "--format", "safetensors", "--out", tmp.file("x"), "--registry", reg});
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("is a QAT run: ship it with --format csq"), std::string::npos) << r.output;

  // The exported registry gates: the QAT entry's int8 numbers are its run report's.
  r = run_csipose({"gate", "--registry", reg, "--json", tmp.file("g.json")});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const Json row = row_of(read_json(tmp.file("g.json")), "nano");
  EXPECT_EQ(row.at("shipped_metrics").at("clean").dump(), qat_report.at("quantization").at("int8").at("clean").dump());
  EXPECT_EQ(row.at("fp32_metrics").at("clean").dump(), qat_report.at("quantization").at("fp32").at("clean").dump());

  r = run_csipose({"export", "--run", qat_run, "--format", "csq", "--out", tmp.file("ship8b"), "--registry", reg,
                   "--replace", "--budget", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  m = ModelRegistry::load(reg);
  ASSERT_EQ(m.entries.size(), 2u);
  EXPECT_EQ(m.entries[1].int8, tmp.file("ship8b/model.csq"));
  EXPECT_DOUBLE_EQ(m.entries[1].budget.max_pck20_drop, 2.0);

  // A sweep run directory (runs/<id>/{train,qat}) resolves to its qat/ run for csq, train/ otherwise.
  const std::string sweep_run = tmp.file("sweep/runs/abc");
  fs::create_directories(sweep_run);
  fs::copy(train_run, sweep_run + "/train", fs::copy_options::recursive);
  fs::copy(qat_run, sweep_run + "/qat", fs::copy_options::recursive);
  testing::write_file(sweep_run + "/config.yaml", read_text_file(train_run + "/config.yaml"));
  EXPECT_EQ(resolve_export_run(sweep_run, "csq"), sweep_run + "/qat");
  EXPECT_EQ(resolve_export_run(sweep_run, "safetensors"), sweep_run + "/train");
  // A missing model.csq is converted from the best checkpoint, as `csipose convert` does.
  fs::remove(sweep_run + "/qat/model.csq");
  ExportOptions o;
  o.run = sweep_run;
  o.out = tmp.file("ship_sweep");
  o.registry = reg;
  o.name = "from_sweep";
  const ExportResult x = export_run(o);
  EXPECT_EQ(x.run_dir, sweep_run + "/qat");
  EXPECT_EQ(load_int8_checkpoint(x.artefact).metadata.at("source"), sweep_run + "/qat/checkpoints/best.safetensors");
  EXPECT_EQ(ModelRegistry::load(reg).entries.size(), 3u);
}

}  // namespace
}  // namespace csipose
