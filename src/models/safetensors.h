#pragma once
// safetensors, read and written by our own code (no dependency), and module state dicts.
//
// Format (https://github.com/huggingface/safetensors):
//   8 bytes  N, unsigned little-endian
//   N bytes  JSON header: {"__metadata__": {str: str} (optional),
//                          "<name>": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...}
//            padded with spaces to a multiple of 8 bytes
//   rest     the tensors' raw little-endian bytes; offsets are relative to the start of this region
//            and tile it exactly (no gaps, no overlap, nothing after the last tensor).
// dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL.
//
// The writer lays tensors out as the Python library does (by dtype alignment, largest first, then
// by name; "__metadata__" first; compact JSON), so a state dict of one dtype is sorted by name.
#include <torch/nn/module.h>
#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace csipose {

struct SafetensorsFile {
  std::map<std::string, torch::Tensor> tensors;  ///< by name; contiguous CPU tensors
  std::map<std::string, std::string> metadata;   ///< the "__metadata__" object ({} when absent)
};

/// Writes `tensors` (any device; copied to the CPU) atomically to `path`. Throws csipose::Error for
/// duplicate or empty names, an unsupported dtype, or an I/O failure.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// The bytes save_safetensors writes.
std::string serialize_safetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

/// Reads and validates `path`. Errors are one line "<path>: safetensors: <what is wrong>".
SafetensorsFile load_safetensors(const std::string& path);

/// The same from bytes; `source` names them in errors.
SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& source);

/// The format's name of a dtype ("F32"); throws for dtypes safetensors-in-csipose does not support.
std::string safetensors_dtype_name(torch::ScalarType dtype);

// ---- state dicts ------------------------------------------------------------------------------

/// PyTorch's `module.state_dict()`: for each module (depth first, in registration order) its own
/// parameters then its buffers, with dotted names. Tensors are detached and share storage with
/// the module. LibTorch has no non-persistent buffers: state that must stay out of checkpoints is
/// kept as a plain member, not a registered buffer.
std::vector<std::pair<std::string, torch::Tensor>> state_dict(const torch::nn::Module& module);

/// PyTorch's `module.load_state_dict(source, strict)`: copies each entry into the parameter or
/// buffer of that name (converting dtype and device as Tensor::copy_ does). Nothing is copied when
/// anything is wrong: a shape mismatch always throws; with `strict`, missing and unexpected names
/// throw too. The one-line message lists them all:
///   "load_state_dict: missing: a, b; unexpected: c; shape mismatch: d expected [64, 342] got [64, 340]"
void load_state_dict(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& source, bool strict = true);

}  // namespace csipose
