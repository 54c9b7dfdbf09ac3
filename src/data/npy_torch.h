#pragma once
// Bridges NpyArray and torch::Tensor without copies where possible.
#include <torch/types.h>

#include <string>

#include "data/npy.h"

namespace csipose {

torch::ScalarType to_scalar_type(DType d);
DType to_dtype(torch::ScalarType t);  ///< throws for types npy files here do not carry

/// A CPU tensor viewing the array's memory (zero-copy); the tensor keeps the buffer alive.
torch::Tensor to_tensor(const NpyArray& a);
/// read_npy + to_tensor.
torch::Tensor load_npy(const std::string& path, NpyLoad mode = NpyLoad::read);
/// Saves any tensor (moved to CPU, made contiguous) atomically.
void save_npy(const std::string& path, const torch::Tensor& t);

}  // namespace csipose
