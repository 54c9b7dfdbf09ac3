// csipose gate | export: the model registry (models/registry.yaml). `gate` checks every shipped
// model against its fp32 checkpoint and budget (exit 3 when a budget is exceeded); `export` ships a
// run as an artefact with a model card and registers it. docs/registry.md.
#include <cstdio>

#include "cli/commands.h"
#include "cli/options.h"
#include "common/atomic_file.h"
#include "models/artifact_registry.h"
#include "train/export.h"
#include "train/gate.h"

namespace csipose::cli {

int gate(const Args& args) {
  po::options_description desc("options");
  std::string registry, json;
  std::vector<std::string> only;
  GateOptions opt;
  desc.add_options()
      ("registry", po::value(&registry)->default_value("models/registry.yaml"), "registry file")
      ("only", po::value(&only)->multitoken(), "gate only these entries (names)")
      ("batch-size", po::value(&opt.batch_size)->default_value(256), "evaluation batch size")
      ("latency-iters", po::value(&opt.latency_iters)->default_value(50),
       "timed batch-1 CPU forwards (median) for entries with budget.max_latency_ms")
      ("latency-warmup", po::value(&opt.latency_warmup)->default_value(5), "untimed forwards before them")
      ("json", po::value(&json)->default_value(""), "write the result JSON here");
  po::variables_map vm;
  if (!parse_options("gate", "[--registry F] [--only NAME ...] [--json OUT]   (exit 0: all pass, 3: an entry fails its budget or a file check, 1: error)",
                     desc, args, vm))
    return 0;
  CSIPOSE_CHECK(opt.batch_size > 0 && opt.latency_iters > 0 && opt.latency_warmup >= 0,
                "gate: needs --batch-size > 0, --latency-iters > 0, --latency-warmup >= 0");
  const ModelRegistry reg = ModelRegistry::load(registry);
  const std::vector<RegistryEntry> entries = reg.select(only, registry);
  CSIPOSE_CHECK(!entries.empty(), "gate: registry ", registry, " has no entries");
  const GateResult r = run_gate(entries, opt);
  std::printf("gate %s (%zu entries):\n%s", registry.c_str(), entries.size(), r.table().c_str());
  size_t failed = 0;
  for (const auto& row : r.rows) failed += row.pass() ? 0 : 1;
  std::printf("%s: %zu of %zu entries pass\n", r.pass() ? "PASS" : "FAIL", r.rows.size() - failed, r.rows.size());
  if (!json.empty()) {
    Json j = r.to_json();
    j.set("registry", registry);
    write_text_atomic(json, j.dump(2) + "\n");
  }
  return r.exit_code();
}

int export_run(const Args& args) {
  po::options_description desc("options");
  ExportOptions o;
  desc.add_options()
      ("run", po::value(&o.run)->required(), "run directory of csipose train / qat, or a sweep run directory (runs/<id>)")
      ("format", po::value(&o.format)->required(), "csq (a QAT run's int8 model) | safetensors (an fp32 run's weights)")
      ("out", po::value(&o.out)->required(), "output directory: the artefact, model_card.json, model_card.md")
      ("registry", po::value(&o.registry)->default_value("models/registry.yaml"), "registry to add the entry to")
      ("name", po::value(&o.name)->default_value(""), "entry name (default: the run's config name)")
      ("budget", po::value(&o.budget)->default_value(0.5), "max test/clean PCK@20 drop fp32 -> shipped, in points")
      ("replace", po::bool_switch(&o.replace), "replace an existing registry entry of the same name");
  po::variables_map vm;
  if (!parse_options("export", "--run R --format csq|safetensors --out DIR [--registry F] [--name N] [--budget P]", desc,
                     args, vm))
    return 0;
  const ExportResult r = export_run(o);
  std::printf("exported %s -> %s (sha256 %s)\nmodel card: %s/model_card.md\nregistry %s: entry \"%s\" (%s, budget %.2f points)\n",
              r.run_dir.c_str(), r.artefact.c_str(), r.sha256.c_str(), o.out.c_str(), o.registry.c_str(),
              r.entry.name.c_str(), to_string(r.entry.quant_mode), r.entry.budget.max_pck20_drop);
  std::printf("metric: %s\n", r.card.at("metrics").at("definition").as_string().c_str());
  return 0;
}

}  // namespace csipose::cli
