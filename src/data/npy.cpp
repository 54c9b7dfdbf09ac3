#include "data/npy.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <ostream>

#include "common/atomic_file.h"
#include "common/check.h"

#ifdef CSIPOSE_HAVE_ZLIB
#include <zlib.h>
#endif

// Format references:
//   .npy: https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
//   .zip: PKWARE APPNOTE.TXT 6.3 (sections 4.3.7 local header, 4.3.12 central directory,
//         4.3.14-4.3.16 ZIP64 end of central directory, 4.5.3 ZIP64 extra field).
// Everything on disk is little-endian; the readers assemble integers byte by byte so the code does
// not depend on the host's byte order or on alignment.

namespace csipose {
namespace {

// ---- dtypes -------------------------------------------------------------------------------------

struct DTypeInfo {
  DType dtype;
  const char* descr;  // what we write
  const char* name;
  size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {DType::float32, "<f4", "float32", 4}, {DType::float64, "<f8", "float64", 8},
    {DType::int32, "<i4", "int32", 4},     {DType::int64, "<i8", "int64", 8},
    {DType::uint8, "|u1", "uint8", 1},     {DType::boolean, "|b1", "bool", 1},
};

const DTypeInfo& info(DType d) {
  for (const auto& i : kDTypes)
    if (i.dtype == d) return i;
  fail("invalid DType value ", static_cast<int>(d));
}

/// Text from a file (header, member name) for an error message: control and non-ASCII bytes
/// escaped as \xNN, at most 160 characters, so that a corrupt file still gives a one-line message.
std::string printable(const std::string& text) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < text.size() && i < 160; ++i) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      out += "\\x";
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return text.size() > 160 ? out + "..." : out;
}

/// The whole header, trimmed and quoted, for "... in \"{'descr': ...}\"".
std::string quote_header(std::string text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return "\"" + printable(text) + "\"";
}

constexpr const char* kExpectedDescrs = "<f4, <f8, <i4, <i8, |u1, |b1";

/// Maps a numpy descr to a DType. Accepts '<', '|' and '=' (native: little-endian on every host
/// we build for); single-byte types have no byte order, so '>u1' is fine too.
DType parse_descr(const std::string& descr, const std::string& where) {
  if (descr == "?" || descr == "|?" || descr == "b1") return DType::boolean;
  if (descr.size() == 3) {
    const char order = descr[0];
    const std::string kind = descr.substr(1);
    const bool one_byte = kind == "u1" || kind == "b1";
    if (one_byte && (order == '|' || order == '<' || order == '>' || order == '=')) {
      return kind == "u1" ? DType::uint8 : DType::boolean;
    }
    if (order == '<' || order == '=') {
      if (kind == "f4") return DType::float32;
      if (kind == "f8") return DType::float64;
      if (kind == "i4") return DType::int32;
      if (kind == "i8") return DType::int64;
    }
    if (order == '>' && (kind == "f4" || kind == "f8" || kind == "i4" || kind == "i8")) {
      fail(where, ": unsupported dtype '", printable(descr), "' (big-endian); expected one of ",
           kExpectedDescrs, " (convert with a.astype(a.dtype.newbyteorder('<')))");
    }
  }
  fail(where, ": unsupported dtype '", printable(descr), "'; expected one of ", kExpectedDescrs);
}

std::string shape_to_string(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

/// Number of bytes of a C-order array; throws when the product overflows.
size_t checked_nbytes(DType dtype, const std::vector<int64_t>& shape, const std::string& where) {
  size_t n = dtype_size(dtype);
  for (int64_t d : shape) {
    CSIPOSE_CHECK(d >= 0, where, ": negative dimension in shape ", shape_to_string(shape));
    size_t next = 0;
    CSIPOSE_CHECK(!__builtin_mul_overflow(n, static_cast<size_t>(d), &next), where, ": shape ",
                  shape_to_string(shape), " is too large (byte count overflows)");
    n = next;
  }
  return n;
}

// ---- little-endian helpers ---------------------------------------------------------------------

uint64_t load_le(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint16_t le16(const uint8_t* p) { return static_cast<uint16_t>(load_le(p, 2)); }
uint32_t le32(const uint8_t* p) { return static_cast<uint32_t>(load_le(p, 4)); }
uint64_t le64(const uint8_t* p) { return load_le(p, 8); }

void put_le(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

// ---- aligned buffers ---------------------------------------------------------------------------

constexpr size_t kAlign = 64;

/// An owned, 64-byte aligned buffer of at least `n` bytes (never null, even for n == 0).
std::shared_ptr<uint8_t> aligned_buffer(size_t n, const std::string& where) {
  const size_t rounded = ((n + kAlign - 1) / kAlign) * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded == 0 ? kAlign : rounded);
  CSIPOSE_CHECK(p != nullptr, where, ": cannot allocate ", n, " bytes");
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
}

// ---- files -------------------------------------------------------------------------------------

class Fd {
 public:
  explicit Fd(const std::string& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    CSIPOSE_CHECK(fd_ >= 0, "cannot open ", path, ": ", std::strerror(errno));
  }
  ~Fd() { ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

size_t file_size(const Fd& fd, const std::string& path) {
  struct stat st {};
  CSIPOSE_CHECK(::fstat(fd.get(), &st) == 0, "cannot stat ", path, ": ", std::strerror(errno));
  CSIPOSE_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  return static_cast<size_t>(st.st_size);
}

/// Reads up to `n` bytes at `offset`; returns how many were read (short only at end of file).
size_t pread_full(const Fd& fd, size_t offset, void* dst, size_t n, const std::string& path) {
  size_t done = 0;
  while (done < n) {
    const ssize_t r = ::pread(fd.get(), static_cast<uint8_t*>(dst) + done, n - done,
                              static_cast<off_t>(offset + done));
    if (r < 0 && errno == EINTR) continue;
    CSIPOSE_CHECK(r >= 0, "read error in ", path, ": ", std::strerror(errno));
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return done;
}

/// A private (copy-on-write) read-write mapping of the whole file; munmapped when the last owner goes.
std::shared_ptr<uint8_t> map_file(const Fd& fd, size_t size, const std::string& path) {
  CSIPOSE_CHECK(size > 0, path, ": not an .npy file (bad magic; the file is empty)");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), 0);
  CSIPOSE_CHECK(p != MAP_FAILED, "cannot mmap ", path, " (", size, " bytes): ", std::strerror(errno));
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [size](uint8_t* q) { ::munmap(q, size); });
}

// ---- .npy header -------------------------------------------------------------------------------

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kPreludeV1 = 10;  // magic, 2 version bytes, uint16 header length
constexpr size_t kPreludeV2 = 12;  // ... uint32 header length

/// A value of the Python literal subset that .npy headers use.
struct PyValue {
  enum class Kind { string, boolean, integer, none, tuple, list, dict };
  Kind kind = Kind::none;
  std::string str;
  bool boolean = false;
  int64_t integer = 0;
  std::vector<PyValue> items;                              // tuple / list
  std::vector<std::pair<std::string, PyValue>> entries;    // dict (string keys only)
};

/// Recursive-descent parser for the header dict: strings ('...' or "..."), True/False/None,
/// integers (an old Python 2 'L' suffix is accepted), tuples, lists and string-keyed dicts;
/// whitespace anywhere and trailing commas are allowed.
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& where) : s_(text), where_(where) {}

  PyValue parse_top() {
    skip_ws();
    CSIPOSE_CHECK(pos_ < s_.size() && s_[pos_] == '{', where_,
                  ": header is not a dict: ", snippet());
    PyValue v = parse_value();
    skip_ws();
    CSIPOSE_CHECK(pos_ == s_.size(), where_, ": unexpected text after the header dict at column ",
                  pos_ + 1, ": ", snippet());
    return v;
  }

 private:
  std::string snippet() const { return quote_header(s_); }
  [[noreturn]] void error(const std::string& what) const {
    fail(where_, ": cannot parse header at column ", pos_ + 1, ": ", what, " in ", snippet());
  }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    skip_ws();
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  PyValue parse_value() {
    if (++depth_ > 32) error("nesting too deep");
    skip_ws();
    if (pos_ >= s_.size()) error("unexpected end of header");
    PyValue v;
    const char c = s_[pos_];
    if (c == '\'' || c == '"') {
      v.kind = PyValue::Kind::string;
      v.str = parse_string();
    } else if (c == '{') {
      v.kind = PyValue::Kind::dict;
      ++pos_;
      while (!eat('}')) {
        skip_ws();
        if (pos_ >= s_.size() || (s_[pos_] != '\'' && s_[pos_] != '"')) error("expected a string key");
        std::string key = parse_string();
        if (!eat(':')) error("expected ':' after key '" + printable(key) + "'");
        v.entries.emplace_back(std::move(key), parse_value());
        if (!eat(',')) {
          if (!eat('}')) error("expected ',' or '}'");
          break;
        }
      }
    } else if (c == '(' || c == '[') {
      const char close = c == '(' ? ')' : ']';
      v.kind = c == '(' ? PyValue::Kind::tuple : PyValue::Kind::list;
      ++pos_;
      while (!eat(close)) {
        v.items.push_back(parse_value());
        if (!eat(',')) {
          if (!eat(close)) error(std::string("expected ',' or '") + close + "'");
          break;
        }
      }
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '+') {
      v.kind = PyValue::Kind::integer;
      v.integer = parse_integer();
    } else if (s_.compare(pos_, 4, "True") == 0) {
      v.kind = PyValue::Kind::boolean;
      v.boolean = true;
      pos_ += 4;
    } else if (s_.compare(pos_, 5, "False") == 0) {
      v.kind = PyValue::Kind::boolean;
      pos_ += 5;
    } else if (s_.compare(pos_, 4, "None") == 0) {
      pos_ += 4;
    } else {
      error("unexpected character '" + printable(std::string(1, c)) + "'");
    }
    --depth_;
    return v;
  }

  std::string parse_string() {
    const char quote = s_[pos_++];
    std::string out;
    while (pos_ < s_.size() && s_[pos_] != quote) {
      if (s_[pos_] == '\\' && pos_ + 1 < s_.size()) ++pos_;
      out.push_back(s_[pos_++]);
    }
    if (pos_ >= s_.size()) error("unterminated string");
    ++pos_;
    return out;
  }

  int64_t parse_integer() {
    bool negative = false;
    if (s_[pos_] == '-' || s_[pos_] == '+') negative = s_[pos_++] == '-';
    if (pos_ >= s_.size() || !std::isdigit(static_cast<unsigned char>(s_[pos_]))) error("expected a digit");
    int64_t v = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      if (__builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, s_[pos_] - '0', &v)) {
        error("integer too large");
      }
      ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'L' || s_[pos_] == 'l')) ++pos_;  // Python 2 long
    return negative ? -v : v;
  }

  const std::string& s_;
  const std::string& where_;
  size_t pos_ = 0;
  int depth_ = 0;
};

struct NpyHeader {
  DType dtype = DType::float32;
  std::vector<int64_t> shape;
  size_t data_offset = 0;  ///< bytes from the start of the file to the first element
  size_t nbytes = 0;
};

/// Validates magic and version from the first `avail` bytes of a `size`-byte file; returns the
/// prelude length (10 or 12) in `*prelude` and the full header size (prelude + dict) in `*total`.
void parse_prelude(const uint8_t* bytes, size_t avail, size_t size, const std::string& where,
                   size_t* prelude, size_t* total) {
  CSIPOSE_CHECK(avail >= kMagicLen && std::memcmp(bytes, kMagic, kMagicLen) == 0, where,
                ": not an .npy file (bad magic; expected \\x93NUMPY, file is ", size, " bytes)");
  CSIPOSE_CHECK(avail >= kPreludeV1, where, ": truncated .npy header (file is ", size, " bytes)");
  const int major = bytes[6];
  const int minor = bytes[7];
  CSIPOSE_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, where,
                ": unsupported .npy format version ", major, ".", minor, "; expected 1.0, 2.0 or 3.0");
  if (major == 1) {
    *prelude = kPreludeV1;
    *total = kPreludeV1 + le16(bytes + 8);
  } else {
    CSIPOSE_CHECK(avail >= kPreludeV2, where, ": truncated .npy header (file is ", size, " bytes)");
    *prelude = kPreludeV2;
    *total = kPreludeV2 + static_cast<size_t>(le32(bytes + 8));
  }
}

/// Parses the header dict text (the bytes between the prelude and the data).
NpyHeader parse_header_text(const std::string& text, size_t data_offset, const std::string& where) {
  const PyValue dict = HeaderParser(text, where).parse_top();
  const PyValue* descr = nullptr;
  const PyValue* fortran = nullptr;
  const PyValue* shape = nullptr;
  for (const auto& [key, value] : dict.entries) {
    if (key == "descr") descr = &value;
    else if (key == "fortran_order") fortran = &value;
    else if (key == "shape") shape = &value;
  }
  CSIPOSE_CHECK(descr && fortran && shape, where, ": header lacks key '",
                !descr ? "descr" : !fortran ? "fortran_order" : "shape",
                "'; expected 'descr', 'fortran_order' and 'shape' in ", quote_header(text));

  NpyHeader h;
  CSIPOSE_CHECK(descr->kind == PyValue::Kind::string, where,
                ": structured dtypes (record arrays) are not supported; save each field as its own array");
  h.dtype = parse_descr(descr->str, where);

  CSIPOSE_CHECK(fortran->kind == PyValue::Kind::boolean, where,
                ": header 'fortran_order' must be True or False");
  CSIPOSE_CHECK(!fortran->boolean, where,
                ": fortran_order arrays are not supported; save with np.ascontiguousarray");

  CSIPOSE_CHECK(shape->kind == PyValue::Kind::tuple, where, ": header 'shape' must be a tuple of ints");
  for (const auto& d : shape->items) {
    CSIPOSE_CHECK(d.kind == PyValue::Kind::integer, where, ": header 'shape' must be a tuple of ints");
    CSIPOSE_CHECK(d.integer >= 0, where, ": header 'shape' has a negative dimension ", d.integer);
    h.shape.push_back(d.integer);
  }
  h.data_offset = data_offset;
  h.nbytes = checked_nbytes(h.dtype, h.shape, where);
  return h;
}

/// Parses a header held entirely in `bytes` (which may also hold the data).
NpyHeader parse_header(const uint8_t* bytes, size_t size, const std::string& where) {
  size_t prelude = 0;
  size_t total = 0;
  parse_prelude(bytes, size, size, where, &prelude, &total);
  CSIPOSE_CHECK(total <= size, where, ": truncated .npy header (header says ", total - prelude,
                " bytes, file has ", size - prelude, " after the prelude)");
  const std::string text(reinterpret_cast<const char*>(bytes) + prelude, total - prelude);
  return parse_header_text(text, total, where);
}

/// Reads and parses only the header of a file.
NpyHeader read_header(const Fd& fd, size_t size, const std::string& path) {
  uint8_t prelude_bytes[kPreludeV2] = {};
  const size_t got = pread_full(fd, 0, prelude_bytes, kPreludeV2, path);
  size_t prelude = 0;
  size_t total = 0;
  parse_prelude(prelude_bytes, got, size, path, &prelude, &total);
  CSIPOSE_CHECK(total <= size, path, ": truncated .npy header (header says ", total - prelude,
                " bytes, file has ", size - prelude, " after the prelude)");
  std::string text(total - prelude, '\0');
  CSIPOSE_CHECK(pread_full(fd, prelude, text.data(), text.size(), path) == text.size(), path,
                ": file shrank while reading its header");
  return parse_header_text(text, total, path);
}

void check_data_size(const NpyHeader& h, size_t size, const std::string& where) {
  const size_t have = size - h.data_offset;
  CSIPOSE_CHECK(have >= h.nbytes, where, ": truncated: header says ", shape_to_string(h.shape), " ",
                to_string(h.dtype), " = ", h.nbytes, " bytes of data, file has ", have);
}

NpyArray make_array(const NpyHeader& h, uint8_t* data, std::shared_ptr<void> owner, bool mapped) {
  NpyArray a;
  a.dtype = h.dtype;
  a.shape = h.shape;
  a.data = data;
  a.owner = std::move(owner);
  a.mapped = mapped;
  return a;
}

/// An array over `bytes` (kept alive by `owner`) when the data is aligned for its dtype, else a copy.
NpyArray view_or_copy(const NpyHeader& h, uint8_t* bytes, std::shared_ptr<void> owner, bool mapped,
                      const std::string& where) {
  uint8_t* data = bytes + h.data_offset;
  if (reinterpret_cast<uintptr_t>(data) % dtype_size(h.dtype) == 0) {
    return make_array(h, data, std::move(owner), mapped);
  }
  auto buf = aligned_buffer(h.nbytes, where);
  if (h.nbytes > 0) std::memcpy(buf.get(), data, h.nbytes);
  uint8_t* raw = buf.get();
  return make_array(h, raw, std::move(buf), false);
}

/// The version-1.0 header for an array: prelude + dict, space-padded and ended with '\n' so that
/// the data starts at a multiple of 64 bytes (numpy's ARRAY_ALIGN).
std::string npy_header_bytes(DType dtype, const std::vector<int64_t>& shape) {
  std::string dict = str_cat("{'descr': '", dtype_descr(dtype), "', 'fortran_order': False, 'shape': ",
                             shape_to_string(shape), ", }");
  const size_t unpadded = kPreludeV1 + dict.size() + 1;  // + '\n'
  const size_t padded = ((unpadded + kAlign - 1) / kAlign) * kAlign;
  dict.append(padded - unpadded, ' ');
  dict.push_back('\n');
  CSIPOSE_CHECK(dict.size() <= std::numeric_limits<uint16_t>::max(), "shape ", shape_to_string(shape),
                " needs a header longer than .npy format 1.0 allows");
  std::string out(kMagic, kMagicLen);
  out.push_back(1);
  out.push_back(0);
  put_le(out, dict.size(), 2);
  return out + dict;
}

// ---- CRC-32 (ISO-HDLC, as zip and zlib use: reflected polynomial 0xEDB88320) --------------------

struct Crc32Table {
  uint32_t t[256];
  Crc32Table() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
  }
};

/// Continues a CRC-32: crc32_update(0, all bytes) == crc32_update(crc32_update(0, a), b) for a+b.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  static const Crc32Table table;
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table.t[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

// ---- ZIP ----------------------------------------------------------------------------------------

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint16_t kZip64ExtraId = 0x0001;
constexpr size_t kLocalLen = 30;
constexpr size_t kCentralLen = 46;
constexpr size_t kEocdLen = 22;
constexpr size_t kZip64EocdLen = 56;
constexpr size_t kZip64LocatorLen = 20;
constexpr uint32_t kMax32 = 0xFFFFFFFFu;
constexpr uint16_t kMax16 = 0xFFFF;
constexpr uint16_t kDosDate1980 = (0 << 9) | (1 << 5) | 1;  // 1980-01-01, for reproducible files

struct ZipEntry {
  std::string name;
  uint16_t flags = 0;
  uint16_t method = 0;
  uint32_t crc = 0;
  uint64_t compressed = 0;
  uint64_t uncompressed = 0;
  uint64_t local_offset = 0;
};

/// Bounds-checked reads from the mapped archive; every error names the archive.
class ZipReader {
 public:
  ZipReader(const uint8_t* bytes, size_t size, const std::string& path) : p_(bytes), n_(size), path_(path) {}

  std::vector<ZipEntry> central_directory() const {
    const size_t eocd = find_eocd();
    uint64_t entries = le16(p_ + eocd + 10);
    uint64_t cd_size = le32(p_ + eocd + 12);
    uint64_t cd_offset = le32(p_ + eocd + 16);
    if (entries == kMax16 || cd_size == kMax32 || cd_offset == kMax32) {
      CSIPOSE_CHECK(eocd >= kZip64LocatorLen && le32(p_ + eocd - kZip64LocatorLen) == kZip64LocatorSig,
                    path_, ": ZIP64 end-of-central-directory locator missing");
      const uint64_t z = le64(p_ + eocd - kZip64LocatorLen + 8);
      need(z, kZip64EocdLen, "ZIP64 end-of-central-directory record");
      CSIPOSE_CHECK(le32(p_ + z) == kZip64EocdSig, path_, ": bad ZIP64 end-of-central-directory signature");
      entries = le64(p_ + z + 32);
      cd_size = le64(p_ + z + 40);
      cd_offset = le64(p_ + z + 48);
    }
    need(cd_offset, cd_size, "central directory");

    std::vector<ZipEntry> out;
    uint64_t pos = cd_offset;
    for (uint64_t i = 0; i < entries; ++i) {
      need(pos, kCentralLen, "central directory entry");
      const uint8_t* c = p_ + pos;
      CSIPOSE_CHECK(le32(c) == kCentralSig, path_, ": bad central directory entry signature at offset ", pos);
      ZipEntry e;
      e.flags = le16(c + 8);
      e.method = le16(c + 10);
      e.crc = le32(c + 16);
      e.compressed = le32(c + 20);
      e.uncompressed = le32(c + 24);
      const size_t name_len = le16(c + 28);
      const size_t extra_len = le16(c + 30);
      const size_t comment_len = le16(c + 32);
      e.local_offset = le32(c + 42);
      need(pos + kCentralLen, name_len + extra_len + comment_len, "central directory entry");
      e.name.assign(reinterpret_cast<const char*>(c + kCentralLen), name_len);
      apply_zip64_extra(c + kCentralLen + name_len, extra_len, &e);
      out.push_back(std::move(e));
      pos += kCentralLen + name_len + extra_len + comment_len;
    }
    return out;
  }

  /// The member's stored bytes (compressed or not) located through its local header.
  const uint8_t* member_data(const ZipEntry& e) const {
    need(e.local_offset, kLocalLen, "local header of '" + printable(e.name) + "'");
    const uint8_t* l = p_ + e.local_offset;
    CSIPOSE_CHECK(le32(l) == kLocalSig, path_, ": bad local header signature for member '",
                  printable(e.name), "'");
    const uint64_t start = e.local_offset + kLocalLen + le16(l + 26) + le16(l + 28);
    need(start, e.compressed, "data of member '" + printable(e.name) + "'");
    return p_ + start;
  }

 private:
  void need(uint64_t offset, uint64_t len, const std::string& what) const {
    CSIPOSE_CHECK(offset <= n_ && len <= n_ - offset, path_, ": truncated or corrupt zip: ", what,
                  " at offset ", offset, " (+", len, " bytes) is past the end of the ", n_, "-byte file");
  }

  size_t find_eocd() const {
    CSIPOSE_CHECK(n_ >= kEocdLen, path_, ": not a zip file (", n_, " bytes; an .npz is a zip archive)");
    const size_t lowest = n_ > kEocdLen + kMax16 ? n_ - kEocdLen - kMax16 : 0;
    for (size_t i = n_ - kEocdLen + 1; i-- > lowest;) {
      if (le32(p_ + i) == kEocdSig) return i;
    }
    fail(path_, ": not a zip file (no end-of-central-directory record; an .npz is a zip archive)");
  }

  /// The ZIP64 extra field holds, in this order, only the fields whose 32-bit value is 0xFFFFFFFF.
  void apply_zip64_extra(const uint8_t* extra, size_t len, ZipEntry* e) const {
    size_t pos = 0;
    while (pos + 4 <= len) {
      const uint16_t id = le16(extra + pos);
      const size_t size = le16(extra + pos + 2);
      CSIPOSE_CHECK(pos + 4 + size <= len, path_, ": corrupt extra field of member '",
                    printable(e->name), "'");
      if (id == kZip64ExtraId) {
        const uint8_t* f = extra + pos + 4;
        size_t k = 0;
        auto take = [&](uint64_t* field) {
          if (*field != kMax32) return;
          CSIPOSE_CHECK(k + 8 <= size, path_, ": short ZIP64 extra field in member '",
                        printable(e->name), "'");
          *field = le64(f + k);
          k += 8;
        };
        take(&e->uncompressed);
        take(&e->compressed);
        take(&e->local_offset);
      }
      pos += 4 + size;
    }
  }

  const uint8_t* p_;
  size_t n_;
  const std::string& path_;
};

/// Decompresses a raw-deflate member into an owned, 64-byte aligned buffer of `out_size` bytes.
std::shared_ptr<uint8_t> inflate_member(const uint8_t* in, uint64_t in_size, uint64_t out_size,
                                        const std::string& where) {
#ifdef CSIPOSE_HAVE_ZLIB
  // Deflate cannot expand more than 1032:1; a larger claim is a corrupt directory, not a reason to
  // allocate gigabytes.
  CSIPOSE_CHECK(out_size / 1032 <= in_size, where, ": corrupt zip directory: ", in_size,
                " compressed bytes cannot inflate to the ", out_size, " bytes it says");
  auto out = aligned_buffer(out_size, where);
  z_stream zs{};
  CSIPOSE_CHECK(inflateInit2(&zs, -MAX_WBITS) == Z_OK, where, ": zlib inflateInit2 failed");
  // zlib counts in uInt; feed both sides in chunks so members over 4 GiB work.
  constexpr uint64_t kChunk = 1u << 30;
  uint64_t in_left = in_size;
  uint64_t out_left = out_size;
  zs.next_in = const_cast<Bytef*>(in);
  zs.next_out = out.get();
  int rc = Z_OK;
  while (rc == Z_OK) {
    if (zs.avail_in == 0 && in_left > 0) {
      zs.avail_in = static_cast<uInt>(std::min(in_left, kChunk));
      in_left -= zs.avail_in;
    }
    if (zs.avail_out == 0 && out_left > 0) {
      zs.avail_out = static_cast<uInt>(std::min(out_left, kChunk));
      out_left -= zs.avail_out;
    }
    rc = inflate(&zs, Z_NO_FLUSH);  // Z_BUF_ERROR: input exhausted or output full, so corrupt
  }
  const uint64_t produced = zs.total_out;
  inflateEnd(&zs);
  CSIPOSE_CHECK(!(rc == Z_BUF_ERROR && produced == out_size), where,
                ": deflate data expands to more than the ", out_size, " bytes the zip directory says");
  CSIPOSE_CHECK(rc == Z_STREAM_END, where, ": corrupt deflate data (zlib error ", rc, " after ", produced,
                " of ", out_size, " bytes)");
  CSIPOSE_CHECK(produced == out_size, where, ": deflate data expands to ", produced,
                " bytes, the zip directory says ", out_size);
  return out;
#else
  (void)in;
  (void)in_size;
  (void)out_size;
  fail(where, ": member is deflate-compressed (np.savez_compressed) but csipose was built without "
       "zlib; re-save with np.savez, or install zlib and rebuild");
#endif
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

// ---- public API ---------------------------------------------------------------------------------

size_t dtype_size(DType d) { return info(d).size; }
const char* dtype_descr(DType d) { return info(d).descr; }
const char* to_string(DType d) { return info(d).name; }

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string NpyArray::shape_string() const { return shape_to_string(shape); }

NpyArray read_npy(const std::string& path, NpyLoad mode) {
  const Fd fd(path);
  const size_t size = file_size(fd, path);
  if (mode == NpyLoad::mmap) {
    auto map = map_file(fd, size, path);
    const NpyHeader h = parse_header(map.get(), size, path);
    check_data_size(h, size, path);
    uint8_t* base = map.get();
    return view_or_copy(h, base, std::move(map), /*mapped=*/true, path);
  }
  const NpyHeader h = read_header(fd, size, path);
  check_data_size(h, size, path);
  auto buf = aligned_buffer(h.nbytes, path);
  CSIPOSE_CHECK(pread_full(fd, h.data_offset, buf.get(), h.nbytes, path) == h.nbytes, path,
                ": file shrank while reading its data");
  uint8_t* raw = buf.get();
  return make_array(h, raw, std::move(buf), /*mapped=*/false);
}

NpyArray parse_npy(const uint8_t* bytes, size_t size, const std::string& name) {
  const NpyHeader h = parse_header(bytes, size, name);
  check_data_size(h, size, name);
  auto buf = aligned_buffer(h.nbytes, name);
  if (h.nbytes > 0) std::memcpy(buf.get(), bytes + h.data_offset, h.nbytes);
  uint8_t* raw = buf.get();
  return make_array(h, raw, std::move(buf), /*mapped=*/false);
}

NpyArray read_npy_header(const std::string& path) {
  const Fd fd(path);
  const size_t size = file_size(fd, path);
  const NpyHeader h = read_header(fd, size, path);
  check_data_size(h, size, path);
  return make_array(h, nullptr, nullptr, /*mapped=*/false);
}

void write_npy(const std::string& path, DType dtype, const std::vector<int64_t>& shape, const void* data) {
  const size_t nbytes = checked_nbytes(dtype, shape, path);
  CSIPOSE_CHECK(data != nullptr || nbytes == 0, path, ": write_npy got no data for shape ",
                shape_to_string(shape));
  const std::string header = npy_header_bytes(dtype, shape);
  write_file_atomic(path, [&](std::ostream& out) {
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    if (nbytes > 0) out.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  });
}

std::map<std::string, NpyArray> read_npz(const std::string& path) {
  const Fd fd(path);
  const size_t size = file_size(fd, path);
  CSIPOSE_CHECK(size > 0, path, ": not a zip file (the file is empty; an .npz is a zip archive)");
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd.get(), 0);
  CSIPOSE_CHECK(p != MAP_FAILED, "cannot mmap ", path, " (", size, " bytes): ", std::strerror(errno));
  const std::shared_ptr<uint8_t> map(static_cast<uint8_t*>(p), [size](uint8_t* q) { ::munmap(q, size); });

  const ZipReader zip(map.get(), size, path);
  std::map<std::string, NpyArray> out;
  for (const ZipEntry& e : zip.central_directory()) {
    if (ends_with(e.name, "/")) continue;  // a directory entry
    const std::string where = path + ":" + printable(e.name);
    CSIPOSE_CHECK((e.flags & 1) == 0, where, ": encrypted zip members are not supported");
    const uint8_t* stored = zip.member_data(e);
    const std::string key = ends_with(e.name, ".npy") ? e.name.substr(0, e.name.size() - 4) : e.name;
    CSIPOSE_CHECK(out.count(key) == 0, where, ": duplicate member name '", printable(key), "'");

    if (e.method == 0) {
      CSIPOSE_CHECK(e.compressed == e.uncompressed, where, ": stored member has compressed size ",
                    e.compressed, " != uncompressed size ", e.uncompressed);
      const uint32_t crc = crc32_update(0, stored, e.uncompressed);
      CSIPOSE_CHECK(crc == e.crc, where, ": CRC-32 mismatch (stored ", e.crc, ", computed ", crc,
                    "); the archive is corrupt");
      out.emplace(key, parse_npy(stored, e.uncompressed, where));
    } else if (e.method == 8) {
      auto buf = inflate_member(stored, e.compressed, e.uncompressed, where);
      const uint32_t crc = crc32_update(0, buf.get(), e.uncompressed);
      CSIPOSE_CHECK(crc == e.crc, where, ": CRC-32 mismatch (stored ", e.crc, ", computed ", crc,
                    "); the archive is corrupt");
      const NpyHeader h = parse_header(buf.get(), e.uncompressed, where);
      check_data_size(h, e.uncompressed, where);
      uint8_t* base = buf.get();
      out.emplace(key, view_or_copy(h, base, std::move(buf), /*mapped=*/false, where));
    } else {
      fail(where, ": unsupported zip compression method ", e.method,
           "; expected 0 (stored, np.savez) or 8 (deflate, np.savez_compressed)");
    }
  }
  return out;
}

void write_npz(const std::string& path, const std::vector<NpzMember>& members) {
  struct Planned {
    std::string name;  // with ".npy"
    std::string header;
    const void* data;
    size_t nbytes;
    uint32_t crc;
    uint64_t offset = 0;
  };
  std::vector<Planned> plan;
  for (const NpzMember& m : members) {
    CSIPOSE_CHECK(!m.name.empty(), path, ": npz member with an empty name");
    for (const Planned& q : plan) {
      CSIPOSE_CHECK(q.name != m.name + ".npy", path, ": duplicate npz member name '", m.name, "'");
    }
    const std::string where = path + ":" + m.name;
    const size_t nbytes = checked_nbytes(m.dtype, m.shape, where);
    CSIPOSE_CHECK(m.data != nullptr || nbytes == 0, where, ": write_npz got no data for shape ",
                  shape_to_string(m.shape));
    Planned p{m.name + ".npy", npy_header_bytes(m.dtype, m.shape), m.data, nbytes, 0};
    CSIPOSE_CHECK(p.name.size() <= kMax16, where, ": member name too long");
    p.crc = crc32_update(crc32_update(0, p.header.data(), p.header.size()), m.data, nbytes);
    plan.push_back(std::move(p));
  }

  write_file_atomic(path, [&](std::ostream& out) {
    uint64_t pos = 0;
    auto emit = [&](const void* bytes, size_t n) {
      if (n > 0) out.write(static_cast<const char*>(bytes), static_cast<std::streamsize>(n));
      pos += n;
    };
    auto emit_str = [&](const std::string& s) { emit(s.data(), s.size()); };

    // Sizes of one member (stored: compressed == uncompressed).
    auto member_size = [](const Planned& q) { return static_cast<uint64_t>(q.header.size() + q.nbytes); };

    for (Planned& q : plan) {
      q.offset = pos;
      const uint64_t n = member_size(q);
      const bool big = n >= kMax32;
      std::string h;
      put_le(h, kLocalSig, 4);
      put_le(h, big ? 45 : 20, 2);  // version needed: 4.5 for ZIP64
      put_le(h, 0, 2);              // flags
      put_le(h, 0, 2);              // method: stored
      put_le(h, 0, 2);              // time 00:00:00
      put_le(h, kDosDate1980, 2);
      put_le(h, q.crc, 4);
      put_le(h, big ? kMax32 : n, 4);
      put_le(h, big ? kMax32 : n, 4);
      put_le(h, q.name.size(), 2);
      put_le(h, big ? 20 : 0, 2);
      h += q.name;
      if (big) {
        put_le(h, kZip64ExtraId, 2);
        put_le(h, 16, 2);
        put_le(h, n, 8);
        put_le(h, n, 8);
      }
      emit_str(h);
      emit_str(q.header);
      emit(q.data, q.nbytes);
    }

    const uint64_t cd_offset = pos;
    for (const Planned& q : plan) {
      const uint64_t n = member_size(q);
      const bool big_size = n >= kMax32;
      const bool big_offset = q.offset >= kMax32;
      std::string extra;
      if (big_size || big_offset) {
        std::string fields;
        if (big_size) {
          put_le(fields, n, 8);
          put_le(fields, n, 8);
        }
        if (big_offset) put_le(fields, q.offset, 8);
        put_le(extra, kZip64ExtraId, 2);
        put_le(extra, fields.size(), 2);
        extra += fields;
      }
      std::string c;
      put_le(c, kCentralSig, 4);
      put_le(c, extra.empty() ? 20 : 45, 2);  // version made by (MS-DOS, 2.0 / 4.5)
      put_le(c, extra.empty() ? 20 : 45, 2);  // version needed
      put_le(c, 0, 2);
      put_le(c, 0, 2);
      put_le(c, 0, 2);
      put_le(c, kDosDate1980, 2);
      put_le(c, q.crc, 4);
      put_le(c, big_size ? kMax32 : n, 4);
      put_le(c, big_size ? kMax32 : n, 4);
      put_le(c, q.name.size(), 2);
      put_le(c, extra.size(), 2);
      put_le(c, 0, 2);  // comment length
      put_le(c, 0, 2);  // disk number start
      put_le(c, 0, 2);  // internal attributes
      put_le(c, 0, 4);  // external attributes
      put_le(c, big_offset ? kMax32 : q.offset, 4);
      c += q.name;
      c += extra;
      emit_str(c);
    }
    const uint64_t cd_size = pos - cd_offset;
    const uint64_t count = plan.size();

    const bool zip64 = count >= kMax16 || cd_size >= kMax32 || cd_offset >= kMax32;
    if (zip64) {
      const uint64_t z64_offset = pos;
      std::string z;
      put_le(z, kZip64EocdSig, 4);
      put_le(z, kZip64EocdLen - 12, 8);  // size of the rest of the record
      put_le(z, 45, 2);
      put_le(z, 45, 2);
      put_le(z, 0, 4);
      put_le(z, 0, 4);
      put_le(z, count, 8);
      put_le(z, count, 8);
      put_le(z, cd_size, 8);
      put_le(z, cd_offset, 8);
      put_le(z, kZip64LocatorSig, 4);
      put_le(z, 0, 4);
      put_le(z, z64_offset, 8);
      put_le(z, 1, 4);  // total number of disks
      emit_str(z);
    }
    std::string e;
    put_le(e, kEocdSig, 4);
    put_le(e, 0, 2);
    put_le(e, 0, 2);
    put_le(e, zip64 ? kMax16 : count, 2);
    put_le(e, zip64 ? kMax16 : count, 2);
    put_le(e, zip64 ? kMax32 : cd_size, 4);
    put_le(e, zip64 ? kMax32 : cd_offset, 4);
    put_le(e, 0, 2);  // comment length
    emit_str(e);
  });
}

void expect_dtype(const NpyArray& a, DType d, const std::string& what) {
  CSIPOSE_CHECK(a.dtype == d, what, ": expected dtype ", to_string(d), ", got ", to_string(a.dtype));
}

void expect_ndim(const NpyArray& a, size_t ndim, const std::string& what) {
  CSIPOSE_CHECK(a.shape.size() == ndim, what, ": expected ", ndim, " dims, got shape ", a.shape_string());
}

}  // namespace csipose
