#pragma once
// Content hashes for run metadata and file integrity: SHA-256 (FIPS 180-4) for payloads that must
// be verified, FNV-1a 64 for cheap fingerprints (data order, config identity within a run).
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace csipose {

/// Lower-case hex SHA-256 of the bytes.
std::string sha256_hex(const void* data, size_t size);
inline std::string sha256_hex(const std::string& bytes) { return sha256_hex(bytes.data(), bytes.size()); }

/// FNV-1a 64-bit, continuing from `h`.
uint64_t fnv1a64(const void* data, size_t size, uint64_t h = 14695981039346656037ull);
/// Hex of fnv1a64 over the int64 values (little-endian bytes).
std::string fingerprint(const std::vector<int64_t>& values);

}  // namespace csipose
