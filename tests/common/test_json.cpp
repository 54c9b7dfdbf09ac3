// Json: ordered objects, int64 precision, exact double round trips, escapes, copy-on-write, and
// parse errors with byte offsets.
#include "common/json.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/check.h"

#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

TEST(Json, BuildAndDumpOneLine) {
  Json j = Json::object();
  j.set("name", "wiflow").set("epochs", 3).set("lr", 0.5).set("ok", true).set("none", nullptr);
  j.set("sizes", std::vector<int>{1, 2}).set("empty_obj", Json::object()).set("empty_arr", Json::array());
  EXPECT_EQ(j.dump(),
            "{\"name\": \"wiflow\", \"epochs\": 3, \"lr\": 0.5, \"ok\": true, \"none\": null, "
            "\"sizes\": [1, 2], \"empty_obj\": {}, \"empty_arr\": []}");
}

TEST(Json, PrettyDump) {
  Json j = Json::object().set("a", 1).set("b", Json::array().push(true).push("x"));
  EXPECT_EQ(j.dump(2), "{\n  \"a\": 1,\n  \"b\": [\n    true,\n    \"x\"\n  ]\n}");
  EXPECT_EQ(Json::parse(j.dump(2)).dump(), j.dump());
}

TEST(Json, ObjectKeepsInsertionOrderAndSetReplacesInPlace) {
  Json j = Json::object().set("z", 1).set("a", 2).set("m", 3);
  j.set("a", 20);
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j.items()[0].first, "z");
  EXPECT_EQ(j.items()[1].first, "a");
  EXPECT_EQ(j.items()[2].first, "m");
  EXPECT_EQ(j.at("a").as_int(), 20);
  // Parsing keeps file order too (not sorted).
  EXPECT_EQ(Json::parse(R"({"z": 1, "a": 2, "m": {"y": 1, "b": 2}})").dump(),
            R"({"z": 1, "a": 2, "m": {"y": 1, "b": 2}})");
}

TEST(Json, ParseDumpRoundTrip) {
  const std::string text =
      R"({"s": "x", "i": -42, "d": 0.125, "t": true, "f": false, "n": null, "a": [1, [2, {}], []], "o": {"k": "v"}})";
  const Json j = Json::parse(text);
  EXPECT_EQ(j.dump(), text);
  EXPECT_EQ(j.at("s").as_string(), "x");
  EXPECT_EQ(j.at("i").as_int(), -42);
  EXPECT_TRUE(j.at("i").is_integer());
  EXPECT_DOUBLE_EQ(j.at("d").as_double(), 0.125);
  EXPECT_FALSE(j.at("d").is_integer());
  EXPECT_TRUE(j.at("t").as_bool());
  EXPECT_FALSE(j.at("f").as_bool());
  EXPECT_TRUE(j.at("n").is_null());
  EXPECT_EQ(j.at("a").at(1).at(0).as_int(), 2);
  EXPECT_EQ(j.at("o").at("k").as_string(), "v");
  EXPECT_TRUE(j.contains("o"));
  EXPECT_FALSE(j.contains("missing"));
}

TEST(Json, WhitespaceIsAllowedBetweenTokens) {
  const Json j = Json::parse(" \n\t{ \"a\" :\r\n [ 1 , 2 ] } \n");
  EXPECT_EQ(j.dump(), R"({"a": [1, 2]})");
}

TEST(Json, Int64PrecisionIsKept) {
  // 2^53 + 1 is the first integer a double cannot hold.
  const Json j = Json::parse(R"({"big": 9007199254740993, "max": 9223372036854775807, "min": -9223372036854775808})");
  EXPECT_EQ(j.at("big").as_int(), int64_t{9007199254740993});
  EXPECT_EQ(j.at("max").as_int(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(j.at("min").as_int(), std::numeric_limits<int64_t>::min());
  EXPECT_EQ(j.dump(), R"({"big": 9007199254740993, "max": 9223372036854775807, "min": -9223372036854775808})");
  EXPECT_EQ(Json(int64_t{9007199254740993}).dump(), "9007199254740993");
  EXPECT_EQ(Json(uint64_t{1} << 40).as_int(), int64_t{1} << 40);
  // Beyond int64 the value becomes a double rather than wrapping.
  const Json over = Json::parse("9223372036854775808");
  EXPECT_FALSE(over.is_integer());
  EXPECT_DOUBLE_EQ(over.as_double(), 9223372036854775808.0);
}

TEST(Json, DoublesRoundTripExactly) {
  for (double v : {0.1, 1.0 / 3.0, -2.5e-300, 1.7976931348623157e308, 123456.78901234567, 0.30000000000000004,
                   4.9e-324, 1e21}) {
    const Json back = Json::parse(Json(v).dump());
    EXPECT_EQ(back.as_double(), v) << Json(v).dump();
  }
  EXPECT_EQ(Json(0.1).dump(), "0.1");  // shortest form, not 0.10000000000000001
  EXPECT_EQ(Json(0.5f).dump(), "0.5");
  EXPECT_EQ(Json(2.0).dump(), "2");
  EXPECT_EQ(Json(-0.0).dump(), "-0");
}

TEST(Json, NonFiniteNumbersDumpAsNull) {
  EXPECT_EQ(Json(std::nan("")).dump(), "null");
  EXPECT_EQ(Json(std::numeric_limits<double>::infinity()).dump(), "null");
  EXPECT_EQ(Json(-std::numeric_limits<float>::infinity()).dump(), "null");
  const Json j = Json::object().set("loss", std::nan(""));
  EXPECT_TRUE(Json::parse(j.dump()).at("loss").is_null());
}

TEST(Json, NumberAccessors) {
  EXPECT_EQ(Json(3.0).as_int(), 3);
  EXPECT_DOUBLE_EQ(Json(7).as_double(), 7.0);
  EXPECT_TRUE(Json(7).is_number());
  EXPECT_TRUE(Json(7.5).is_number());
  EXPECT_EQ(error_of([] { Json(3.5).as_int(); }), "json: expected an integer");
  EXPECT_EQ(error_of([] { Json(1e19).as_int(); }), "json: expected an integer");
  EXPECT_EQ(error_of([] { Json(std::nan("")).as_int(); }), "json: expected an integer");
  EXPECT_EQ(error_of([] { Json("7").as_int(); }), "json: expected an integer");
  EXPECT_EQ(error_of([] { Json("7").as_double(); }), "json: expected a number");
  EXPECT_EQ(error_of([] { Json(1).as_bool(); }), "json: expected a boolean");
  EXPECT_EQ(error_of([] { Json(1).as_string(); }), "json: expected a string");
  EXPECT_DOUBLE_EQ(Json::parse("-1.5e2").as_double(), -150.0);
  EXPECT_DOUBLE_EQ(Json::parse("2E-3").as_double(), 0.002);
}

TEST(Json, StringEscapesRoundTrip) {
  const std::string raw = std::string("q\" b\\ n\n r\r t\t bs\b ff\f nul") + '\0' + "\x01\x1f end /";
  const std::string quoted = json_quote(raw);
  EXPECT_EQ(quoted, "\"q\\\" b\\\\ n\\n r\\r t\\t bs\\u0008 ff\\u000c nul\\u0000\\u0001\\u001f end /\"");
  EXPECT_EQ(Json::parse(quoted).as_string(), raw);
  EXPECT_EQ(Json::parse(R"("\/\b\f")").as_string(), "/\b\f");
  EXPECT_EQ(Json(raw).dump(), quoted);
}

TEST(Json, UnicodeEscapesDecodeToUtf8) {
  EXPECT_EQ(Json::parse(R"("\u0041")").as_string(), "A");
  EXPECT_EQ(Json::parse(R"("\u00e9")").as_string(), "\xC3\xA9");          // e acute, 2 bytes
  EXPECT_EQ(Json::parse(R"("\u20AC")").as_string(), "\xE2\x82\xAC");      // euro sign, 3 bytes
  EXPECT_EQ(Json::parse(R"("\uD83D\uDE00")").as_string(), "\xF0\x9F\x98\x80");  // U+1F600 via surrogates
  // UTF-8 passes through unescaped in both directions.
  EXPECT_EQ(Json("\xE2\x82\xAC").dump(), "\"\xE2\x82\xAC\"");
  EXPECT_EQ(Json::parse("\"\xE2\x82\xAC\"").as_string(), "\xE2\x82\xAC");
}

TEST(Json, BadUnicodeEscapesAreErrors) {
  EXPECT_EQ(error_of([] { Json::parse(R"("\u12G4")"); }), "json: bad \\u escape at byte 6");
  EXPECT_EQ(error_of([] { Json::parse(R"("\u12)"); }), "json: truncated \\u escape at byte 3");
  EXPECT_NE(error_of([] { Json::parse(R"("\uD83D")"); }).find("high surrogate"), std::string::npos);
  EXPECT_NE(error_of([] { Json::parse(R"("\uD83D\u0041")"); }).find("high surrogate"), std::string::npos);
  EXPECT_NE(error_of([] { Json::parse(R"("\uDE00")"); }).find("unpaired low surrogate"), std::string::npos);
}

TEST(Json, ParseErrorsGiveByteOffsets) {
  EXPECT_EQ(error_of([] { Json::parse(""); }), "json: unexpected end of input at byte 0");
  EXPECT_EQ(error_of([] { Json::parse("{\"a\": 1,}"); }), "json: expected a key string at byte 8");
  EXPECT_EQ(error_of([] { Json::parse("{\"a\" 1}"); }), "json: expected ':' at byte 5");
  EXPECT_EQ(error_of([] { Json::parse("[1 2]"); }), "json: expected ',' or ']' at byte 3");
  EXPECT_EQ(error_of([] { Json::parse("{\"a\": 1 \"b\": 2}"); }), "json: expected ',' or '}' at byte 8");
  EXPECT_EQ(error_of([] { Json::parse("[1, tru]"); }), "json: unexpected character 't' at byte 4");
  EXPECT_EQ(error_of([] { Json::parse("{} x"); }), "json: trailing characters at byte 3");
  EXPECT_EQ(error_of([] { Json::parse("\"abc"); }), "json: unterminated string at byte 4");
  EXPECT_EQ(error_of([] { Json::parse(R"("\q")"); }), "json: bad escape \\q at byte 3");
  EXPECT_EQ(error_of([] { Json::parse("[1, 1.2.3]"); }), "json: bad number '1.2.3' at byte 4");
  EXPECT_EQ(error_of([] { Json::parse("[-]"); }), "json: bad number '-' at byte 1");
  EXPECT_EQ(error_of([] { Json::parse("[1,"); }), "json: unexpected end of input at byte 3");
}

TEST(Json, CopyOnWriteLeavesTheOriginalAlone) {
  Json original = Json::object().set("a", 1).set("list", Json::array().push(1));
  Json copy = original;
  copy.set("a", 2).set("b", 3);
  EXPECT_EQ(original.dump(), R"({"a": 1, "list": [1]})");
  EXPECT_EQ(copy.dump(), R"({"a": 2, "list": [1], "b": 3})");

  Json arr = Json::array().push(1);
  Json arr_copy = arr;
  arr_copy.push(2);
  EXPECT_EQ(arr.dump(), "[1]");
  EXPECT_EQ(arr_copy.dump(), "[1, 2]");

  // Modifying the original after a copy leaves the copy alone too.
  Json snapshot = original;
  original.set("a", 99);
  EXPECT_EQ(snapshot.at("a").as_int(), 1);

  // A nested value copied out and changed does not reach back into its parent.
  Json inner = original.at("list");
  inner.push(2);
  EXPECT_EQ(original.at("list").size(), 1u);

  // Setting an object into itself stores the old value.
  Json self = Json::object().set("x", 1);
  self.set("me", self);
  EXPECT_EQ(self.dump(), R"({"x": 1, "me": {"x": 1}})");
}

TEST(Json, AccessErrorsNameTheProblem) {
  const Json o = Json::object().set("a", 1);
  EXPECT_EQ(error_of([&] { o.at("b"); }), "json: missing key \"b\"");
  EXPECT_EQ(error_of([&] { o.at(0); }), "json: expected an array");
  EXPECT_EQ(error_of([] { Json::array().push(1).at(1); }), "json: index 1 out of range (size 1)");
  EXPECT_EQ(error_of([] { Json(1).set("k", 2); }), "json: set(\"k\") on a non-object");
  EXPECT_EQ(error_of([] { Json(1).push(2); }), "json: push on a non-array");
  EXPECT_EQ(error_of([] { Json(1).at("k"); }), "json: expected an object to look up \"k\"");
  EXPECT_EQ(Json(1).size(), 0u);
  EXPECT_FALSE(Json(1).contains("k"));
}

TEST(Json, ConstructorsPickTheRightType) {
  EXPECT_EQ(Json(true).type(), Json::Type::boolean);
  EXPECT_EQ(Json(1).type(), Json::Type::integer);
  EXPECT_EQ(Json(1L).type(), Json::Type::integer);
  EXPECT_EQ(Json(1u).type(), Json::Type::integer);
  EXPECT_EQ(Json(size_t{1}).type(), Json::Type::integer);
  EXPECT_EQ(Json(1.0).type(), Json::Type::number);
  EXPECT_EQ(Json(1.0f).type(), Json::Type::number);
  EXPECT_EQ(Json("s").type(), Json::Type::string);
  EXPECT_EQ(Json(std::string("s")).type(), Json::Type::string);
  EXPECT_EQ(Json().type(), Json::Type::null);
  EXPECT_EQ(Json(std::vector<double>{0.5, 1.5}).dump(), "[0.5, 1.5]");
  EXPECT_EQ(Json(std::vector<std::string>{"a"}).dump(), R"(["a"])");
  EXPECT_EQ(Json(Json::Array{Json(1), Json("x")}).dump(), R"([1, "x"])");
}

}  // namespace
}  // namespace csipose
