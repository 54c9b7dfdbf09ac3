// .npy / .npz reader and writer: round trips, mmap semantics, precise errors, and agreement with
// real numpy in both directions (numpy comes from Debian's /usr/bin/python3; those tests skip
// when it is missing).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include "common/check.h"
#include "data/npy.h"
#include "data/npy_torch.h"
#include "testing.h"

namespace csipose {
namespace {

using ::testing::HasSubstr;
using testing::TempDir;

const DType kAllDTypes[] = {DType::float32, DType::float64, DType::int32,
                            DType::int64,   DType::uint8,   DType::boolean};

const std::vector<std::vector<int64_t>> kShapes = {
    {}, {0}, {7}, {3, 0, 2}, {2, 3, 4}, {1, 1, 1, 5}, {3, 540, 20},
};

int64_t numel_of(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

/// Deterministic contents per dtype; `kPythonPattern` below computes the same values in numpy.
std::vector<uint8_t> pattern_bytes(DType d, int64_t n) {
  std::vector<uint8_t> out(static_cast<size_t>(n) * dtype_size(d));
  for (int64_t i = 0; i < n; ++i) {
    uint8_t* p = out.data() + static_cast<size_t>(i) * dtype_size(d);
    switch (d) {
      case DType::float32: { const float v = static_cast<float>(i * 0.5 - 3); std::memcpy(p, &v, 4); break; }
      case DType::float64: { const double v = i * 0.25 - 1000.0; std::memcpy(p, &v, 8); break; }
      case DType::int32: { const int32_t v = static_cast<int32_t>(i * 1000 - 7); std::memcpy(p, &v, 4); break; }
      case DType::int64: { const int64_t v = i * (int64_t{1} << 33) - 5; std::memcpy(p, &v, 8); break; }
      case DType::uint8: *p = static_cast<uint8_t>(i % 256); break;
      case DType::boolean: *p = i % 3 == 0 ? 1 : 0; break;
    }
  }
  return out;
}

constexpr const char* kPythonPattern = R"PY(
import sys
import numpy as np

def pattern(descr, shape):
    i = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
    if descr == '<f4': a = (i * 0.5 - 3).astype('<f4')
    elif descr == '<f8': a = (i * 0.25 - 1000.0).astype('<f8')
    elif descr == '<i4': a = (i * 1000 - 7).astype('<i4')
    elif descr == '<i8': a = (i * 2**33 - 5).astype('<i8')
    elif descr == '|u1': a = (i % 256).astype('|u1')
    elif descr == '|b1': a = (i % 3 == 0)
    else: raise ValueError(descr)
    return a.reshape(shape)

def check(a, descr, shape):
    assert a.dtype.str == descr, (a.dtype.str, descr)
    assert a.shape == shape, (a.shape, shape)
    assert a.flags.c_contiguous
    assert np.array_equal(a, pattern(descr, shape)), (descr, shape)
)PY";

std::string py_shape(const std::vector<int64_t>& shape) {
  NpyArray a;
  a.shape = shape;
  return a.shape_string();
}

/// "f4" for "<f4": safe in file names.
std::string short_descr(DType d) { return std::string(dtype_descr(d)).substr(1); }

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A hand-made .npy image: prelude for `major`.0 + dict text (padded with '\n' as given) + data.
std::string npy_image(const std::string& dict, const std::string& data, int major = 1) {
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const size_t len = dict.size();
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xFF));
  return out + dict + data;
}

using testing::error_of;

// ---- numpy via Debian's python ---------------------------------------------------------------

constexpr const char* kPython = "/usr/bin/python3";

bool have_numpy() {
  static const bool ok =
      std::system((std::string(kPython) + " -c 'import numpy' >/dev/null 2>&1").c_str()) == 0;
  return ok;
}

#define SKIP_WITHOUT_NUMPY() \
  if (!have_numpy()) GTEST_SKIP() << kPython << " cannot import numpy; numpy cross-checks skipped"

/// Runs a python script (the pattern helpers are prepended); returns exit code and output.
testing::RunResult run_python(const TempDir& dir, const std::string& body) {
  const std::string script = dir.file("script.py");
  testing::write_file(script, std::string(kPythonPattern) + body);
  const std::string cmd = std::string(kPython) + " '" + script + "'";
  return testing::run_command(cmd);
}

void expect_pattern(const NpyArray& a, DType d, const std::vector<int64_t>& shape, const std::string& what) {
  ASSERT_EQ(a.dtype, d) << what;
  ASSERT_EQ(a.shape, shape) << what;
  const auto expected = pattern_bytes(d, numel_of(shape));
  ASSERT_EQ(a.nbytes(), expected.size()) << what;
  EXPECT_TRUE(expected.empty() || std::memcmp(a.data, expected.data(), expected.size()) == 0) << what;
}

// ---- our own round trips ----------------------------------------------------------------------

TEST(NpyRoundTrip, EveryDtypeAndShapeInBothLoadModes) {
  TempDir dir;
  for (DType d : kAllDTypes) {
    for (const auto& shape : kShapes) {
      const std::string what = std::string(to_string(d)) + " " + py_shape(shape);
      const std::string path = dir.file("a.npy");
      const auto bytes = pattern_bytes(d, numel_of(shape));
      write_npy(path, d, shape, bytes.data());
      for (NpyLoad mode : {NpyLoad::read, NpyLoad::mmap}) {
        const NpyArray a = read_npy(path, mode);
        expect_pattern(a, d, shape, what);
        EXPECT_EQ(a.mapped, mode == NpyLoad::mmap) << what;
        EXPECT_NE(a.data, nullptr) << what;
        EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % 64, 0u) << what;
      }
      const NpyArray h = read_npy_header(path);
      EXPECT_EQ(h.dtype, d);
      EXPECT_EQ(h.shape, shape);
      EXPECT_EQ(h.data, nullptr);
    }
  }
}

TEST(NpyRoundTrip, HeaderLayoutMatchesNumpy) {
  // numpy >= 1.14 pads the v1.0 header with spaces so the data starts at a multiple of 64 bytes
  // and ends it with '\n' (numpy/lib/format.py, ARRAY_ALIGN).
  TempDir dir;
  const std::vector<float> data(6, 1.5f);
  write_npy(dir.file("a.npy"), DType::float32, {2, 3}, data.data());
  const std::string f = file_bytes(dir.file("a.npy"));
  ASSERT_GE(f.size(), 10u);
  EXPECT_EQ(f.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const size_t header_len = static_cast<uint8_t>(f[8]) | (static_cast<uint8_t>(f[9]) << 8);
  EXPECT_EQ((10 + header_len) % 64, 0u);
  EXPECT_EQ(f[10 + header_len - 1], '\n');
  EXPECT_EQ(f.size(), 10 + header_len + 6 * sizeof(float));
  EXPECT_EQ(f.substr(10, f.find('}') - 9), "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }");
}

TEST(NpyRoundTrip, LargeArray) {
  TempDir dir;
  const std::vector<int64_t> shape = {64, 1024, 64};  // 16 MiB of float32
  const auto bytes = pattern_bytes(DType::float32, numel_of(shape));
  write_npy(dir.file("big.npy"), DType::float32, shape, bytes.data());
  expect_pattern(read_npy(dir.file("big.npy"), NpyLoad::mmap), DType::float32, shape, "mmap");
  expect_pattern(read_npy(dir.file("big.npy"), NpyLoad::read), DType::float32, shape, "read");
}

TEST(NpyRoundTrip, ExpectHelpersNameWhatAndBothSides) {
  NpyArray a;
  a.dtype = DType::int64;
  a.shape = {3, 4};
  expect_dtype(a, DType::int64, "labels");
  expect_ndim(a, 2, "labels");
  EXPECT_EQ(error_of([&] { expect_dtype(a, DType::float32, "csi"); }), "csi: expected dtype float32, got int64");
  EXPECT_EQ(error_of([&] { expect_ndim(a, 3, "csi"); }), "csi: expected 3 dims, got shape (3, 4)");
}

// ---- memory mapping ---------------------------------------------------------------------------

TEST(NpyMmap, MatchesReadByteForByte) {
  TempDir dir;
  const auto bytes = pattern_bytes(DType::float64, 3 * 540 * 20);
  write_npy(dir.file("a.npy"), DType::float64, {3, 540, 20}, bytes.data());
  const NpyArray r = read_npy(dir.file("a.npy"), NpyLoad::read);
  const NpyArray m = read_npy(dir.file("a.npy"), NpyLoad::mmap);
  EXPECT_FALSE(r.mapped);
  EXPECT_TRUE(m.mapped);
  ASSERT_EQ(r.nbytes(), m.nbytes());
  EXPECT_EQ(std::memcmp(r.data, m.data, r.nbytes()), 0);
}

TEST(NpyMmap, ZeroFillingTheMappingLeavesTheFileUnchanged) {
  TempDir dir;
  const std::string path = dir.file("a.npy");
  const auto bytes = pattern_bytes(DType::float32, 4 * 1000);
  write_npy(path, DType::float32, {4, 1000}, bytes.data());
  const std::string before = file_bytes(path);
  {
    NpyArray m = read_npy(path, NpyLoad::mmap);
    std::memset(m.data + 1000 * sizeof(float), 0, 1000 * sizeof(float));  // "corrupted window" row 1
    EXPECT_EQ(m.as<float>()[1000], 0.0f);
    EXPECT_EQ(m.as<float>()[0], -3.0f);
    // A second mapping of the same file does not see the private write.
    const NpyArray other = read_npy(path, NpyLoad::mmap);
    EXPECT_EQ(std::memcmp(other.data, bytes.data(), bytes.size()), 0);
  }
  EXPECT_EQ(file_bytes(path), before);
  expect_pattern(read_npy(path), DType::float32, {4, 1000}, "re-read");
}

TEST(NpyMmap, BufferOutlivesTheArrayThroughItsOwner) {
  TempDir dir;
  const auto bytes = pattern_bytes(DType::int32, 100);
  write_npy(dir.file("a.npy"), DType::int32, {100}, bytes.data());
  std::shared_ptr<void> owner;
  const uint8_t* data = nullptr;
  {
    NpyArray m = read_npy(dir.file("a.npy"), NpyLoad::mmap);
    owner = m.owner;
    data = m.data;
  }
  EXPECT_EQ(std::memcmp(data, bytes.data(), bytes.size()), 0);
}

// ---- header parsing ---------------------------------------------------------------------------

TEST(NpyHeader, ParsesWhitespaceQuotesTrailingCommasAndScalars) {
  struct Case {
    std::string dict;
    DType dtype;
    std::vector<int64_t> shape;
  };
  const std::vector<Case> cases = {
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", DType::float32, {2, 3}},
      {"{'descr':'<f8','fortran_order':False,'shape':(2,3)}", DType::float64, {2, 3}},
      {"  {\n 'shape' : ( 4 , ) ,\t'fortran_order' : False , 'descr' : \"<i4\" ,\n}  \n", DType::int32, {4}},
      {"{'descr': '<i8', 'fortran_order': False, 'shape': (), }", DType::int64, {}},
      {"{'descr': '<u1', 'fortran_order': False, 'shape': (5,)}", DType::uint8, {5}},
      {"{'descr': '|u1', 'fortran_order': False, 'shape': (5L, 1L), }", DType::uint8, {5, 1}},
      {"{'descr': '?', 'fortran_order': False, 'shape': (1,), }", DType::boolean, {1}},
      {"{'descr': '|b1', 'fortran_order': False, 'shape': (0, 7), }", DType::boolean, {0, 7}},
      {"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'extra': [1, (2,), None], }",
       DType::float32, {1}},
  };
  for (const Case& c : cases) {
    const std::string data(static_cast<size_t>(numel_of(c.shape)) * dtype_size(c.dtype), '\x01');
    const std::string image = npy_image(c.dict, data);
    const NpyArray a = parse_npy(reinterpret_cast<const uint8_t*>(image.data()), image.size(), "mem.npy");
    EXPECT_EQ(a.dtype, c.dtype) << c.dict;
    EXPECT_EQ(a.shape, c.shape) << c.dict;
  }
}

TEST(NpyHeader, ReadsVersions2And3) {
  TempDir dir;
  for (int major : {2, 3}) {
    const float v[3] = {1, 2, 3};
    const std::string path = dir.file("v" + std::to_string(major) + ".npy");
    testing::write_file(path, npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n",
                                        std::string(reinterpret_cast<const char*>(v), sizeof v), major));
    for (NpyLoad mode : {NpyLoad::read, NpyLoad::mmap}) {
      const NpyArray a = read_npy(path, mode);
      ASSERT_EQ(a.shape, std::vector<int64_t>{3});
      EXPECT_EQ(a.as<float>()[2], 3.0f);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data) % sizeof(float), 0u);
    }
  }
}

// ---- errors -----------------------------------------------------------------------------------

/// Writes a hand-made file and returns the message read_npy throws for it (both modes agree).
std::string read_error(const TempDir& dir, const std::string& contents) {
  const std::string path = dir.file("bad.npy");
  testing::write_file(path, contents);
  const std::string msg = error_of([&] { read_npy(path, NpyLoad::read); });
  EXPECT_EQ(error_of([&] { read_npy(path, NpyLoad::mmap); }), msg);
  EXPECT_THAT(msg, HasSubstr(path));
  return msg;
}

TEST(NpyErrors, BadMagic) {
  TempDir dir;
  EXPECT_THAT(read_error(dir, "PK\x03\x04 this is a zip"), HasSubstr("not an .npy file (bad magic"));
  EXPECT_THAT(error_of([&] { read_npy(dir.file("bad.npy"), NpyLoad::mmap); }), HasSubstr("bad magic"));
  testing::write_file(dir.file("empty.npy"), "");
  EXPECT_THAT(error_of([&] { read_npy(dir.file("empty.npy"), NpyLoad::mmap); }),
              HasSubstr("not an .npy file (bad magic"));
  EXPECT_THAT(error_of([&] { read_npy(dir.file("empty.npy")); }), HasSubstr("not an .npy file (bad magic"));
}

TEST(NpyErrors, UnsupportedVersion) {
  TempDir dir;
  EXPECT_THAT(read_error(dir, npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", "", 4)),
              HasSubstr("unsupported .npy format version 4.0; expected 1.0, 2.0 or 3.0"));
}

TEST(NpyErrors, BigEndian) {
  TempDir dir;
  EXPECT_THAT(read_error(dir, npy_image("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", "abcd")),
              HasSubstr("unsupported dtype '>f4' (big-endian); expected one of <f4, <f8, <i4, <i8, |u1, |b1"));
}

TEST(NpyErrors, UnsupportedDtype) {
  TempDir dir;
  EXPECT_THAT(read_error(dir, npy_image("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", "12345678")),
              HasSubstr("unsupported dtype '<c8'; expected one of <f4, <f8, <i4, <i8, |u1, |b1"));
  EXPECT_THAT(read_error(dir, npy_image("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }",
                                        "1234")),
              HasSubstr("structured dtypes"));
}

TEST(NpyErrors, FortranOrder) {
  TempDir dir;
  EXPECT_THAT(read_error(dir, npy_image("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }",
                                        std::string(16, '\0'))),
              HasSubstr("fortran_order arrays are not supported; save with np.ascontiguousarray"));
}

TEST(NpyErrors, TruncatedData) {
  TempDir dir;
  const std::string path = dir.file("bad.npy");
  const std::string image =
      npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 540, 20), }\n", std::string(1000, 'x'));
  const std::string expected = path +
      ": truncated: header says (3, 540, 20) float32 = 129600 bytes of data, file has 1000";
  EXPECT_EQ(read_error(dir, image), expected);
  EXPECT_EQ(error_of([&] { read_npy_header(path); }), expected);
}

TEST(NpyErrors, TruncatedHeader) {
  TempDir dir;
  const std::string image = npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }\n", "");
  EXPECT_THAT(read_error(dir, image.substr(0, 30)), HasSubstr("truncated .npy header"));
  EXPECT_THAT(read_error(dir, image.substr(0, 8)), HasSubstr("truncated .npy header"));
}

TEST(NpyErrors, HeaderNotADictOrMissingKeys) {
  TempDir dir;
  EXPECT_THAT(read_error(dir, npy_image("['descr', '<f4']\n", "")), HasSubstr("header is not a dict"));
  EXPECT_THAT(read_error(dir, npy_image("{'descr': '<f4', 'shape': (1,)}\n", "abcd")),
              HasSubstr("header lacks key 'fortran_order'"));
  EXPECT_THAT(read_error(dir, npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (1,\n", "")),
              HasSubstr("cannot parse header"));
  EXPECT_THAT(read_error(dir, npy_image("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,)}\n", "")),
              HasSubstr("negative dimension -1"));
}

TEST(NpyErrors, MissingFileNamesThePath) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { read_npy(dir.file("nope.npy")); }), HasSubstr("cannot open " + dir.file("nope.npy")));
  EXPECT_THAT(error_of([&] { read_npz(dir.file("nope.npz")); }), HasSubstr("cannot open " + dir.file("nope.npz")));
}

// ---- .npz -------------------------------------------------------------------------------------

TEST(NpyNpz, RoundTripEveryDtype) {
  TempDir dir;
  std::vector<std::vector<uint8_t>> storage;
  std::vector<NpzMember> members;
  for (DType d : kAllDTypes) {
    const std::vector<int64_t> shape = d == DType::uint8 ? std::vector<int64_t>{} : std::vector<int64_t>{3, 5};
    storage.push_back(pattern_bytes(d, numel_of(shape)));
    members.push_back({std::string("x_") + to_string(d), d, shape, storage.back().data()});
  }
  members.push_back({"empty", DType::float32, {0, 4}, nullptr});
  write_npz(dir.file("a.npz"), members);

  const auto arrays = read_npz(dir.file("a.npz"));
  ASSERT_EQ(arrays.size(), members.size());
  for (const NpzMember& m : members) {
    ASSERT_EQ(arrays.count(m.name), 1u) << m.name;
    expect_pattern(arrays.at(m.name), m.dtype, m.shape, m.name);
  }
}

TEST(NpyNpz, EmptyArchive) {
  TempDir dir;
  write_npz(dir.file("e.npz"), {});
  EXPECT_TRUE(read_npz(dir.file("e.npz")).empty());
}

TEST(NpyNpz, DetectsCrcMismatch) {
  TempDir dir;
  const auto bytes = pattern_bytes(DType::int32, 50);
  write_npz(dir.file("a.npz"), {{"labels", DType::int32, {50}, bytes.data()}});
  std::string f = file_bytes(dir.file("a.npz"));
  const size_t pos = f.find(std::string(reinterpret_cast<const char*>(bytes.data()) + 40, 8));
  ASSERT_NE(pos, std::string::npos);
  f[pos] ^= 0x55;
  testing::write_file(dir.file("a.npz"), f);
  const std::string msg = error_of([&] { read_npz(dir.file("a.npz")); });
  EXPECT_THAT(msg, HasSubstr(dir.file("a.npz") + ":labels.npy: CRC-32 mismatch"));
}

TEST(NpyNpz, RejectsNonZipAndDuplicateNames) {
  TempDir dir;
  testing::write_file(dir.file("x.npz"), "definitely not a zip archive, just some text");
  EXPECT_THAT(error_of([&] { read_npz(dir.file("x.npz")); }), HasSubstr("not a zip file"));
  const float v = 1;
  EXPECT_THAT(error_of([&] {
                write_npz(dir.file("d.npz"), {{"a", DType::float32, {}, &v}, {"a", DType::float32, {}, &v}});
              }),
              HasSubstr("duplicate npz member name 'a'"));
}

// ---- agreement with numpy ---------------------------------------------------------------------

TEST(NpyNumpy, ReadsNpyWrittenByNumpyIncludingV2AndV3Headers) {
  SKIP_WITHOUT_NUMPY();
  TempDir dir;
  std::string body = "d = sys.argv[1] if len(sys.argv) > 1 else '" + dir.path() + "'\n";
  for (DType d : kAllDTypes) {
    for (size_t k = 0; k < kShapes.size(); ++k) {
      body += "np.save(d + '/" + short_descr(d) + "_" + std::to_string(k) + ".npy', pattern('" +
              dtype_descr(d) + "', " + py_shape(kShapes[k]) + "))\n";
    }
  }
  body += "for v in (2, 3):\n"
          "    with open(d + '/v%d.npy' % v, 'wb') as f:\n"
          "        np.lib.format.write_array(f, pattern('<f8', (4, 3)), version=(v, 0))\n";
  const auto r = run_python(dir, body);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  for (DType d : kAllDTypes) {
    for (size_t k = 0; k < kShapes.size(); ++k) {
      const std::string path = dir.file(short_descr(d) + "_" + std::to_string(k) + ".npy");
      expect_pattern(read_npy(path, NpyLoad::read), d, kShapes[k], path);
      expect_pattern(read_npy(path, NpyLoad::mmap), d, kShapes[k], path);
      EXPECT_EQ(read_npy_header(path).shape, kShapes[k]);
    }
  }
  for (int v : {2, 3}) {
    const std::string path = dir.file("v" + std::to_string(v) + ".npy");
    EXPECT_EQ(file_bytes(path)[6], static_cast<char>(v));
    expect_pattern(read_npy(path, NpyLoad::read), DType::float64, {4, 3}, path);
    expect_pattern(read_npy(path, NpyLoad::mmap), DType::float64, {4, 3}, path);
  }
}

TEST(NpyNumpy, RejectsNumpyFortranOrderAndBigEndianFiles) {
  SKIP_WITHOUT_NUMPY();
  TempDir dir;
  const auto r = run_python(dir,
                            "np.save('" + dir.file("f.npy") + "', np.asfortranarray(pattern('<f4', (3, 4))))\n"
                            "np.save('" + dir.file("be.npy") + "', pattern('<f4', (3, 4)).astype('>f4'))\n"
                            "np.save('" + dir.file("c.npy") + "', np.zeros(3, dtype=np.complex64))\n");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(error_of([&] { read_npy(dir.file("f.npy")); }),
              HasSubstr("fortran_order arrays are not supported; save with np.ascontiguousarray"));
  EXPECT_THAT(error_of([&] { read_npy(dir.file("be.npy")); }), HasSubstr("unsupported dtype '>f4' (big-endian)"));
  EXPECT_THAT(error_of([&] { read_npy(dir.file("c.npy")); }), HasSubstr("unsupported dtype '<c8'"));
}

/// np.savez / np.savez_compressed of every dtype plus a 0-d and an empty array.
void check_numpy_npz(const std::string& function) {
  TempDir dir;
  std::string body = "np." + function + "('" + dir.file("a.npz") + "'";
  for (DType d : kAllDTypes) {
    body += ", " + short_descr(d) + "=pattern('" + dtype_descr(d) + "', (3, 540, 2))";
  }
  body += ", scalar=pattern('<i8', ()), empty=pattern('<f4', (0, 3)))\n";
  const auto r = run_python(dir, body);
  ASSERT_EQ(r.exit_code, 0) << r.output;

  std::map<std::string, NpyArray> arrays;
  try {
    arrays = read_npz(dir.file("a.npz"));
  } catch (const Error& e) {
    if (function == "savez_compressed" && std::string(e.what()).find("without zlib") != std::string::npos) {
      GTEST_SKIP() << "built without zlib: " << e.what();
    }
    throw;
  }
  ASSERT_EQ(arrays.size(), 8u);
  for (DType d : kAllDTypes) expect_pattern(arrays.at(short_descr(d)), d, {3, 540, 2}, short_descr(d));
  expect_pattern(arrays.at("scalar"), DType::int64, {}, "scalar");
  expect_pattern(arrays.at("empty"), DType::float32, {0, 3}, "empty");
}

TEST(NpyNumpy, ReadsSavez) {
  SKIP_WITHOUT_NUMPY();
  check_numpy_npz("savez");
}

TEST(NpyNumpy, ReadsSavezCompressed) {
  SKIP_WITHOUT_NUMPY();
  check_numpy_npz("savez_compressed");
}

TEST(NpyNumpy, ReadsZip64DirectoryRecords) {
  // np.savez writes ZIP64 central-directory fields and end records only past 4 GiB; lowering
  // zipfile's limits makes Python write them for a small archive.
  SKIP_WITHOUT_NUMPY();
  TempDir dir;
  const auto r = run_python(dir, "import zipfile\n"
                                 "zipfile.ZIP64_LIMIT = 64\n"
                                 "zipfile.ZIP_FILECOUNT_LIMIT = 1\n"
                                 "np.savez('" + dir.file("z64.npz") + "', a=pattern('<i8', (1000,)), "
                                 "b=pattern('|b1', (3, 4)), c=pattern('<f4', ()))\n"
                                 "assert b'PK\\x06\\x06' in open('" + dir.file("z64.npz") + "', 'rb').read()\n");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto arrays = read_npz(dir.file("z64.npz"));
  ASSERT_EQ(arrays.size(), 3u);
  expect_pattern(arrays.at("a"), DType::int64, {1000}, "a");
  expect_pattern(arrays.at("b"), DType::boolean, {3, 4}, "b");
  expect_pattern(arrays.at("c"), DType::float32, {}, "c");
}

TEST(NpyNumpy, NumpyLoadsOurNpyAndNpz) {
  SKIP_WITHOUT_NUMPY();
  TempDir dir;
  std::string body;
  std::vector<std::vector<uint8_t>> storage;
  std::vector<NpzMember> members;
  for (DType d : kAllDTypes) {
    for (size_t k = 0; k < kShapes.size(); ++k) {
      const std::string name = short_descr(d) + "_" + std::to_string(k);
      storage.push_back(pattern_bytes(d, numel_of(kShapes[k])));
      write_npy(dir.file(name + ".npy"), d, kShapes[k], storage.back().data());
      members.push_back({name, d, kShapes[k], storage.back().data()});
      const std::string args = "'" + std::string(dtype_descr(d)) + "', " + py_shape(kShapes[k]);
      body += "check(np.load('" + dir.file(name + ".npy") + "'), " + args + ")\n";
      if (numel_of(kShapes[k]) > 0) {  // numpy cannot memory-map zero bytes
        body += "check(np.load('" + dir.file(name + ".npy") + "', mmap_mode='r'), " + args + ")\n";
      }
      body += "check(z['" + name + "'], " + args + ")\n";
    }
  }
  write_npz(dir.file("all.npz"), members);
  body = "z = np.load('" + dir.file("all.npz") + "')\n"
         "assert len(z.files) == " + std::to_string(members.size()) + ", z.files\n" + body +
         "import zipfile\n"
         "assert zipfile.ZipFile('" + dir.file("all.npz") + "').testzip() is None\n"
         "print('ok')\n";
  const auto r = run_python(dir, body);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("ok"));
}

// ---- torch bridge -----------------------------------------------------------------------------

TEST(NpyTorch, ToTensorIsZeroCopyAndKeepsTheBufferAlive) {
  TempDir dir;
  const auto bytes = pattern_bytes(DType::float32, 6);
  write_npy(dir.file("a.npy"), DType::float32, {2, 3}, bytes.data());
  for (NpyLoad mode : {NpyLoad::read, NpyLoad::mmap}) {
    torch::Tensor t;
    {
      const NpyArray a = read_npy(dir.file("a.npy"), mode);
      t = to_tensor(a);
      EXPECT_EQ(t.data_ptr(), static_cast<void*>(a.data));
    }
    ASSERT_EQ(t.sizes(), torch::IntArrayRef({2, 3}));
    ASSERT_EQ(t.scalar_type(), torch::kFloat32);
    EXPECT_TRUE(torch::equal(t, torch::arange(6, torch::kFloat64).mul(0.5).sub(3).to(torch::kFloat32).view({2, 3})));
  }
}

TEST(NpyTorch, SaveLoadRoundTripEveryDtype) {
  TempDir dir;
  for (DType d : kAllDTypes) {
    EXPECT_EQ(to_dtype(to_scalar_type(d)), d);
    const torch::Tensor t = torch::arange(24, torch::kInt64).remainder(7).to(to_scalar_type(d)).view({2, 3, 4});
    save_npy(dir.file("t.npy"), t);
    EXPECT_EQ(read_npy_header(dir.file("t.npy")).dtype, d);
    for (NpyLoad mode : {NpyLoad::read, NpyLoad::mmap}) {
      const torch::Tensor back = load_npy(dir.file("t.npy"), mode);
      EXPECT_EQ(back.scalar_type(), t.scalar_type());
      EXPECT_TRUE(torch::equal(back, t)) << to_string(d);
    }
  }
  EXPECT_EQ(std::string(dtype_descr(DType::boolean)), "|b1");
}

TEST(NpyTorch, SavesNonContiguousScalarAndEmptyTensors) {
  TempDir dir;
  const torch::Tensor t = torch::arange(12, torch::kFloat32).view({3, 4}).t();
  ASSERT_FALSE(t.is_contiguous());
  save_npy(dir.file("t.npy"), t);
  EXPECT_TRUE(torch::equal(load_npy(dir.file("t.npy")), t));

  const torch::Tensor s = torch::scalar_tensor(42, torch::kInt64);
  save_npy(dir.file("s.npy"), s);
  const torch::Tensor s2 = load_npy(dir.file("s.npy"));
  EXPECT_EQ(s2.dim(), 0);
  EXPECT_EQ(s2.item<int64_t>(), 42);

  save_npy(dir.file("e.npy"), torch::zeros({0, 5}));
  EXPECT_EQ(load_npy(dir.file("e.npy"), NpyLoad::mmap).sizes(), torch::IntArrayRef({0, 5}));
}

TEST(NpyTorch, RejectsDtypesWithoutAnNpyMapping) {
  TempDir dir;
  EXPECT_THAT(error_of([&] { save_npy(dir.file("h.npy"), torch::zeros({2}, torch::kFloat16)); }),
              HasSubstr("tensor dtype Half has no .npy mapping"));
}

TEST(NpyTorch, WritesThroughAMappedTensorDoNotReachTheFile) {
  TempDir dir;
  save_npy(dir.file("a.npy"), torch::ones({4, 8}));
  const std::string before = file_bytes(dir.file("a.npy"));
  torch::Tensor t = load_npy(dir.file("a.npy"), NpyLoad::mmap);
  t[1].zero_();
  EXPECT_EQ(t.sum().item<float>(), 24.0f);
  EXPECT_EQ(file_bytes(dir.file("a.npy")), before);
}

}  // namespace
}  // namespace csipose
