// csipose models | weights init/export/import | predict
#include <torch/torch.h>

#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "cli/options.h"
#include "common/atomic_file.h"
#include "common/device.h"
#include "common/json.h"
#include "data/npy_torch.h"
#include "models/checkpoint.h"
#include "models/registry.h"
#include "train/trainer.h"

namespace csipose::cli {
namespace {

std::string shape_text(const std::vector<int64_t>& s) {
  std::string t = "(N";
  for (int64_t d : s) t += ", " + std::to_string(d);
  return t + ")";
}

int64_t buffer_bytes(const torch::nn::Module& m) {
  int64_t n = 0;
  for (const auto& b : m.buffers()) n += b.numel() * static_cast<int64_t>(b.element_size());
  return n;
}

}  // namespace

int models(const Args& args) {
  po::options_description desc("options");
  bool json = false;
  std::string yaml_of;
  desc.add_options()
      ("json", po::bool_switch(&json), "print JSON instead of a table")
      ("yaml", po::value(&yaml_of)->default_value(""), "print the full model YAML of a preset or model file");
  po::variables_map vm;
  if (!parse_options("models", "[--json] [--yaml PRESET|FILE]", desc, args, vm)) return 0;
  if (!yaml_of.empty()) {
    std::printf("%s", resolve_model_config(yaml_of).to_yaml().c_str());
    return 0;
  }
  Json list = Json::array();
  if (!json)
    std::printf("%-15s %-17s %11s %12s %-18s %-12s %14s\n", "preset", "family", "params", "fp32 bytes", "input", "output",
                "MACs/sample");
  for (const auto& name : model_preset_names()) {
    const ModelConfig cfg = model_preset(name);
    const auto net = make_model(cfg);
    const int64_t params = count_parameters(*net);
    const int64_t bytes = params * 4 + buffer_bytes(*net);
    const std::string out = "(N, " + std::to_string(net->num_keypoints()) + ", 2)";
    if (json) {
      list.push(Json::object()
                    .set("preset", name)
                    .set("family", net->family())
                    .set("parameters", params)
                    .set("fp32_bytes", bytes)
                    .set("input_shape", Json(net->input_shape()))
                    .set("output_shape", Json(std::vector<int64_t>{net->num_keypoints(), 2}))
                    .set("macs_per_sample", net->macs_per_sample()));
    } else {
      std::printf("%-15s %-17s %11lld %12lld %-18s %-12s %14lld\n", name.c_str(), net->family().c_str(),
                  static_cast<long long>(params), static_cast<long long>(bytes), shape_text(net->input_shape()).c_str(),
                  out.c_str(), static_cast<long long>(net->macs_per_sample()));
    }
  }
  if (json) std::printf("%s\n", list.dump(2).c_str());
  else std::printf("fp32 bytes = 4 x parameters + BatchNorm running statistics (what a state dict stores).\n");
  return 0;
}

int weights(const Args& args) {
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("usage: csipose weights init|export|import [options]   (csipose weights <action> --help)\n"
                "  init    a randomly initialized checkpoint of a preset or model YAML\n"
                "  export  a checkpoint's weights as safetensors with PyTorch parameter names\n"
                "  import  PyTorch-named safetensors weights into a checkpoint\n");
    return args.empty() ? 2 : 0;
  }
  const std::string action = args[0];
  const Args rest(args.begin() + 1, args.end());
  po::options_description desc("options");
  std::string model, checkpoint, out, weights_path;
  std::vector<std::string> sets;
  int64_t seed = 0;
  po::variables_map vm;
  if (action == "init") {
    desc.add_options()
        ("model", po::value(&model)->required(), "preset name (csipose models) or model YAML file")
        ("set", po::value(&sets)->composing(), "override a key of the model YAML file")
        ("seed", po::value(&seed)->default_value(0), "torch seed for the random initialization")
        ("out", po::value(&out)->required(), "checkpoint to write");
    if (!parse_options("weights init", "--model PRESET|FILE --out CKPT [--seed S]", desc, rest, vm)) return 0;
    const ModelConfig cfg = resolve_model_config(model, sets);
    torch::manual_seed(static_cast<uint64_t>(seed));
    auto net = make_model(cfg);
    save_checkpoint(out, cfg, *net, {{"seed", std::to_string(seed)}});
    std::printf("wrote %s: %s, %lld parameters\n", out.c_str(), cfg.preset.empty() ? to_string(cfg.type) : cfg.preset.c_str(),
                static_cast<long long>(count_parameters(*net)));
  } else if (action == "export") {
    desc.add_options()
        ("checkpoint", po::value(&checkpoint)->required(), "csipose checkpoint")
        ("out", po::value(&out)->required(), "safetensors file with PyTorch parameter names");
    if (!parse_options("weights export", "--checkpoint CKPT --out W.safetensors", desc, rest, vm)) return 0;
    const Checkpoint ck = load_checkpoint(checkpoint);
    export_weights(out, ck.config, *ck.model);
    std::printf("wrote %s (load in PyTorch with safetensors.torch.load_file)\n", out.c_str());
  } else if (action == "import") {
    desc.add_options()
        ("model", po::value(&model)->required(), "preset name or model YAML file the weights belong to")
        ("set", po::value(&sets)->composing(), "override a key of the model YAML file")
        ("weights", po::value(&weights_path)->required(), "safetensors file with PyTorch names")
        ("out", po::value(&out)->required(), "checkpoint to write");
    if (!parse_options("weights import", "--model PRESET|FILE --weights W.safetensors --out CKPT", desc, rest, vm)) return 0;
    const ModelConfig cfg = resolve_model_config(model, sets);
    auto net = import_weights(weights_path, cfg);
    save_checkpoint(out, cfg, *net, {{"imported_from", weights_path}});
    std::printf("wrote %s from %s\n", out.c_str(), weights_path.c_str());
  } else {
    fail("weights: unknown action \"", action, "\"; expected one of: init, export, import");
  }
  return 0;
}

int predict(const Args& args) {
  po::options_description desc("options");
  std::string checkpoint, input, output, device_text;
  int64_t batch = 256;
  desc.add_options()
      ("checkpoint", po::value(&checkpoint)->required(), "csipose checkpoint, QAT checkpoint or int8 model (.csq)")
      ("input", po::value(&input)->required(), "input .npy: (N, 540, 20) for WiFlow, (N, 3, 114, 10) for pose transformers")
      ("output", po::value(&output)->required(), "output .npy (N, J, 2) float32")
      ("device", po::value(&device_text)->default_value("auto"), "cpu | cuda | cuda:N | auto")
      ("batch-size", po::value(&batch)->default_value(256), "samples per forward pass");
  po::variables_map vm;
  if (!parse_options("predict", "--checkpoint CKPT --input X.npy --output Y.npy [--device cpu|cuda]", desc, args, vm)) return 0;
  CSIPOSE_CHECK(batch > 0, "--batch-size must be > 0, got ", batch);
  const c10::Device device = parse_device(device_text);
  // The evaluation weights (EMA for a training checkpoint), a QAT checkpoint as its fake-quant
  // model, or an int8 model (.csq).
  Checkpoint ck;
  ck.model = load_eval_model(checkpoint, &ck.config, &ck.metadata);
  torch::Tensor x = load_npy(input, NpyLoad::mmap);
  const auto want = ck.model->input_shape();
  bool ok = x.dim() == static_cast<int64_t>(want.size()) + 1;
  for (size_t i = 0; ok && i < want.size(); ++i) ok = x.size(static_cast<int64_t>(i) + 1) == want[i];
  CSIPOSE_CHECK(ok, "--input ", input, ": shape ", x.sizes(), " does not fit the model; expected ", shape_text(want));
  CSIPOSE_CHECK(x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64, "--input ", input,
                ": expected float32 or float64, got ", x.scalar_type());
  ck.model->to(device);
  ck.model->eval();
  // A freshly loaded model that is only run forward: inference mode skips autograd's bookkeeping
  // (version counters, grad metadata) that NoGradGuard still pays per op.
  c10::InferenceMode inference;
  std::vector<torch::Tensor> outs;
  for (int64_t s = 0; s < x.size(0); s += batch) {
    auto xb = x.slice(0, s, std::min(x.size(0), s + batch)).to(torch::kFloat32);
    auto bad = (~torch::isfinite(xb)).flatten(1).any(1).nonzero();
    CSIPOSE_CHECK(bad.numel() == 0, "--input ", input, ": sample ", s + (bad.numel() ? bad[0].item<int64_t>() : 0),
                  " has non-finite values (NaN/inf); clean or zero-fill corrupted windows first");
    outs.push_back(ck.model->forward(xb.to(device)).to(torch::kCPU));
  }
  auto y = outs.empty() ? torch::zeros({0, ck.model->num_keypoints(), 2}) : torch::cat(outs);
  save_npy(output, y.contiguous());
  std::printf("wrote %s: %lld predictions on %s\n", output.c_str(), static_cast<long long>(y.size(0)),
              device.str().c_str());
  return 0;
}

}  // namespace csipose::cli
