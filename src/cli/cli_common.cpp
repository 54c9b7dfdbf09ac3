#include "cli/commands.h"

namespace csipose::cli {

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"data synth", "generate a synthetic CSI pose dataset (WiFlow or MM-Fi layout) from a YAML config", data_synth},
      {"data inspect", "print sizes, splits, corrupted counts and value ranges of a dataset", data_inspect},
      {"score", "score a prediction .npy against ground truth under the locked PCK/MPJPE metric", score},
      {"baseline", "fit and score the mean-pose and ridge-regression baselines on a dataset", baseline},
      {"models", "list the model presets: parameters, bytes, shapes, MACs per sample", models},
      {"weights", "init | export | import: checkpoints and PyTorch-named safetensors weights", weights},
      {"predict", "run a checkpoint over an input .npy in batches (cpu or cuda)", predict},
  };
  return table;
}

}  // namespace csipose::cli
