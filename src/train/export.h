#pragma once
// `csipose export`: ships a finished run as one artefact plus a model card, and registers it.
//
//   run directory of `csipose train`  --format safetensors -> DIR/model.safetensors (PyTorch-named
//                                        fp32 weights of checkpoints/best, eval weights)
//   run directory of `csipose qat`    --format csq         -> DIR/model.csq (the run's model.csq,
//                                        or converted from checkpoints/best as `convert` does)
//   sweep run directory runs/<id>     csq: its qat/ run; safetensors: its train/ run
//
// plus DIR/model_card.json and DIR/model_card.md (architecture, sizes, policy, the run's test and
// val metrics with their MetricSpec, sha256 of the artefact, git sha, how to reproduce it), and a
// registry entry (models/artifact_registry.h): fp32 = the QAT warm start (qat.init_from) or the
// run's best checkpoint, quant_mode qat / fp32, the budget, sha256s, git sha, time.
#include <string>

#include "common/json.h"
#include "models/artifact_registry.h"

namespace csipose {

struct ExportOptions {
  std::string run;                               ///< run directory or sweep run directory
  std::string format = "csq";                    ///< csq | safetensors
  std::string out;                               ///< output directory
  std::string registry = "models/registry.yaml"; ///< registry to add the entry to
  std::string name;                              ///< entry name ("" = the run's config name)
  double budget = 0.5;                           ///< max test/clean PCK@20 drop, points
  bool replace = false;                          ///< replace an entry of the same name
};

struct ExportResult {
  std::string run_dir;   ///< the csipose run directory exported (inside a sweep run: train/ or qat/)
  std::string artefact;  ///< DIR/model.csq or DIR/model.safetensors
  std::string sha256;    ///< of the artefact
  RegistryEntry entry;   ///< as written to the registry
  Json card;             ///< model_card.json
};

/// The run directory to export: `run` itself, or `run`/qat (csq) or `run`/train (safetensors) for
/// a sweep run directory. Throws naming what is missing.
std::string resolve_export_run(const std::string& run, const std::string& format);

/// Writes the artefact and the model card atomically, then the registry (atomically, other entries
/// preserved). A same-named entry without `replace` is refused before anything is written.
ExportResult export_run(const ExportOptions& options);

}  // namespace csipose
