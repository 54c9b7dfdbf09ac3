#include "models/safetensors.h"

#include <torch/utils.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>

#include "common/atomic_file.h"
#include "common/check.h"
#include "common/json.h"

namespace csipose {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; this reader/writer copies host bytes as they are");

namespace {

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  int64_t size;  // bytes per element
  int rank;      // position in the Rust library's Dtype enum (its sort order); higher = larger alignment
};

constexpr DtypeInfo kDtypes[] = {
    {"BOOL", torch::kBool, 1, 0},    {"U8", torch::kUInt8, 1, 1},   {"I8", torch::kInt8, 1, 2},
    {"I16", torch::kInt16, 2, 3},    {"F16", torch::kHalf, 2, 4},   {"BF16", torch::kBFloat16, 2, 5},
    {"I32", torch::kInt32, 4, 6},    {"F32", torch::kFloat32, 4, 7}, {"F64", torch::kFloat64, 8, 8},
    {"I64", torch::kInt64, 8, 9},
};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo& dtype_info(torch::ScalarType type) {
  for (const auto& d : kDtypes)
    if (type == d.type) return d;
  std::string names;
  for (const auto& d : kDtypes) names += (names.empty() ? "" : ", ") + std::string(d.name);
  fail("safetensors: unsupported dtype ", c10::toString(type), "; supported: ", names);
}

std::string shape_text(torch::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// ---- writing ----------------------------------------------------------------------------------

struct Entry {
  std::string name;
  torch::Tensor data;  // contiguous CPU
  const DtypeInfo* dtype;
};

/// Validates names and dtypes, moves tensors to the CPU, and orders them as the Python library does.
std::vector<Entry> prepare(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<Entry> entries;
  std::set<std::string> seen;
  for (const auto& [name, tensor] : tensors) {
    CSIPOSE_CHECK(!name.empty(), "safetensors: empty tensor name");
    CSIPOSE_CHECK(name != "__metadata__", "safetensors: \"__metadata__\" is reserved and cannot name a tensor");
    CSIPOSE_CHECK(seen.insert(name).second, "safetensors: duplicate tensor name \"", name, "\"");
    CSIPOSE_CHECK(tensor.defined(), "safetensors: tensor \"", name, "\" is undefined");
    const DtypeInfo& d = dtype_info(tensor.scalar_type());
    entries.push_back({name, tensor.detach().to(torch::kCPU).contiguous(), &d});
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    if (a.dtype->rank != b.dtype->rank) return a.dtype->rank > b.dtype->rank;
    return a.name < b.name;
  });
  return entries;
}

/// Compact JSON header (as serde_json writes it), padded with spaces to a multiple of 8 bytes.
std::string make_header(const std::vector<Entry>& entries, const std::map<std::string, std::string>& metadata) {
  std::string h = "{";
  if (!metadata.empty()) {
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      h += (first ? "" : ",") + json_quote(k) + ":" + json_quote(v);
      first = false;
    }
    h += "}";
  }
  int64_t offset = 0;
  for (const auto& e : entries) {
    if (h.size() > 1) h += ",";
    const int64_t nbytes = e.data.numel() * e.dtype->size;
    h += json_quote(e.name) + ":{\"dtype\":\"" + e.dtype->name + "\",\"shape\":[";
    for (int64_t i = 0; i < e.data.dim(); ++i) h += (i ? "," : "") + std::to_string(e.data.size(i));
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + nbytes) + "]}";
    offset += nbytes;
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

void write_all(std::ostream& out, const std::vector<Entry>& entries, const std::string& header) {
  const uint64_t n = header.size();
  char len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  out.write(len, 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  for (const auto& e : entries) {
    const int64_t nbytes = e.data.numel() * e.dtype->size;
    if (nbytes > 0) out.write(static_cast<const char*>(e.data.data_ptr()), static_cast<std::streamsize>(nbytes));
  }
}

// ---- reading ----------------------------------------------------------------------------------

/// The keys of the top-level object of valid JSON text, repeats included (Json::parse keeps only
/// the last value of a repeated key, which would hide a duplicate tensor name).
std::vector<std::string> top_level_keys(const std::string& s) {
  std::vector<std::string> keys;
  int depth = 0;
  bool expect_key = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (c == '"') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != '"') j += (s[j] == '\\') ? 2 : 1;
      if (depth == 1 && expect_key) {
        keys.push_back(Json::parse(s.substr(i, j - i + 1)).as_string());
        expect_key = false;
      }
      i = j;
    } else if (c == '{' || c == '[') {
      ++depth;
      expect_key = (c == '{' && depth == 1);
    } else if (c == '}' || c == ']') {
      --depth;
    } else if (c == ',' && depth == 1) {
      expect_key = true;
    }
  }
  return keys;
}

struct HeaderEntry {
  std::string name;
  const DtypeInfo* dtype;
  std::vector<int64_t> shape;
  int64_t begin, end;  // data_offsets
};

}  // namespace

std::string safetensors_dtype_name(torch::ScalarType dtype) { return dtype_info(dtype).name; }

std::string serialize_safetensors(const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  const auto entries = prepare(tensors);
  std::ostringstream out;
  write_all(out, entries, make_header(entries, metadata));
  return out.str();
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  const auto entries = prepare(tensors);
  const std::string header = make_header(entries, metadata);
  write_file_atomic(path, [&](std::ostream& out) { write_all(out, entries, header); });
}

SafetensorsFile load_safetensors(const std::string& path) { return parse_safetensors(read_text_file(path), path); }

SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& source) {
  auto bad = [&](const auto&... parts) { fail(source, ": safetensors: ", parts...); };
  constexpr uint64_t kMaxHeader = 100'000'000;  // the Python/Rust library's limit
  const uint64_t size = bytes.size();
  if (size < 8) bad("file is ", size, " bytes, too short to hold the 8-byte header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
  if (n > kMaxHeader) bad("header length ", n, " is over the ", kMaxHeader, "-byte limit");
  if (n > size - 8) bad("header length ", n, " runs past the end of the file (", size, " bytes; truncated?)");
  const std::string header_text = bytes.substr(8, n);
  Json header;
  try {
    header = Json::parse(header_text);
  } catch (const Error& e) {
    bad("header is not valid JSON (", e.what(), ")");
  }
  if (!header.is_object()) bad("header is not a JSON object");
  {
    std::set<std::string> seen;
    for (const auto& key : top_level_keys(header_text))
      if (!seen.insert(key).second) bad("duplicate entry \"", key, "\" in the header");
  }

  const int64_t data_start = static_cast<int64_t>(8 + n);
  const int64_t data_size = static_cast<int64_t>(size) - data_start;
  SafetensorsFile file;
  std::vector<HeaderEntry> entries;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (!info.is_object()) bad("\"__metadata__\" is not an object of strings");
      for (const auto& [k, v] : info.items()) {
        if (!v.is_string()) bad("\"__metadata__\" value of \"", k, "\" is not a string");
        file.metadata[k] = v.as_string();
      }
      continue;
    }
    const std::string what = "tensor \"" + name + "\"";
    if (!info.is_object()) bad(what, ": entry is not an object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!info.contains(key)) bad(what, ": missing \"", key, "\"");
    if (!info.at("dtype").is_string()) bad(what, ": dtype is not a string");
    const DtypeInfo* dtype = find_dtype(info.at("dtype").as_string());
    if (dtype == nullptr) {
      std::string names;
      for (const auto& d : kDtypes) names += (names.empty() ? "" : ", ") + std::string(d.name);
      bad(what, ": unknown dtype \"", info.at("dtype").as_string(), "\"; supported: ", names);
    }
    const Json& shape_json = info.at("shape");
    if (!shape_json.is_array()) bad(what, ": shape is not a list");
    std::vector<int64_t> shape;
    int64_t numel = 1;
    for (const Json& s : shape_json.elements()) {
      if (!s.is_integer() || s.as_int() < 0)
        bad(what, ": shape ", shape_json.dump(), " has an entry that is not an integer >= 0");
      shape.push_back(s.as_int());
      if (numel != 0 && s.as_int() > std::numeric_limits<int64_t>::max() / 16 / numel)
        bad(what, ": shape ", shape_json.dump(), " is too large");
      numel *= s.as_int();
    }
    const Json& off = info.at("data_offsets");
    if (!off.is_array() || off.size() != 2 || !off.at(0).is_integer() || !off.at(1).is_integer() ||
        off.at(0).as_int() < 0 || off.at(1).as_int() < off.at(0).as_int())
      bad(what, ": data_offsets ", off.dump(), " is not [begin, end] with 0 <= begin <= end");
    const int64_t begin = off.at(0).as_int(), end = off.at(1).as_int();
    if (end > data_size)
      bad(what, ": data_offsets [", begin, ", ", end, "] run past the end of the data region (", data_size,
          " bytes; truncated file?)");
    if (numel * dtype->size != end - begin)
      bad(what, ": shape ", shape_text(shape), " of ", dtype->name, " needs ", numel * dtype->size,
          " bytes but data_offsets [", begin, ", ", end, "] span ", end - begin);
    entries.push_back({name, dtype, shape, begin, end});
  }

  // The tensors must tile the data region exactly: sorted by offset, each begins where the previous ends.
  std::sort(entries.begin(), entries.end(), [](const HeaderEntry& a, const HeaderEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  int64_t expected = 0;
  std::string previous;
  for (const auto& s : entries) {
    if (s.begin < expected)
      bad("tensor \"", s.name, "\" data_offsets [", s.begin, ", ", s.end, "] overlap tensor \"", previous,
          "\" (which ends at ", expected, ")");
    if (s.begin > expected)
      bad("gap in the data region: bytes [", expected, ", ", s.begin, ") before tensor \"", s.name,
          "\" belong to no tensor");
    expected = s.end;
    previous = s.name;
  }
  if (expected < data_size)
    bad(data_size - expected, " bytes after the last tensor (data ends at ", expected, " of ", data_size,
        ") belong to no tensor");

  for (const auto& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    if (e.end > e.begin)
      std::memcpy(t.data_ptr(), bytes.data() + data_start + e.begin, static_cast<size_t>(e.end - e.begin));
    file.tensors.emplace(e.name, std::move(t));
  }
  return file;
}

// ---- state dicts ------------------------------------------------------------------------------

namespace {
void collect_state(const torch::nn::Module& m, const std::string& prefix,
                   std::vector<std::pair<std::string, torch::Tensor>>& out) {
  for (const auto& p : m.named_parameters(/*recurse=*/false))
    if (p.value().defined()) out.emplace_back(prefix + p.key(), p.value().detach());
  for (const auto& b : m.named_buffers(/*recurse=*/false))
    if (b.value().defined()) out.emplace_back(prefix + b.key(), b.value().detach());
  for (const auto& c : m.named_children()) collect_state(*c.value(), prefix + c.key() + ".", out);
}
}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> state_dict(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  collect_state(module, "", out);
  return out;
}

void load_state_dict(torch::nn::Module& module, const std::map<std::string, torch::Tensor>& source, bool strict) {
  const auto targets = state_dict(module);
  std::vector<std::string> missing, unexpected, mismatched;
  std::set<std::string> known;
  for (const auto& [name, dest] : targets) {
    known.insert(name);
    const auto it = source.find(name);
    if (it == source.end()) {
      missing.push_back(name);
    } else if (!it->second.defined() || it->second.sizes() != dest.sizes()) {
      mismatched.push_back(name + " expected " + shape_text(dest.sizes()) + " got " +
                           (it->second.defined() ? shape_text(it->second.sizes()) : std::string("undefined")));
    }
  }
  for (const auto& [name, tensor] : source)
    if (!known.count(name)) unexpected.push_back(name);

  std::string problems;
  auto add = [&](const char* label, const std::vector<std::string>& items) {
    if (items.empty()) return;
    problems += (problems.empty() ? "" : "; ") + std::string(label) + ": ";
    for (size_t i = 0; i < items.size(); ++i) problems += (i ? ", " : "") + items[i];
  };
  if (strict) add("missing", missing);
  if (strict) add("unexpected", unexpected);
  add("shape mismatch", mismatched);
  if (!problems.empty()) fail("load_state_dict: ", problems);

  torch::NoGradGuard no_grad;
  for (const auto& [name, dest] : targets) {
    const auto it = source.find(name);
    if (it != source.end()) dest.copy_(it->second);
  }
}

}  // namespace csipose
