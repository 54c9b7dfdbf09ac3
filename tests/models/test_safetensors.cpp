// safetensors: round trips of every dtype (0-d and empty tensors included), the header layout of
// the Python library, files exchanged with PyTorch in both directions (Debian's /usr/bin/python3,
// the format written by hand with struct/json), one-line corruption errors, and state dicts.
#include "models/safetensors.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <fstream>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "common/check.h"
#include "testing.h"

namespace csipose::testing {

// ---- Debian's python with torch (shared with test_pose_transformer.cpp, same binary) ----------

constexpr const char* kPython = kSystemPython;

/// safetensors by hand, for the scripts: st_read(path) -> (tensors, metadata, header, header_len);
/// st_write(path, tensors, metadata) writes names in reverse order with "__metadata__" last and
/// json.dumps' default separators, to exercise a reader beyond what our writer produces.
const char* const kPythonSafetensors = R"PY(
import json, os, struct, sys
import torch
HERE = os.path.dirname(os.path.abspath(sys.argv[0]))
DT = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
      'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8,
      'U8': torch.uint8, 'BOOL': torch.bool}
NAME = {v: k for k, v in DT.items()}

def st_read(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    header = json.loads(b[8:8 + n])
    meta = dict(header.get('__metadata__', {}))
    out = {}
    for k, v in header.items():
        if k == '__metadata__':
            continue
        s, e = v['data_offsets']
        raw = bytearray(b[8 + n + s:8 + n + e])
        dt = DT[v['dtype']]
        t = torch.frombuffer(raw, dtype=dt) if len(raw) else torch.empty(0, dtype=dt)
        out[k] = t.reshape(v['shape'])
    return out, meta, header, n

def to_bytes(t):
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()

def st_write(path, tensors, meta=None):
    header, data = {}, b''
    for k in sorted(tensors, reverse=True):
        t = tensors[k]
        raw = to_bytes(t)
        header[k] = {'dtype': NAME[t.dtype], 'shape': list(t.shape), 'data_offsets': [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        header['__metadata__'] = meta
    hb = json.dumps(header).encode()
    hb += b' ' * ((8 - len(hb) % 8) % 8)
    open(path, 'wb').write(struct.pack('<Q', len(hb)) + hb + data)
)PY";

/// Runs `body` (after kPythonSafetensors) with Debian's python; exit code and output.
RunResult run_system_python(const TempDir& dir, const std::string& body) {
  const std::string script = dir.file("script.py");
  write_file(script, std::string(kPythonSafetensors) + body);
  const std::string cmd = std::string("env -u PYTHONPATH -u PYTHONHOME ") + kPython + " '" + script + "'";
  return testing::run_command(cmd);
}

}  // namespace csipose::testing

namespace csipose {
namespace {

using testing::TempDir;

using testing::error_of;

#define SKIP_WITHOUT_TORCH_PYTHON()           \
  if (!testing::system_python_has_torch()) \
  GTEST_SKIP() << testing::kPython << " cannot import torch; PyTorch cross-checks skipped"

/// One tensor per dtype with the same values kPythonPattern computes:
/// base = arange(-3, 3).reshape(2, 3); floats base * 0.25 (exact in every float type),
/// ints base * 7, U8 base + 250, BOOL base > 0; plus a 0-d F64, empty tensors and int64 extremes.
std::vector<std::pair<std::string, torch::Tensor>> pattern_tensors() {
  const torch::Tensor base = torch::arange(-3, 3, torch::kInt64).reshape({2, 3});
  std::vector<std::pair<std::string, torch::Tensor>> t = {
      {"f64", (base * 0.25).to(torch::kFloat64)},  {"f32", (base * 0.25).to(torch::kFloat32)},
      {"f16", (base * 0.25).to(torch::kHalf)},     {"bf16", (base * 0.25).to(torch::kBFloat16)},
      {"i64", base * 7},                           {"i32", (base * 7).to(torch::kInt32)},
      {"i16", (base * 7).to(torch::kInt16)},       {"i8", (base * 7).to(torch::kInt8)},
      {"u8", (base + 250).to(torch::kUInt8)},      {"bool", base > 0},
      {"scalar", torch::tensor(3.5, torch::kFloat64)},
      {"empty", torch::zeros({0, 4}, torch::kFloat32)},
      {"empty_mid", torch::zeros({2, 0, 3}, torch::kInt16)},
      {"i64_extremes", torch::tensor({int64_t{4611686018427387905}, int64_t{-4611686018427387907}}, torch::kInt64)},
  };
  return t;
}

constexpr const char* kPythonPattern = R"PY(
def pattern():
    base = torch.arange(-3, 3).reshape(2, 3)
    return {
        'f64': (base * 0.25).to(torch.float64), 'f32': (base * 0.25).to(torch.float32),
        'f16': (base * 0.25).to(torch.float16), 'bf16': (base * 0.25).to(torch.bfloat16),
        'i64': base * 7, 'i32': (base * 7).to(torch.int32), 'i16': (base * 7).to(torch.int16),
        'i8': (base * 7).to(torch.int8), 'u8': (base + 250).to(torch.uint8), 'bool': base > 0,
        'scalar': torch.tensor(3.5, dtype=torch.float64), 'empty': torch.zeros(0, 4),
        'empty_mid': torch.zeros(2, 0, 3, dtype=torch.int16),
        'i64_extremes': torch.tensor([2**62 + 1, -2**62 - 3]),
    }
)PY";

void expect_same_tensors(const std::vector<std::pair<std::string, torch::Tensor>>& expected,
                         const std::map<std::string, torch::Tensor>& got) {
  EXPECT_EQ(got.size(), expected.size());
  for (const auto& [name, want] : expected) {
    SCOPED_TRACE(name);
    const auto it = got.find(name);
    ASSERT_NE(it, got.end());
    EXPECT_EQ(it->second.scalar_type(), want.scalar_type());
    EXPECT_EQ(it->second.sizes(), want.sizes());
    EXPECT_TRUE(it->second.device().is_cpu());
    EXPECT_TRUE(torch::equal(it->second, want));
  }
}

/// An 8-byte little-endian length + header text + data.
std::string image(const std::string& header, const std::string& data) {
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xFF));
  return out + header + data;
}

// ---- round trips ------------------------------------------------------------------------------

TEST(Safetensors, RoundTripEveryDtypeScalarAndEmpty) {
  TempDir dir;
  const auto tensors = pattern_tensors();
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "quote \" and \xC3\xBC"}};
  save_safetensors(dir.file("all.safetensors"), tensors, metadata);
  const SafetensorsFile f = load_safetensors(dir.file("all.safetensors"));
  expect_same_tensors(tensors, f.tensors);
  EXPECT_EQ(f.metadata, metadata);
  EXPECT_EQ(f.tensors.at("scalar").dim(), 0);
}

TEST(Safetensors, NonContiguousTensorsAreWrittenByValue) {
  const torch::Tensor t = torch::arange(12, torch::kFloat32).reshape({3, 4}).t();  // (4, 3), strided
  const auto f = parse_safetensors(serialize_safetensors({{"t", t}}), "<mem>");
  EXPECT_TRUE(torch::equal(f.tensors.at("t"), t));
  EXPECT_TRUE(f.metadata.empty());
}

TEST(Safetensors, HeaderLayoutMatchesThePythonLibrary) {
  // safetensors (Rust) sorts by dtype alignment (largest first) then name, writes "__metadata__"
  // first and compact JSON padded with spaces to 8 bytes.
  const std::string bytes = serialize_safetensors(
      {{"b", torch::zeros({2}, torch::kFloat32)}, {"a", torch::zeros({1}, torch::kFloat32)},
       {"z", torch::zeros({1}, torch::kInt64)}, {"m", torch::zeros({3}, torch::kUInt8)}},
      {{"format", "pt"}});
  const std::string header =
      "{\"__metadata__\":{\"format\":\"pt\"},"
      "\"z\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,8]},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]},"
      "\"m\":{\"dtype\":\"U8\",\"shape\":[3],\"data_offsets\":[20,23]}}";
  const size_t padded = (header.size() + 7) / 8 * 8;
  ASSERT_EQ(bytes.size(), 8 + padded + 23);
  EXPECT_EQ(static_cast<unsigned char>(bytes[0]) + 256 * static_cast<unsigned char>(bytes[1]), padded);
  EXPECT_EQ(bytes.substr(8, header.size()), header);
  EXPECT_EQ(bytes.substr(8 + header.size(), padded - header.size()), std::string(padded - header.size(), ' '));
}

TEST(Safetensors, WriterRejectsBadInput) {
  TempDir dir;
  const std::string path = dir.file("x.safetensors");
  const torch::Tensor t = torch::zeros({2});
  EXPECT_NE(error_of([&] { save_safetensors(path, {{"a", t}, {"a", t}}); }).find("duplicate tensor name \"a\""),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_safetensors(path, {{"c", torch::zeros({2}, torch::kComplexFloat)}}); })
                .find("unsupported dtype"),
            std::string::npos);
  EXPECT_NE(error_of([&] { save_safetensors(path, {{"__metadata__", t}}); }).find("reserved"), std::string::npos);
  EXPECT_FALSE(std::ifstream(path).good());
}

// ---- PyTorch interoperability -----------------------------------------------------------------

TEST(Safetensors, ReadsAFileWrittenByPyTorch) {
  SKIP_WITHOUT_TORCH_PYTHON();
  TempDir dir;
  const std::string path = dir.file("py.safetensors");
  const auto r = testing::run_system_python(
      dir, std::string(kPythonPattern) + "st_write(os.path.join(HERE, 'py.safetensors'), pattern(), "
                                         "{'format': 'pt', 'source': 'python'})\nprint('OK')\n");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const SafetensorsFile f = load_safetensors(path);
  expect_same_tensors(pattern_tensors(), f.tensors);
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}, {"source", "python"}}));
}

TEST(Safetensors, PyTorchReadsOurFile) {
  SKIP_WITHOUT_TORCH_PYTHON();
  TempDir dir;
  save_safetensors(dir.file("ours.safetensors"), pattern_tensors(), {{"format", "pt"}, {"writer", "csipose"}});
  const auto r = testing::run_system_python(dir, std::string(kPythonPattern) + R"PY(
got, meta, header, n = st_read(os.path.join(HERE, 'ours.safetensors'))
want = pattern()
assert sorted(got) == sorted(want), (sorted(got), sorted(want))
for k, v in want.items():
    assert got[k].dtype == v.dtype and got[k].shape == v.shape, (k, got[k].dtype, got[k].shape)
    assert torch.equal(got[k], v), k
assert meta == {'format': 'pt', 'writer': 'csipose'}, meta
assert n % 8 == 0 and list(header)[0] == '__metadata__'
spans = sorted(v['data_offsets'] for k, v in header.items() if k != '__metadata__')
assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
print('OK')
)PY");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("OK"), std::string::npos) << r.output;
}

// ---- corruption -------------------------------------------------------------------------------

/// The message load_safetensors gives for a file holding `bytes`; it must name the file.
std::string load_error(const TempDir& dir, const std::string& bytes) {
  const std::string path = dir.file("bad.safetensors");
  testing::write_file(path, bytes);
  const std::string msg = error_of([&] { load_safetensors(path); });
  EXPECT_NE(msg.find(path + ": safetensors: "), std::string::npos) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  return msg;
}

TEST(Safetensors, CorruptionErrorsNameFileAndProblem) {
  TempDir dir;
  const std::string good = serialize_safetensors({{"a", torch::ones({2, 3})}, {"b", torch::ones({4}, torch::kInt64)}});
  const std::string f32 = "\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":";
  const std::string data8(8, '\0');
  struct Case {
    const char* what;
    std::string bytes;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"empty file", "", "too short to hold the 8-byte header length"},
      {"header past the end", image("{}", "").substr(0, 8), "header length 2 runs past the end of the file"},
      {"huge header length", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}",
       "over the 100000000-byte limit"},
      {"truncated data", good.substr(0, good.size() - 3), "run past the end of the data region"},
      {"truncated header", good.substr(0, 20), "runs past the end of the file"},
      {"bad JSON", image("{\"a\": {\"dtype\": \"F32\",}", data8), "header is not valid JSON"},
      {"not an object", image("[1, 2]  ", ""), "header is not a JSON object"},
      {"unknown dtype", image("{\"a\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", "xx"),
       "tensor \"a\": unknown dtype \"F8_E4M3\""},
      {"size mismatch", image("{\"a\":{" + f32 + "[0,4]}}", "xxxx"),
       "tensor \"a\": shape [2] of F32 needs 8 bytes but data_offsets [0, 4] span 4"},
      {"offsets reversed", image("{\"a\":{" + f32 + "[8,0]}}", data8), "is not [begin, end] with 0 <= begin <= end"},
      {"offsets out of range", image("{\"a\":{" + f32 + "[100,108]}}", data8),
       "data_offsets [100, 108] run past the end of the data region (8 bytes"},
      {"overlap", image("{\"a\":{" + f32 + "[0,8]},\"b\":{" + f32 + "[4,12]}}", data8 + "xxxx"),
       "data_offsets [4, 12] overlap tensor \"a\""},
      {"gap", image("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", data8),
       "gap in the data region: bytes [0, 4) before tensor \"a\" belong to no tensor"},
      {"trailing bytes", image("{\"a\":{" + f32 + "[0,8]}}", data8 + "zz"), "2 bytes after the last tensor"},
      {"past the data", image("{\"a\":{" + f32 + "[0,8]}}", "xxxx"),
       "[0, 8] run past the end of the data region (4 bytes; truncated file?)"},
      {"duplicate names", image("{\"a\":{" + f32 + "[0,8]},\"a\":{" + f32 + "[0,8]}}", data8),
       "duplicate entry \"a\""},
      {"missing shape", image("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", data8), "missing \"shape\""},
      {"negative dim", image("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", data8),
       "not an integer >= 0"},
      {"bad metadata", image("{\"__metadata__\":{\"k\":3}}", ""), "value of \"k\" is not a string"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    const std::string msg = load_error(dir, c.bytes);
    EXPECT_NE(msg.find(c.expected), std::string::npos) << msg;
  }
  EXPECT_NE(error_of([&] { load_safetensors(dir.file("missing.safetensors")); }).find("missing.safetensors"),
            std::string::npos);
}

// ---- state dicts ------------------------------------------------------------------------------

TEST(Safetensors, StateDictOrderIsPyTorchs) {
  // PyTorch: per module its parameters, then its buffers, then its children.
  torch::nn::Sequential m(torch::nn::Linear(3, 4), torch::nn::BatchNorm1d(4));
  std::vector<std::string> names;
  for (const auto& [name, t] : state_dict(*m)) names.push_back(name);
  EXPECT_EQ(names, (std::vector<std::string>{"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
                                             "1.running_var", "1.num_batches_tracked"}));
}

TEST(Safetensors, LoadStateDictStrictErrorsListEverything) {
  torch::nn::Sequential m(torch::nn::Linear(3, 4), torch::nn::Linear(4, 2));
  std::map<std::string, torch::Tensor> src;
  for (const auto& [name, t] : state_dict(*m)) src[name] = torch::full_like(t, 7.0);
  const torch::Tensor before = m[0]->as<torch::nn::Linear>()->weight.clone();

  auto broken = src;
  broken.erase("1.bias");
  broken["extra.weight"] = torch::zeros({1});
  broken["0.weight"] = torch::zeros({4, 5});
  const std::string msg = error_of([&] { load_state_dict(*m, broken, /*strict=*/true); });
  EXPECT_NE(msg.find("missing: 1.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unexpected: extra.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("shape mismatch: 0.weight expected [4, 3] got [4, 5]"), std::string::npos) << msg;
  EXPECT_TRUE(torch::equal(m[0]->as<torch::nn::Linear>()->weight, before)) << "nothing is copied on error";

  // Non-strict: missing and unexpected are allowed, a shape mismatch is not.
  broken["0.weight"] = torch::full({4, 3}, 2.0);
  load_state_dict(*m, broken, /*strict=*/false);
  EXPECT_TRUE(torch::equal(m[0]->as<torch::nn::Linear>()->weight, torch::full({4, 3}, 2.0)));
  broken["0.weight"] = torch::zeros({3});
  EXPECT_NE(error_of([&] { load_state_dict(*m, broken, /*strict=*/false); }).find("shape mismatch"),
            std::string::npos);

  load_state_dict(*m, src, /*strict=*/true);
  for (const auto& [name, t] : state_dict(*m)) EXPECT_TRUE(torch::equal(t, src.at(name))) << name;
  for (const auto& p : m->parameters()) EXPECT_TRUE(p.requires_grad());
}

}  // namespace
}  // namespace csipose
