// The op profiler behind `infer-bench --profile` (common/op_profile.h): calls are counted per op,
// self time excludes nested ops, only the recording thread's ops between start and stop count,
// and the table's shares add up.
#include <ATen/record_function.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <chrono>
#include <string>
#include <thread>

#include "common/check.h"
#include "common/op_profile.h"
#include "testing.h"

namespace csipose {
namespace {

const OpTime* find(const std::vector<OpTime>& ops, const std::string& name) {
  for (const OpTime& t : ops)
    if (t.name == name) return &t;
  return nullptr;
}

void sleepy_op(const char* name, int ms) {
  RECORD_USER_SCOPE(name);
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
}

TEST(OpProfile, CountsCallsAndSplitsSelfFromNestedTime) {
  torch::NoGradGuard no_grad;
  const torch::Tensor a = torch::ones({4}), b = torch::ones({4});
  (void)torch::add(a, b);  // before recording: not counted
  std::vector<OpTime> ops;
  {
    OpProfile p;
    for (int i = 0; i < 3; ++i) (void)torch::add(a, b);
    {
      RECORD_USER_SCOPE("test::outer");
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      sleepy_op("test::inner", 40);
    }
    p.stop();
    (void)torch::add(a, b);  // after stop: not counted
    ops = p.by_self_time();
  }
  const OpTime* add = find(ops, "aten::add");
  ASSERT_NE(add, nullptr);
  EXPECT_EQ(add->calls, 3);
  const OpTime* outer = find(ops, "test::outer");
  const OpTime* inner = find(ops, "test::inner");
  ASSERT_TRUE(outer != nullptr && inner != nullptr);
  EXPECT_EQ(outer->calls, 1);
  EXPECT_EQ(inner->calls, 1);
  // inner: 40 ms of its own; outer: 60 ms in all, of which 20 ms its own.
  EXPECT_GE(inner->self_ms, 40.0);
  EXPECT_DOUBLE_EQ(inner->self_ms, inner->total_ms);
  EXPECT_GE(outer->total_ms, 60.0);
  EXPECT_NEAR(outer->self_ms, outer->total_ms - inner->total_ms, 1e-9);
  EXPECT_GE(outer->self_ms, 20.0);
  EXPECT_LT(outer->self_ms, inner->self_ms);
  // Largest self time first.
  EXPECT_EQ(ops.front().name, "test::inner");
  for (size_t i = 1; i < ops.size(); ++i) EXPECT_GE(ops[i - 1].self_ms, ops[i].self_ms);
}

TEST(OpProfile, OtherThreadsAreNotRecordedAndOneProfilePerThread) {
  OpProfile p;
  std::thread([] { sleepy_op("test::elsewhere", 1); }).join();
  sleepy_op("test::here", 1);
  EXPECT_THROW(OpProfile(), Error);
  p.stop();
  const std::vector<OpTime> ops = p.by_self_time();
  EXPECT_NE(find(ops, "test::here"), nullptr);
  EXPECT_EQ(find(ops, "test::elsewhere"), nullptr);
}

TEST(OpProfile, TableGivesPerForwardTimesAndShares) {
  // Two forwards of 10 ms: op a 8 ms self in 4 calls, op b 6 ms in 2, op c 2 ms in 2; 4 ms outside.
  const std::vector<OpTime> ops = {{"a", 4, 8.0, 9.0}, {"b", 2, 6.0, 6.0}, {"c", 2, 2.0, 2.0}};
  const std::string t = format_op_table(ops, /*forwards=*/2, /*forward_ms=*/10.0, /*top=*/2);
  EXPECT_NE(t.find("| a | 2 | 4.0000 | 40.0% | 4.5000 |"), std::string::npos) << t;
  EXPECT_NE(t.find("| b | 1 | 3.0000 | 30.0% | 3.0000 |"), std::string::npos) << t;
  EXPECT_NE(t.find("| 1 other ops | 1 | 1.0000 | 10.0% |  |"), std::string::npos) << t;
  EXPECT_NE(t.find("| (outside recorded ops) | 0 | 2.0000 | 20.0% |  |"), std::string::npos) << t;
  EXPECT_THROW(format_op_table(ops, 0, 10.0, 2), Error);
}

}  // namespace
}  // namespace csipose
