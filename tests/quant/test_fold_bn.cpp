// BatchNorm folding (src/quant/fold_bn.h): a conv / linear followed by an eval-mode BatchNorm equals
// the folded layer within float32 rounding, grouped and dilated convs included; affine = false;
// errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "common/check.h"
#include "quant/fold_bn.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

/// Non-trivial running statistics and affine parameters (what training leaves behind).
template <typename BatchNorm>
void randomize(BatchNorm& bn, int64_t channels) {
  torch::NoGradGuard no_grad;
  bn->running_mean.copy_(torch::randn({channels}) * 0.5);
  bn->running_var.copy_(torch::rand({channels}) * 2.0 + 0.05);
  if (bn->options.affine()) {
    bn->weight.copy_(torch::randn({channels}) * 0.8 + 1.0);
    bn->bias.copy_(torch::randn({channels}) * 0.3);
  }
}

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(FoldBn, GroupedDilatedConv1dAndBatchNorm1d) {
  torch::manual_seed(1);
  for (const int64_t groups : {20, 4, 1})
    for (const bool bias : {true, false}) {
      torch::nn::Conv1d conv(torch::nn::Conv1dOptions(20, 20, 3).groups(groups).dilation(2).padding(4).bias(bias));
      torch::nn::BatchNorm1d bn(torch::nn::BatchNorm1dOptions(20).eps(1e-5));
      randomize(bn, 20);
      conv->eval();
      bn->eval();
      const torch::Tensor x = torch::randn({3, 20, 23});
      torch::NoGradGuard no_grad;
      const torch::Tensor want = bn->forward(conv->forward(x));
      const FoldedConv f = fold_bn(conv->weight, bias ? conv->bias : torch::Tensor(), *bn);
      EXPECT_EQ(f.weight.sizes(), conv->weight.sizes());
      EXPECT_EQ(f.weight.scalar_type(), torch::kFloat);
      const torch::Tensor got = torch::conv1d(x, f.weight, f.bias, 1, 4, 2, groups);
      EXPECT_LT(max_abs_diff(got, want), 1e-5) << "groups " << groups << " bias " << bias;
    }
}

TEST(FoldBn, Conv2dAndBatchNorm2d) {
  torch::manual_seed(2);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(6, 10, {1, 3}).stride({1, 2}).padding({0, 1}).bias(false));
  torch::nn::BatchNorm2d bn(10);
  randomize(bn, 10);
  conv->eval();
  bn->eval();
  const torch::Tensor x = torch::randn({2, 6, 5, 17});
  torch::NoGradGuard no_grad;
  const FoldedConv f = fold_bn(conv->weight, torch::Tensor(), *bn);
  const torch::Tensor got = torch::conv2d(x, f.weight, f.bias, std::vector<int64_t>{1, 2}, std::vector<int64_t>{0, 1});
  EXPECT_LT(max_abs_diff(got, bn->forward(conv->forward(x))), 1e-5);

  torch::nn::Conv2d conv3(torch::nn::Conv2dOptions(6, 8, 3).padding(1).groups(2));
  torch::nn::BatchNorm2d bn3(torch::nn::BatchNorm2dOptions(8).eps(1e-3));
  randomize(bn3, 8);
  bn3->eval();
  const FoldedConv f3 = fold_bn(conv3->weight, conv3->bias, *bn3);
  EXPECT_LT(max_abs_diff(torch::conv2d(x, f3.weight, f3.bias, 1, 1, 1, 2), bn3->forward(conv3->forward(x))), 1e-5);
}

TEST(FoldBn, LinearAndBatchNorm1d) {
  torch::manual_seed(3);
  torch::nn::Linear linear(37, 13);
  torch::nn::BatchNorm1d bn(13);
  randomize(bn, 13);
  bn->eval();
  const torch::Tensor x = torch::randn({9, 37});
  torch::NoGradGuard no_grad;
  const FoldedConv f = fold_bn(linear->weight, linear->bias, *bn);
  EXPECT_LT(max_abs_diff(torch::linear(x, f.weight, f.bias), bn->forward(linear->forward(x))), 1e-5);
}

TEST(FoldBn, NonAffineBatchNormAndTensorForm) {
  torch::manual_seed(4);
  torch::nn::Conv1d conv(torch::nn::Conv1dOptions(5, 7, 3));
  torch::nn::BatchNorm1d bn(torch::nn::BatchNorm1dOptions(7).affine(false));
  randomize(bn, 7);
  bn->eval();
  const torch::Tensor x = torch::randn({2, 5, 11});
  torch::NoGradGuard no_grad;
  const FoldedConv f = fold_bn(conv->weight, conv->bias, *bn);
  EXPECT_LT(max_abs_diff(torch::conv1d(x, f.weight, f.bias), bn->forward(conv->forward(x))), 1e-5);
  // The tensor form, by hand: gamma 2, beta 1, mean 3, var 3 (eps 1): a = 2 / sqrt(4) = 1.
  const FoldedConv g = fold_bn(torch::full({1, 2}, 4.0f), torch::full({1}, 5.0f), torch::full({1}, 2.0f),
                               torch::full({1}, 1.0f), torch::full({1}, 3.0f), torch::full({1}, 3.0f), 1.0);
  EXPECT_EQ(g.weight.sizes(), torch::IntArrayRef({1, 2}));
  EXPECT_FLOAT_EQ(g.weight[0][1].item<float>(), 4.0f);
  EXPECT_FLOAT_EQ(g.bias[0].item<float>(), (5.0f - 3.0f) * 1.0f + 1.0f);
}

TEST(FoldBn, Errors) {
  const torch::Tensor w = torch::ones({4, 3}), stats = torch::ones({4});
  EXPECT_TRUE(contains(error_of([&] { fold_bn(w, torch::Tensor(), stats, stats, torch::ones({5}), stats, 1e-5); }),
                       "running_mean of shape [5] does not fit 4 output channels"));
  EXPECT_TRUE(contains(error_of([&] { fold_bn(w, torch::Tensor(), stats, stats, stats, -stats, 1e-5); }),
                       "running_var has negative entries"));
  EXPECT_TRUE(contains(error_of([&] { fold_bn(w, torch::Tensor(), stats, stats, stats, stats, 0.0); }), "eps = 0"));
  torch::nn::BatchNorm1d no_stats(torch::nn::BatchNorm1dOptions(4).track_running_stats(false));
  EXPECT_TRUE(contains(error_of([&] { fold_bn(w, torch::Tensor(), *no_stats); }), "does not track running statistics"));
}

}  // namespace
}  // namespace csipose
