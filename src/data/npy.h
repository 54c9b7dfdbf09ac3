#pragma once
// NumPy .npy / .npz files, our own reader and writer (no LibTorch here; see npy_torch.h).
// Supported: format versions 1.0/2.0/3.0, little-endian (or byte-order-free) dtypes
// float32 <f4, float64 <f8, int32 <i4, int64 <i8, uint8 |u1, bool |b1; C order only.
// Reading can memory-map: the mapping is private (copy-on-write), so callers may zero-fill
// corrupted regions in memory without touching the file. .npz: reading of stored and (with zlib)
// deflated members; writing of stored members (what np.savez writes).
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace csipose {

enum class DType { float32, float64, int32, int64, uint8, boolean };

size_t dtype_size(DType d);
/// The numpy descr string: "<f4", "<f8", "<i4", "<i8", "|u1", "|b1".
const char* dtype_descr(DType d);
/// "float32", "float64", "int32", "int64", "uint8", "bool".
const char* to_string(DType d);

struct NpyArray {
  DType dtype = DType::float32;
  std::vector<int64_t> shape;
  uint8_t* data = nullptr;          ///< first element; writable (owned buffer or private mapping)
  std::shared_ptr<void> owner;      ///< keeps the buffer / mapping alive
  bool mapped = false;

  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  std::string shape_string() const;  ///< "(3, 540, 20)"
  template <typename T>
  T* as() { return reinterpret_cast<T*>(data); }
  template <typename T>
  const T* as() const { return reinterpret_cast<const T*>(data); }
};

enum class NpyLoad { read, mmap };

/// Reads a .npy file. Errors name the file and say what is wrong: not an npy file, unsupported
/// version, big-endian or unsupported dtype, fortran order, truncated data (expected vs actual bytes).
NpyArray read_npy(const std::string& path, NpyLoad mode = NpyLoad::read);
/// Parses an in-memory .npy image (an npz member); `name` is used in errors.
NpyArray parse_npy(const uint8_t* bytes, size_t size, const std::string& name);
/// Header only (dtype, shape) without reading the data.
NpyArray read_npy_header(const std::string& path);

/// Writes a C-order array atomically (temp + rename), header version 1.0.
void write_npy(const std::string& path, DType dtype, const std::vector<int64_t>& shape, const void* data);

/// Reads every member of an .npz; keys are member names without ".npy".
std::map<std::string, NpyArray> read_npz(const std::string& path);

struct NpzMember {
  std::string name;  ///< without ".npy"
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};
/// Writes an uncompressed .npz (ZIP, stored, CRC-32) atomically; np.load reads it.
void write_npz(const std::string& path, const std::vector<NpzMember>& members);

/// Throws "<what>: expected dtype X, got Y" / "<what>: expected N dims, got shape (..)".
void expect_dtype(const NpyArray& a, DType d, const std::string& what);
void expect_ndim(const NpyArray& a, size_t ndim, const std::string& what);

}  // namespace csipose
