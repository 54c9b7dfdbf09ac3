#include "data/npy_torch.h"

#include <torch/torch.h>

#include "common/check.h"

namespace csipose {

torch::ScalarType to_scalar_type(DType d) {
  switch (d) {
    case DType::float32: return torch::kFloat32;
    case DType::float64: return torch::kFloat64;
    case DType::int32: return torch::kInt32;
    case DType::int64: return torch::kInt64;
    case DType::uint8: return torch::kUInt8;
    case DType::boolean: return torch::kBool;
  }
  fail("invalid DType value ", static_cast<int>(d));
}

DType to_dtype(torch::ScalarType t) {
  switch (t) {
    case torch::kFloat32: return DType::float32;
    case torch::kFloat64: return DType::float64;
    case torch::kInt32: return DType::int32;
    case torch::kInt64: return DType::int64;
    case torch::kUInt8: return DType::uint8;
    case torch::kBool: return DType::boolean;
    default:
      fail("tensor dtype ", c10::toString(t), " has no .npy mapping here; expected one of float32, "
           "float64, int32, int64, uint8, bool (convert with .to(...) first)");
  }
}

torch::Tensor to_tensor(const NpyArray& a) {
  const auto options = torch::TensorOptions().dtype(to_scalar_type(a.dtype)).device(torch::kCPU);
  if (a.numel() == 0) return torch::empty(a.shape, options);
  CSIPOSE_CHECK(a.data != nullptr, "to_tensor: array of shape ", a.shape_string(),
                " has no data (a header-only read?)");
  // The deleter holds a reference to the buffer / mapping, so the tensor keeps it alive.
  std::shared_ptr<void> owner = a.owner;
  return torch::from_blob(a.data, a.shape, [owner](void*) mutable { owner.reset(); }, options);
}

torch::Tensor load_npy(const std::string& path, NpyLoad mode) { return to_tensor(read_npy(path, mode)); }

void save_npy(const std::string& path, const torch::Tensor& t) {
  const DType dtype = to_dtype(t.scalar_type());
  const torch::Tensor c = t.to(torch::kCPU).contiguous();
  write_npy(path, dtype, c.sizes().vec(), c.data_ptr());
}

}  // namespace csipose
