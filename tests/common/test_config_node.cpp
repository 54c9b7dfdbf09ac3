// ConfigNode: typed getters with key paths, file:line in every error, unknown-key rejection by
// finish(), enums, and `--set` overrides applied before parsing.
#include "common/config_node.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "testing.h"

namespace csipose {
namespace {

ConfigNode load(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return ConfigNode::load_string(yaml, "cfg.yaml", overrides);
}

using testing::error_of;

enum class Granularity { per_tensor, per_channel };
constexpr std::initializer_list<std::pair<const char*, Granularity>> kGranularity = {
    {"per_tensor", Granularity::per_tensor}, {"per_channel", Granularity::per_channel}};

// ---- required / optional getters of each type -------------------------------------------------

TEST(ConfigNode, RequiredGettersOfEachType) {
  const auto c = load("flag: true\nn: -7\nbig: 9007199254740993\nx: 0.25\nname: wiflow\nf: 1.5\n");
  EXPECT_EQ(c.get<bool>("flag"), true);
  EXPECT_EQ(c.get<int>("n"), -7);
  EXPECT_EQ(c.get<int64_t>("big"), int64_t{9007199254740993});
  EXPECT_DOUBLE_EQ(c.get<double>("x"), 0.25);
  EXPECT_FLOAT_EQ(c.get<float>("f"), 1.5f);
  EXPECT_EQ(c.get<std::string>("name"), "wiflow");
  c.finish();
}

TEST(ConfigNode, OptionalGettersFallBackOnlyWhenAbsent) {
  const auto c = load("present: 3\n");
  EXPECT_EQ(c.get<int>("present", 9), 3);
  EXPECT_EQ(c.get<int>("absent", 9), 9);
  EXPECT_EQ(c.get<bool>("absent_bool", true), true);
  EXPECT_DOUBLE_EQ(c.get<double>("absent_double", 0.5), 0.5);
  EXPECT_EQ(c.get<std::string>("absent_str", "dflt"), "dflt");
  c.finish();
}

TEST(ConfigNode, RequiredMissingKeyNamesPathAndType) {
  const auto c = load("a: 1\n");
  EXPECT_EQ(error_of([&] { c.get<int>("epochs"); }),
            "cfg.yaml:1: epochs: required key is missing (expected an integer)");
}

TEST(ConfigNode, EmptyValueIsMissingForRequiredAndAnErrorForOptional) {
  // The key's own line is reported even though yaml-cpp puts an empty value on the next line.
  const auto c = load("a: 1\nlr:\nepochs: 3\n");
  EXPECT_EQ(error_of([&] { c.get<double>("lr"); }),
            "cfg.yaml:2: lr: required key is missing (expected a number)");
  EXPECT_EQ(error_of([&] { c.get<double>("lr", 0.1); }), "cfg.yaml:2: lr: empty value; expected a number");
}

TEST(ConfigNode, IntegersAreDecimalHexOrOctalPerYaml12) {
  const auto c = load("padded: 010\nhex: 0x1F\noct: 0o17\nplus: +5\nneg: -0x10\n");
  EXPECT_EQ(c.get<int>("padded"), 10);  // yaml-cpp alone would read octal 8
  EXPECT_EQ(c.get<int>("hex"), 31);
  EXPECT_EQ(c.get<int>("oct"), 15);
  EXPECT_EQ(c.get<int>("plus"), 5);
  EXPECT_EQ(c.get<int>("neg"), -16);
}

TEST(ConfigNode, IntegerLimits) {
  const auto c = load("i32max: 2147483647\ni32min: -2147483648\ni32over: 2147483648\n"
                      "i64max: 9223372036854775807\ni64min: -9223372036854775808\ni64over: 9223372036854775808\n");
  EXPECT_EQ(c.get<int>("i32max"), 2147483647);
  EXPECT_EQ(c.get<int>("i32min"), -2147483647 - 1);
  EXPECT_EQ(error_of([&] { c.get<int>("i32over"); }),
            "cfg.yaml:3: i32over: expected an integer, got \"2147483648\" (out of range)");
  EXPECT_EQ(c.get<int64_t>("i32over"), int64_t{2147483648});
  EXPECT_EQ(c.get<int64_t>("i64max"), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(c.get<int64_t>("i64min"), std::numeric_limits<int64_t>::min());
  EXPECT_NE(error_of([&] { c.get<int64_t>("i64over"); }).find("(out of range)"), std::string::npos);
}

// ---- wrong types ----------------------------------------------------------------------------------

TEST(ConfigNode, StringWhereIntExpected) {
  const auto c = load("model:\n  depth: deep\n");
  const auto m = c.child("model");
  EXPECT_EQ(error_of([&] { m.get<int>("depth"); }), "cfg.yaml:2: model.depth: expected an integer, got \"deep\"");
}

TEST(ConfigNode, MalformedScalarsOfEachType) {
  const auto c = load("frac: 1.5\nb: maybe\nd: fast\nsci: 1e3\n");
  EXPECT_EQ(error_of([&] { c.get<int>("frac"); }), "cfg.yaml:1: frac: expected an integer, got \"1.5\"");
  EXPECT_EQ(error_of([&] { c.get<bool>("b"); }), "cfg.yaml:2: b: expected a boolean, got \"maybe\"");
  EXPECT_EQ(error_of([&] { c.get<double>("d"); }), "cfg.yaml:3: d: expected a number, got \"fast\"");
  EXPECT_DOUBLE_EQ(c.get<double>("sci"), 1000.0);
  EXPECT_EQ(c.get<std::string>("frac"), "1.5");  // any scalar reads as its text
}

TEST(ConfigNode, ListOrMappingWhereScalarExpected) {
  // Block values start on the next line; the error names the key's line.
  const auto c = load("a: 1\nsizes:\n  - 1\n  - 2\nopt: {lr: 1}\n");
  EXPECT_EQ(error_of([&] { c.get<int>("sizes"); }), "cfg.yaml:2: sizes: expected an integer, got a list");
  EXPECT_EQ(error_of([&] { c.get<std::string>("opt"); }), "cfg.yaml:5: opt: expected a string, got a mapping");
  EXPECT_EQ(error_of([&] { c.get<int>("sizes", 3); }), "cfg.yaml:2: sizes: expected an integer, got a list");
}

TEST(ConfigNode, ScalarWhereSectionOrListExpected) {
  const auto c = load("model: 3\nlayers: {a: 1}\n");
  EXPECT_EQ(error_of([&] { c.child("model"); }), "cfg.yaml:1: model: expected a mapping of keys");
  EXPECT_EQ(error_of([&] { c.child("absent"); }), "cfg.yaml:1: absent: required section is missing");
  EXPECT_EQ(error_of([&] { c.elements("layers"); }), "cfg.yaml:2: layers: expected a list");
  EXPECT_EQ(error_of([&] { c.elements("absent"); }), "cfg.yaml:1: absent: required list is missing");
  EXPECT_EQ(error_of([&] { c.get_list<int>("model"); }), "cfg.yaml:1: model: expected a list of an integer");
}

// ---- ranges -----------------------------------------------------------------------------------

TEST(ConfigNode, IntRangeBoundariesAreInclusive) {
  const auto c = load("lo: 1\nhi: 8\nbelow: 0\nabove: 9\n");
  EXPECT_EQ(c.get_int("lo", 4, 1, 8), 1);
  EXPECT_EQ(c.get_int("hi", 4, 1, 8), 8);
  EXPECT_EQ(error_of([&] { c.get_int("below", 4, 1, 8); }), "cfg.yaml:3: below: value 0 is out of range [1, 8]");
  EXPECT_EQ(error_of([&] { c.get_int("above", 4, 1, 8); }), "cfg.yaml:4: above: value 9 is out of range [1, 8]");
  EXPECT_EQ(c.get_int("absent", 4, 1, 8), 4);
  EXPECT_EQ(error_of([&] { c.get_int("below", 4, 1); }), "cfg.yaml:3: below: value 0 is out of range [1, inf]");
}

TEST(ConfigNode, DoubleRangeBoundariesAreInclusive) {
  const auto c = load("lo: 0.0\nhi: 1\nbelow: -1e-9\nabove: 1.5\n");
  EXPECT_DOUBLE_EQ(c.get_double("lo", 0.5, 0.0, 1.0), 0.0);
  EXPECT_DOUBLE_EQ(c.get_double("hi", 0.5, 0.0, 1.0), 1.0);
  EXPECT_EQ(error_of([&] { c.get_double("below", 0.5, 0.0, 1.0); }),
            "cfg.yaml:3: below: value -1e-09 is out of range [0, 1]");
  EXPECT_EQ(error_of([&] { c.get_double("above", 0.5, 0.0, 1.0); }),
            "cfg.yaml:4: above: value 1.5 is out of range [0, 1]");
  EXPECT_DOUBLE_EQ(c.get_double("absent", 0.5, 0.0, 1.0), 0.5);
}

TEST(ConfigNode, DoubleRejectsNanAndInfinity) {
  const auto c = load("nan: .nan\ninf: .inf\nneg_inf: -.inf\nbare: nan\n");
  const double inf = std::numeric_limits<double>::infinity();
  EXPECT_EQ(error_of([&] { c.get_double("nan", 0.5, -inf, inf); }), "cfg.yaml:1: nan: value nan is out of range [-inf, inf]");
  EXPECT_NE(error_of([&] { c.get_double("inf", 0.5, -inf, inf); }).find("cfg.yaml:2: inf: value inf"), std::string::npos);
  EXPECT_NE(error_of([&] { c.get_double("neg_inf", 0.5, -inf, inf); }).find("cfg.yaml:3: neg_inf:"), std::string::npos);
  EXPECT_EQ(error_of([&] { c.get_double("bare", 0.5, -inf, inf); }), "cfg.yaml:4: bare: expected a number, got \"nan\"");
  EXPECT_TRUE(std::isnan(c.get<double>("nan")));  // the plain getter has no range
}

// ---- lists --------------------------------------------------------------------------------------

TEST(ConfigNode, ListsOfScalars) {
  const auto c = load("sizes: [1, 2, 3]\nnames:\n  - a\n  - b\nbad: [1, x, 3]\n");
  EXPECT_EQ(c.get_list<int>("sizes"), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(c.get_list<std::string>("names"), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(c.get_list<double>("absent", {0.5}), (std::vector<double>{0.5}));
  EXPECT_EQ(error_of([&] { c.get_list<int>("missing"); }),
            "cfg.yaml:1: missing: required key is missing (expected a list of an integer)");
  EXPECT_EQ(error_of([&] { c.get_list<int>("bad"); }), "cfg.yaml:5: bad[1]: expected an integer, got \"x\"");
  EXPECT_EQ(error_of([&] { load("l: [1, [2]]\n").get_list<int>("l"); }),
            "cfg.yaml:1: l[1]: expected an integer, got a list");
}

TEST(ConfigNode, ChildAndElementsOfListsOfMappings) {
  const auto c = load(
      "model:\n"
      "  name: wiflow\n"
      "  blocks:\n"
      "    - {kind: tcn, width: 64}\n"
      "    - kind: attn\n"
      "      width: 32\n");
  const auto m = c.child("model");
  EXPECT_EQ(m.path(), "model");
  EXPECT_EQ(m.source(), "cfg.yaml");
  EXPECT_EQ(m.get<std::string>("name"), "wiflow");
  const auto blocks = m.elements("blocks");
  ASSERT_EQ(blocks.size(), 2u);
  EXPECT_EQ(blocks[0].path(), "model.blocks[0]");
  EXPECT_EQ(blocks[1].path(), "model.blocks[1]");
  EXPECT_EQ(blocks[0].get<std::string>("kind"), "tcn");
  EXPECT_EQ(blocks[1].get<int>("width"), 32);
  EXPECT_EQ(error_of([&] { blocks[1].get<int>("kind"); }),
            "cfg.yaml:5: model.blocks[1].kind: expected an integer, got \"attn\"");
  blocks[0].get<int>("width");
  blocks[1].get<std::string>("kind");
  c.finish();
}

TEST(ConfigNode, ElementsRejectsNonMappingElement) {
  const auto c = load("blocks:\n  - {kind: a}\n  - 3\n");
  EXPECT_EQ(error_of([&] { c.elements("blocks"); }), "cfg.yaml:3: blocks[1]: expected a mapping of keys");
}

TEST(ConfigNode, KeysHasAndPaths) {
  const auto c = load("b: 1\na: 2\nc: {d: 3}\n");
  EXPECT_EQ(c.keys(), (std::vector<std::string>{"b", "a", "c"}));
  EXPECT_TRUE(c.has("a"));
  EXPECT_FALSE(c.has("z"));
  EXPECT_EQ(c.path(), "");
  EXPECT_EQ(c.path_of("a"), "a");
  EXPECT_EQ(c.child("c").path_of("d"), "c.d");
  EXPECT_EQ(c.child("c").path_of("[2]"), "c[2]");
}

// ---- enums ----------------------------------------------------------------------------------------

TEST(ConfigNode, EnumKnownValues) {
  const auto c = load("quant:\n  weights:\n    granularity: per_channel\n");
  const auto w = c.child("quant").child("weights");
  EXPECT_EQ(w.get_enum<Granularity>("granularity", kGranularity), Granularity::per_channel);
  EXPECT_EQ(w.get_enum<Granularity>("absent", Granularity::per_tensor, kGranularity), Granularity::per_tensor);
  c.finish();
}

TEST(ConfigNode, EnumUnknownValueListsTheNames) {
  // The example from the project's style guide, byte for byte (line 22 of the file).
  std::string yaml;
  for (int i = 0; i < 19; ++i) yaml += "# padding\n";
  yaml += "quant:\n  weights:\n    granularity: per_chanel\n";
  const auto c = ConfigNode::load_string(yaml, "configs/half.yaml");
  const auto w = c.child("quant").child("weights");
  EXPECT_EQ(error_of([&] { w.get_enum<Granularity>("granularity", kGranularity); }),
            "configs/half.yaml:22: quant.weights.granularity: unknown value \"per_chanel\"; "
            "expected one of: per_tensor, per_channel");
  EXPECT_EQ(error_of([&] { w.get_enum<Granularity>("granularity", Granularity::per_tensor, kGranularity); }),
            "configs/half.yaml:22: quant.weights.granularity: unknown value \"per_chanel\"; "
            "expected one of: per_tensor, per_channel");
}

TEST(ConfigNode, EnumMissingOrEmptyOrWrongType) {
  const auto c = load("g:\nh: [per_tensor]\n");
  EXPECT_EQ(error_of([&] { c.get_enum<Granularity>("absent", kGranularity); }),
            "cfg.yaml:1: absent: required key is missing (expected a string)");
  EXPECT_EQ(error_of([&] { c.get_enum<Granularity>("g", Granularity::per_tensor, kGranularity); }),
            "cfg.yaml:1: g: empty value; expected a string");
  EXPECT_EQ(error_of([&] { c.get_enum<Granularity>("h", kGranularity); }),
            "cfg.yaml:2: h: expected a string, got a list");
}

TEST(ConfigNode, ParseEnumOutsideYaml) {
  EXPECT_EQ(parse_enum<Granularity>("--granularity", "per_tensor", kGranularity), Granularity::per_tensor);
  EXPECT_EQ(error_of([] { parse_enum<Granularity>("--granularity", "x", kGranularity); }),
            "--granularity: unknown value \"x\"; expected one of: per_tensor, per_channel");
}

// ---- finish(): unknown keys ---------------------------------------------------------------------

TEST(ConfigNode, FinishRejectsUnknownTopLevelKey) {
  const auto c = load("epochs: 3\nepohcs: 4\n");
  c.get<int>("epochs");
  EXPECT_EQ(error_of([&] { c.finish(); }),
            "cfg.yaml:2: epohcs: unknown key (misspelled, or not used by this component)");
}

TEST(ConfigNode, FinishRejectsUnknownNestedKey) {
  const auto c = load("model:\n  depth: 3\n  widht: 64\ntrain: {epochs: 1}\n");
  const auto m = c.child("model");
  m.get<int>("depth");
  c.child("train").get<int>("epochs");
  EXPECT_EQ(error_of([&] { c.finish(); }),
            "cfg.yaml:3: model.widht: unknown key (misspelled, or not used by this component)");
  // finish() on the child checks only its own subtree, with the same path.
  EXPECT_EQ(error_of([&] { m.finish(); }),
            "cfg.yaml:3: model.widht: unknown key (misspelled, or not used by this component)");
}

TEST(ConfigNode, FinishRejectsUnknownKeyInsideListElement) {
  const auto c = load("blocks:\n  - kind: a\n  - kind: b\n    knid: c\n");
  for (const auto& b : c.elements("blocks")) b.get<std::string>("kind");
  EXPECT_EQ(error_of([&] { c.finish(); }),
            "cfg.yaml:4: blocks[1].knid: unknown key (misspelled, or not used by this component)");
}

TEST(ConfigNode, FinishRejectsUnreadSectionAndEnteredButUnreadKeys) {
  const auto unread_section = load("a: 1\nextra:\n  x: 1\n");
  unread_section.get<int>("a");
  EXPECT_EQ(error_of([&] { unread_section.finish(); }),
            "cfg.yaml:2: extra: unknown key (misspelled, or not used by this component)");

  const auto entered = load("model:\n  x: 1\n");
  entered.child("model");  // entering a section does not read its keys
  EXPECT_EQ(error_of([&] { entered.finish(); }),
            "cfg.yaml:2: model.x: unknown key (misspelled, or not used by this component)");
}

TEST(ConfigNode, FinishAcceptsFallbackReadsAndWholeLists) {
  const auto c = load("sizes: [1, 2]\nopt: 3\nmodel: {}\n");
  c.get_list<int>("sizes");
  c.get<int>("opt", 0);
  c.get<int>("not_there", 0);
  c.child("model");
  c.finish();
}

TEST(ConfigNode, DuplicateKeyIsRejected) {
  // yaml-cpp keeps both pairs and lookups see the first: the second would be silently ignored.
  EXPECT_EQ(error_of([] { load("lr: 0.1\nepochs: 3\nlr: 0.5\n"); }),
            "cfg.yaml:3: lr: duplicate key (first given on line 1)");
  EXPECT_EQ(error_of([] { load("blocks:\n  - {k: 1, k: 2}\n"); }),
            "cfg.yaml:2: blocks[0].k: duplicate key (first given on line 2)");
}

// ---- --set overrides --------------------------------------------------------------------------------

TEST(ConfigNode, OverrideSetsExistingNestedKey) {
  const auto c = load("train:\n  optim:\n    lr: 0.1\n    name: sgd\n", {"train.optim.lr=0.003"});
  const auto o = c.child("train").child("optim");
  EXPECT_DOUBLE_EQ(o.get<double>("lr"), 0.003);
  EXPECT_EQ(o.get<std::string>("name"), "sgd");
  c.finish();
}

TEST(ConfigNode, OverrideValueIsParsedAsYaml) {
  const auto c = load("sizes: [4]\nname: a\n", {"sizes=[1,2]", "name=hello world", "new.section={x: 1}"});
  EXPECT_EQ(c.get_list<int>("sizes"), (std::vector<int>{1, 2}));
  EXPECT_EQ(c.get<std::string>("name"), "hello world");
  EXPECT_EQ(c.child("new").child("section").get<int>("x"), 1);
  c.finish();
}

TEST(ConfigNode, OverrideCreatesKeysInEmptyFileAndLaterOverridesWin) {
  const auto c = load("", {"a.b=1", "a.b=2", "a.c=x=y"});
  EXPECT_EQ(c.child("a").get<int>("b"), 2);
  EXPECT_EQ(c.child("a").get<std::string>("c"), "x=y");  // only the first '=' splits
  c.finish();
}

TEST(ConfigNode, MisspelledOverrideKeyFailsInFinishNamingSet) {
  const auto c = load("model:\n  depth: 3\n", {"model.dpeth=4"});
  c.child("model").get<int>("depth");
  EXPECT_EQ(error_of([&] { c.finish(); }),
            "cfg.yaml: --set model.dpeth: model.dpeth: unknown key (misspelled, or not used by this component)");
}

TEST(ConfigNode, MisspelledOverrideSectionFailsInFinishNamingSet) {
  const auto c = load("model:\n  depth: 3\n", {"mdoel.depth=4"});
  c.child("model").get<int>("depth");
  EXPECT_EQ(error_of([&] { c.finish(); }),
            "cfg.yaml: --set mdoel.depth: mdoel: unknown key (misspelled, or not used by this component)");
}

TEST(ConfigNode, BadOverrideValueErrorsNameSet) {
  const auto c = load("model:\n  depth: 3\nsizes: [1]\n", {"model.depth=deep", "sizes=[1, x]"});
  EXPECT_EQ(error_of([&] { c.child("model").get<int>("depth"); }),
            "cfg.yaml: --set model.depth: model.depth: expected an integer, got \"deep\"");
  // An element of an overridden list is attributed to --set, not to line 1 of the override text.
  EXPECT_EQ(error_of([&] { c.get_list<int>("sizes"); }),
            "cfg.yaml: --set sizes: sizes[1]: expected an integer, got \"x\"");
}

TEST(ConfigNode, OverrideInsideSectionKeepsFileLinesForSiblings) {
  const auto c = load("model:\n  depth: 3\n  kind: tcnn\n", {"model.width=8"});
  const auto m = c.child("model");
  EXPECT_EQ(error_of([&] { m.get<int>("kind"); }), "cfg.yaml:3: model.kind: expected an integer, got \"tcnn\"");
  EXPECT_EQ(error_of([&] { c.error("model", "unsupported"); }), "cfg.yaml:1: model: unsupported");
}

TEST(ConfigNode, MalformedOverrides) {
  EXPECT_EQ(error_of([] { load("a: {b: 1}\n", {"a.b"}); }), "cfg.yaml: --set a.b: expected key.path=value");
  EXPECT_EQ(error_of([] { load("a: 1\n", {"=3"}); }), "cfg.yaml: --set =3: expected key.path=value");
  EXPECT_EQ(error_of([] { load("a: {b: 1}\n", {"a..b=1"}); }),
            "cfg.yaml: --set a..b=1: empty component in key path \"a..b\"");
  EXPECT_EQ(error_of([] { load("a: {b: 1}\n", {".a=1"}); }),
            "cfg.yaml: --set .a=1: empty component in key path \".a\"");
  EXPECT_EQ(error_of([] { load("a: {b: 1}\n", {"a.=1"}); }),
            "cfg.yaml: --set a.=1: empty component in key path \"a.\"");
  EXPECT_EQ(error_of([] { load("a: 3\n", {"a.b=1"}); }), "cfg.yaml: --set a.b=1: \"a\" is not a mapping");
  EXPECT_EQ(error_of([] { load("a: [1]\n", {"a.b=1"}); }), "cfg.yaml: --set a.b=1: \"a\" is not a mapping");
  EXPECT_NE(error_of([] { load("a: 1\n", {"a=[1, 2"}); }).find("cfg.yaml: --set a=[1, 2: value is not valid YAML"),
            std::string::npos);
}

TEST(ConfigNode, ApplyOverridesDirectly) {
  YAML::Node root = YAML::Load("x: {y: 1}\n");
  EXPECT_EQ(apply_overrides(root, {"x.y=2", "x.z=3"}), (std::vector<std::string>{"x.y", "x.z"}));
  EXPECT_EQ(root["x"]["y"].as<int>(), 2);
  EXPECT_EQ(root["x"]["z"].as<int>(), 3);
}

// ---- documents --------------------------------------------------------------------------------

TEST(ConfigNode, YamlSyntaxErrorHasLineNumber) {
  EXPECT_EQ(error_of([] { load("a: 1\nb: c: d\ne: 3\n"); }), "cfg.yaml:2: YAML syntax error: illegal map value");
  const std::string indent = error_of([] { load("a: 1\nb: 2\n  c: 3\n"); });
  EXPECT_EQ(indent.rfind("cfg.yaml:3: YAML syntax error: ", 0), 0u) << indent;
  // An unclosed flow list is noticed where the parser gives up: the line after it.
  const std::string unclosed = error_of([] { load("a: 1\nb: [1, 2\nc: 3\n"); });
  EXPECT_EQ(unclosed.rfind("cfg.yaml:3: YAML syntax error: ", 0), 0u) << unclosed;
}

TEST(ConfigNode, SecondDocumentAndComplexKeysAreRejected) {
  EXPECT_EQ(error_of([] { load("a: 1\n---\nb: 2\n"); }),
            "cfg.yaml:3: a config file holds one YAML document, found a second");
  EXPECT_EQ(error_of([] { load("a: 1\nm:\n  ? [1, 2]\n  : 3\n"); }), "cfg.yaml:3: m: keys must be plain scalars");
}

TEST(ConfigNode, EmptyFileIsAnEmptyMapping) {
  for (const char* text : {"", "# only a comment\n", "~\n"}) {
    const auto c = load(text);
    EXPECT_TRUE(c.keys().empty()) << text;
    EXPECT_EQ(c.get<int>("epochs", 5), 5);
    c.finish();
  }
}

TEST(ConfigNode, TopLevelMustBeAMapping) {
  EXPECT_EQ(error_of([] { load("- a\n- b\n"); }), "cfg.yaml: the top level must be a mapping of keys");
  EXPECT_EQ(error_of([] { load("just a string\n"); }), "cfg.yaml: the top level must be a mapping of keys");
}

TEST(ConfigNode, DumpRoundTripIncludesOverrides) {
  const std::string yaml =
      "name: \"a: b\"\nempty: ''\ntilde: '~'\nsizes: [1, 2]\nmodel:\n  depth: 3\n  blocks:\n    - kind: x\n";
  const auto c = load(yaml, {"model.depth=5"});
  const auto again = load(c.dump());
  EXPECT_EQ(again.get<std::string>("name"), "a: b");
  EXPECT_EQ(again.get<std::string>("empty"), "");
  EXPECT_EQ(again.get<std::string>("tilde"), "~");
  EXPECT_EQ(again.get_list<int>("sizes"), (std::vector<int>{1, 2}));
  const auto m = again.child("model");
  EXPECT_EQ(m.get<int>("depth"), 5);
  EXPECT_EQ(m.elements("blocks")[0].get<std::string>("kind"), "x");
  again.finish();
  EXPECT_EQ(again.dump(), c.dump());
  EXPECT_EQ(load(c.child("model").dump()).get<int>("depth"), 5);  // a child dumps its subtree
}

TEST(ConfigNode, LoadFileNamesThePath) {
  testing::TempDir dir;
  const std::string path = dir.file("configs/run.yaml");
  testing::write_file(path, "epochs: 3\nbatch: x\n");
  const auto c = ConfigNode::load_file(path, {"epochs=4"});
  EXPECT_EQ(c.source(), path);
  EXPECT_EQ(c.get<int>("epochs"), 4);
  EXPECT_EQ(error_of([&] { c.get<int>("batch"); }), path + ":2: batch: expected an integer, got \"x\"");
  EXPECT_EQ(error_of([&] { ConfigNode::load_file(dir.file("nope.yaml")); }),
            "cannot open config file " + dir.file("nope.yaml"));
}

TEST(ConfigNode, ErrorUsesKeyLocation) {
  const auto c = load("a: 1\nb: 2\n");
  EXPECT_EQ(error_of([&] { c.error("b", "is odd"); }), "cfg.yaml:2: b: is odd");
  EXPECT_EQ(error_of([&] { c.error("zz", "is missing"); }), "cfg.yaml:1: zz: is missing");
}

}  // namespace
}  // namespace csipose
