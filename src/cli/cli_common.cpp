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
      {"train", "train a model from an experiment YAML into a run directory; --resume continues exactly", train},
      {"eval", "evaluate a checkpoint on a split under the locked metric (cpu or cuda), write result JSON", evaluate},
      {"train-bench", "time training steps of a model preset on resident synthetic data (samples/s as JSON)", train_bench},
      {"infer-bench", "time forwards of an fp32 checkpoint or int8 .csq (p50 / p90 ms, samples/s, peak RSS as JSON)", infer_bench},
      {"qat", "quantization-aware training from a config with a qat: section (fp32 warm start -> QAT -> int8 report)", qat},
      {"convert", "convert a QAT checkpoint to an int8 model (.csq) and evaluate fake-quant vs int8", convert},
      {"ptq", "post-training quantization (static with calibration, or dynamic), evaluated as fake-quant vs fp32", ptq},
      {"sweep", "run a resumable sweep (axes x stages) from a sweep YAML: --workers N, --resume DIR", sweep},
      {"sweep report", "results CSV, markdown Pareto table and SVG accuracy-vs-size plot of a sweep directory", sweep_report},
      {"sweep slurm", "--emit: write the sbatch job-array script whose tasks are workers of one sweep", sweep_slurm},
      {"predict", "run a checkpoint over an input .npy in batches (cpu or cuda)", predict},
      {"gate", "check every registry entry's shipped model against its fp32 checkpoint and budget (exit 3 on a miss)", gate},
      {"export", "ship a train / qat run as .safetensors / .csq with a model card, and add it to the registry", export_run},
  };
  return table;
}

}  // namespace csipose::cli
