// The training components one by one, against values computed by hand (the arithmetic is in the
// comments): config round trip and errors, PoseLoss, AdamW/SGD steps, gradient clipping, LR
// schedules at given steps, plateau behaviour, EMA update math, mixup and augmentations.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/rng.h"
#include "train/augment.h"
#include "train/ema.h"
#include "train/loss.h"
#include "train/optim.h"
#include "train/schedule.h"
#include "train/train_config.h"
#include "testing.h"

namespace csipose {
namespace {

using testing::error_of;

const char* kMinimal = "model: {type: wiflow, preset: wiflow_tiny}\n";

// ---- config ----------------------------------------------------------------------------------------

TEST(TrainConfig, ResolvedYamlRoundTrips) {
  const auto c = ExperimentConfig::parse(std::string(kMinimal) +
                                             "name: x\nseed: 7\ntrain:\n  epochs: 3\n  optimizer: {lr: 3.0e-4, betas: [0.8, 0.99]}\n"
                                             "  schedule: {type: plateau, plateau: {metric: val/full/mpjpe, patience: 2}}\n"
                                             "  tta: {views: [identity, 'shift:1', 'scale:1.05']}\n",
                                         "<test>");
  EXPECT_EQ(c.seed, 7u);
  EXPECT_EQ(c.train.epochs, 3);
  EXPECT_DOUBLE_EQ(c.train.optimizer.lr, 3e-4);
  EXPECT_DOUBLE_EQ(c.train.optimizer.beta1, 0.8);
  EXPECT_EQ(c.train.schedule.type, ScheduleType::plateau);
  EXPECT_EQ(c.train.schedule.plateau_metric.mode(), MonitorMode::min);
  EXPECT_EQ(c.train.tta.views.size(), 3u);
  const std::string yaml = c.to_yaml();
  const auto again = ExperimentConfig::parse(yaml, "<resolved>");
  EXPECT_EQ(again.to_yaml(), yaml);
  EXPECT_EQ(again.model.wiflow.tcn_channels, c.model.wiflow.tcn_channels);
  EXPECT_DOUBLE_EQ(again.train.schedule.min_lr, 1e-5);  // a default, now spelled out
}

TEST(TrainConfig, OverridesApplyBeforeParsing) {
  const auto c = ExperimentConfig::parse(kMinimal, "<test>", {"train.batch_size=16", "train.ema.decay=0.99"});
  EXPECT_EQ(c.train.batch_size, 16);
  EXPECT_DOUBLE_EQ(c.train.ema.decay, 0.99);
  const std::string e = error_of([] { ExperimentConfig::parse(kMinimal, "<test>", {"train.batchsize=16"}); });
  EXPECT_NE(e.find("train.batchsize"), std::string::npos) << e;
}

TEST(TrainConfig, ErrorsNameTheKey) {
  auto err = [](const std::string& yaml) { return error_of([&] { ExperimentConfig::parse(kMinimal + yaml, "<test>"); }); };
  std::string e = err("train: {optimizer: {lrr: 0.1}}\n");
  EXPECT_NE(e.find("train.optimizer.lrr"), std::string::npos) << e;
  e = err("train: {schedule: {type: cosin}}\n");
  EXPECT_NE(e.find("train.schedule.type"), std::string::npos) << e;
  EXPECT_NE(e.find("constant, cosine, plateau"), std::string::npos) << e;
  e = err("train: {best_metric: val/clean/pck}\n");
  EXPECT_NE(e.find("train.best_metric"), std::string::npos) << e;
  e = err("train: {best_metric: test/clean/pck@20}\n");
  EXPECT_NE(e.find("not a validation metric"), std::string::npos) << e;
  e = err("train: {tta: {views: [identity, 'flip']}}\n");
  EXPECT_NE(e.find("train.tta.views"), std::string::npos) << e;
  e = err("train: {optimizer: {betas: [0.9]}}\n");
  EXPECT_NE(e.find("train.optimizer.betas"), std::string::npos) << e;
  e = err("train: {epochs: 0}\n");
  EXPECT_NE(e.find("train.epochs"), std::string::npos) << e;
  e = err("data: {train_subset: dirty}\n");
  EXPECT_NE(e.find("data.train_subset"), std::string::npos) << e;
  e = error_of([] { ExperimentConfig::parse("name: x\n", "<test>"); });
  EXPECT_NE(e.find("model"), std::string::npos) << e;
}

// ---- loss --------------------------------------------------------------------------------------------

TEST(PoseLoss, HandComputedLinearAndQuadraticRegimes) {
  const PoseLoss loss({{0, 1}}, 2);
  const auto gt = torch::tensor({0.f, 0.f, 0.f, 0.4f}).view({1, 2, 2});
  // Joint 1 off by 0.3 in x: smooth_l1 (beta 0.1) = 0.3 - 0.05 = 0.25 on 1 of 4 elements -> 0.0625.
  // Bone length 0.5 vs 0.4: diff 0.1 >= beta 0.05 -> 0.1 - 0.025 = 0.075, weight 0.2 -> 0.015.
  const auto far = torch::tensor({0.f, 0.f, 0.3f, 0.4f}).view({1, 2, 2});
  EXPECT_NEAR(loss(far, gt).item<double>(), 0.0625 + 0.015, 1e-6);
  // Off by 0.05: 0.5 * 0.05^2 / 0.1 = 0.0125 -> /4 = 0.003125; bone sqrt(0.1625) - 0.4 = 0.0031129
  // < 0.05 -> 0.5 * 0.0031129^2 / 0.05 = 9.690e-5, times 0.2 = 1.938e-5.
  const auto near = torch::tensor({0.f, 0.f, 0.05f, 0.4f}).view({1, 2, 2});
  EXPECT_NEAR(loss(near, gt).item<double>(), 0.003125 + 1.938e-5, 2e-7);
  EXPECT_NEAR(loss(gt, gt).item<double>(), 0.0, 1e-9);
}

TEST(PoseLoss, SkeletonsHaveTheirBones) {
  EXPECT_EQ(skeleton_bones("body25_15").size(), 14u);
  EXPECT_EQ(skeleton_bones("coco17").size(), 16u);
  EXPECT_NE(error_of([] { skeleton_bones("h36m"); }).find("body25_15, coco17"), std::string::npos);
  EXPECT_NE(error_of([] { PoseLoss({{0, 15}}, 15); }).find("outside 15 joints"), std::string::npos);
}

// ---- optimizers -------------------------------------------------------------------------------------

struct Scalar : torch::nn::Module {
  torch::Tensor w;
  explicit Scalar(float v) { w = register_parameter("w", torch::full({1}, v)); }
};

TEST(Optimizer, AdamWTwoStepsByHand) {
  Scalar m(1.0f);
  OptimizerConfig c;  // betas 0.9/0.999, eps 1e-8
  c.weight_decay = 0.01;
  Optimizer opt(c, optimizer_params(m, true));
  // Step 1, g = 0.5, lr 0.1: p = 1 * (1 - 0.001) = 0.999; m = 0.05, v = 0.00025; m_hat = 0.5,
  // sqrt(v_hat) = 0.5 -> p -= 0.1 * 0.5 / 0.5 = 0.1 -> 0.899.
  m.w.mutable_grad() = torch::full({1}, 0.5f);
  opt.step(0.1);
  EXPECT_NEAR(m.w.item<double>(), 0.899, 1e-6);
  // Step 2, g = 0.5: p = 0.899 * 0.999 = 0.898101; m = 0.095, v = 0.00049975; bias corrections
  // 0.19 and 0.001999 -> m_hat = 0.5, sqrt(v_hat) = 0.5 -> p -= 0.1 -> 0.798101.
  m.w.mutable_grad() = torch::full({1}, 0.5f);
  opt.step(0.1);
  EXPECT_NEAR(m.w.item<double>(), 0.798101, 1e-6);
  EXPECT_EQ(opt.steps(), 2);
  const auto st = opt.state_tensors();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].first, "optim.w.exp_avg");
  EXPECT_NEAR(st[0].second.item<double>(), 0.095, 1e-7);
}

TEST(Optimizer, SgdMomentumByHand) {
  Scalar m(1.0f);
  OptimizerConfig c;
  c.type = OptimizerType::sgd;
  c.weight_decay = 0.0;
  Optimizer opt(c, optimizer_params(m, true));
  m.w.mutable_grad() = torch::full({1}, 0.5f);
  opt.step(0.1);  // buf = 0.5 -> p = 0.95
  EXPECT_NEAR(m.w.item<double>(), 0.95, 1e-7);
  m.w.mutable_grad() = torch::full({1}, 0.5f);
  opt.step(0.1);  // buf = 0.9 * 0.5 + 0.5 = 0.95 -> p = 0.855
  EXPECT_NEAR(m.w.item<double>(), 0.855, 1e-6);
}

TEST(Optimizer, StateRoundTripContinuesIdentically) {
  torch::manual_seed(3);
  torch::nn::Linear a(4, 3), b(4, 3);
  {
    torch::NoGradGuard g;
    for (size_t i = 0; i < a->parameters().size(); ++i) b->parameters()[i].copy_(a->parameters()[i]);
  }
  OptimizerConfig c;
  Optimizer oa(c, optimizer_params(*a, false));
  const auto x = torch::randn({5, 4});
  auto train_step = [&](torch::nn::Linear& m, Optimizer& o) {
    o.zero_grad();
    m->forward(x).pow(2).sum().backward();
    o.step(0.01);
  };
  train_step(a, oa);
  std::map<std::string, torch::Tensor> saved;
  for (const auto& kv : oa.state_tensors()) saved[kv.first] = kv.second.clone();
  {
    torch::NoGradGuard g;
    for (size_t i = 0; i < a->parameters().size(); ++i) b->parameters()[i].copy_(a->parameters()[i]);
  }
  Optimizer ob(c, optimizer_params(*b, false));
  ob.load_state(saved, oa.steps());
  train_step(a, oa);
  train_step(b, ob);
  for (size_t i = 0; i < a->parameters().size(); ++i) EXPECT_TRUE(torch::equal(a->parameters()[i], b->parameters()[i]));
  saved["optim.nonexistent.exp_avg"] = torch::zeros({1});
  EXPECT_NE(error_of([&] { ob.load_state(saved, 1); }).find("match no parameter"), std::string::npos);
}

TEST(Optimizer, NormAndBiasDecayCanBeExcluded) {
  torch::nn::Linear lin(3, 2);
  const auto ps = optimizer_params(*lin, false);
  ASSERT_EQ(ps.size(), 2u);
  EXPECT_TRUE(ps[0].decay);   // weight (2-D)
  EXPECT_FALSE(ps[1].decay);  // bias (1-D)
}

TEST(Optimizer, ClipGradNormScalesToMaxNorm) {
  Scalar a(0.f), b(0.f);
  a.w.mutable_grad() = torch::full({1}, 3.f);
  b.w.mutable_grad() = torch::full({1}, 4.f);
  std::vector<NamedParam> ps{{"a", a.w, true}, {"b", b.w, true}};
  const auto norm = clip_grad_norm(ps, 1.0);
  EXPECT_NEAR(norm.item<double>(), 5.0, 1e-6);  // sqrt(9 + 16)
  EXPECT_NEAR(a.w.grad().item<double>(), 0.6, 1e-6);  // 3 / (5 + 1e-6)
  EXPECT_NEAR(b.w.grad().item<double>(), 0.8, 1e-6);
  clip_grad_norm(ps, 10.0);  // below the limit: unchanged (coefficient clamped to 1)
  EXPECT_NEAR(a.w.grad().item<double>(), 0.6, 1e-6);
}

// ---- schedules ---------------------------------------------------------------------------------------

TEST(LrSchedule, CosineWithWarmupAtGivenSteps) {
  ScheduleConfig c;  // cosine, warmup 1 epoch from 1% of lr, min_lr 1e-5
  const LrSchedule s(c, 1e-3, /*steps_per_epoch=*/10, /*epochs=*/5);
  EXPECT_EQ(s.warmup_steps(), 10);
  EXPECT_EQ(s.total_steps(), 50);
  EXPECT_NEAR(s.lr_at(0), 1e-5, 1e-15);                  // 1e-3 * 0.01
  EXPECT_NEAR(s.lr_at(5), 1e-3 * (0.01 + 0.99 * 0.5), 1e-15);
  EXPECT_NEAR(s.lr_at(10), 1e-3, 1e-15);                 // cosine starts at the peak
  EXPECT_NEAR(s.lr_at(30), 1e-5 + (1e-3 - 1e-5) * 0.5, 1e-15);  // halfway: cos(pi/2) = 0
  EXPECT_NEAR(s.lr_at(20), 1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + std::cos(M_PI * 0.25)), 1e-15);
  EXPECT_NEAR(s.lr_at(50), 1e-5, 1e-15);
}

TEST(LrSchedule, ConstantAndNoWarmup) {
  ScheduleConfig c;
  c.type = ScheduleType::constant;
  c.warmup_epochs = 0;
  const LrSchedule s(c, 2e-3, 7, 3);
  for (int64_t step : {0, 1, 20}) EXPECT_DOUBLE_EQ(s.lr_at(step), 2e-3);
}

TEST(LrSchedule, PlateauReducesAfterPatience) {
  ScheduleConfig c;
  c.type = ScheduleType::plateau;
  c.warmup_epochs = 0;
  c.plateau_patience = 1;
  c.plateau_factor = 0.5;
  c.plateau_threshold = 0.0;
  LrSchedule s(c, 1e-3, 10, 10);  // monitors val/clean/pck@20: higher is better
  EXPECT_FALSE(s.on_validation(0.5));  // best
  EXPECT_FALSE(s.on_validation(0.6));  // best
  EXPECT_FALSE(s.on_validation(0.6));  // bad 1 (not strictly better)
  EXPECT_DOUBLE_EQ(s.lr_at(100), 1e-3);
  EXPECT_TRUE(s.on_validation(0.59));  // bad 2 > patience 1 -> halve
  EXPECT_DOUBLE_EQ(s.lr_at(100), 5e-4);
  EXPECT_FALSE(s.on_validation(0.55));  // bad 1 again
  EXPECT_FALSE(s.on_validation(0.7));   // best
  EXPECT_DOUBLE_EQ(s.lr_at(100), 5e-4);
  // State round trip: a restored schedule continues identically.
  LrSchedule t(c, 1e-3, 10, 10);
  t.load_state(s.state());
  EXPECT_EQ(t.on_validation(0.6), s.on_validation(0.6));
  EXPECT_EQ(t.on_validation(0.6), s.on_validation(0.6));
  EXPECT_DOUBLE_EQ(t.lr_at(100), s.lr_at(100));
  EXPECT_DOUBLE_EQ(s.lr_at(100), 2.5e-4);
}

TEST(LrSchedule, PlateauThresholdIsRelativeAndCooldownWaits) {
  ScheduleConfig c;
  c.type = ScheduleType::plateau;
  c.warmup_epochs = 0;
  c.plateau_patience = 0;
  c.plateau_threshold = 0.1;
  c.plateau_cooldown = 1;
  LrSchedule s(c, 1.0, 1, 10);
  EXPECT_FALSE(s.on_validation(0.5));
  EXPECT_TRUE(s.on_validation(0.54));   // needs > 0.55: bad 1 > 0 -> reduce, cooldown 1
  EXPECT_FALSE(s.on_validation(0.54));  // in cooldown: bad counter reset
  EXPECT_TRUE(s.on_validation(0.54));   // reduce again
  EXPECT_DOUBLE_EQ(s.lr_at(0), 0.25);
}

// ---- EMA ---------------------------------------------------------------------------------------------

struct WithBuffer : torch::nn::Module {
  torch::Tensor w, b;
  WithBuffer() {
    w = register_parameter("w", torch::ones({1}));
    b = register_buffer("b", torch::zeros({1}));
  }
};

TEST(Ema, UpdateMathWithAndWithoutWarmup) {
  WithBuffer m;
  EmaConfig c;
  c.decay = 0.9;
  c.warmup = false;
  Ema ema(c, m);
  torch::NoGradGuard g;
  m.w.fill_(2.f);
  m.b.fill_(5.f);
  ema.update(m);  // 0.9 * 1 + 0.1 * 2 = 1.1; float buffers too: 0.9 * 0 + 0.1 * 5 = 0.5
  m.w.fill_(3.f);
  ema.update(m);  // 0.9 * 1.1 + 0.1 * 3 = 1.29
  WithBuffer out;
  ema.copy_to(out);
  EXPECT_NEAR(out.w.item<double>(), 1.29, 1e-6);
  EXPECT_NEAR(out.b.item<double>(), 0.95, 1e-6);  // second update: 0.9 * 0.5 + 0.1 * 5

  WithBuffer n;
  c.warmup = true;
  Ema warm(c, n);
  EXPECT_DOUBLE_EQ(warm.next_decay(), 0.1);  // min(0.9, 1/10)
  n.w.fill_(2.f);
  warm.update(n);  // 0.1 * 1 + 0.9 * 2 = 1.9
  EXPECT_DOUBLE_EQ(warm.next_decay(), 2.0 / 11.0);
  n.w.fill_(3.f);
  warm.update(n);  // (2/11) * 1.9 + (9/11) * 3 = 2.8
  warm.copy_to(out);
  EXPECT_NEAR(out.w.item<double>(), 2.8, 1e-6);
  for (int i = 0; i < 200; ++i) warm.update(n);
  EXPECT_DOUBLE_EQ(warm.next_decay(), 0.9);  // (1 + n) / (10 + n) passed 0.9 at n = 80
}

// ---- mixup and augmentation -------------------------------------------------------------------------

TEST(Mixup, BetaAndGammaMoments) {
  Rng rng(11);
  const int n = 20000;
  double s = 0, s2 = 0, g = 0;
  for (int i = 0; i < n; ++i) {
    const double b = sample_beta(0.4, 0.4, rng);
    ASSERT_GE(b, 0.0);
    ASSERT_LE(b, 1.0);
    s += b;
    s2 += b * b;
    g += sample_gamma(2.5, rng);
  }
  const double mean = s / n, var = s2 / n - mean * mean;
  EXPECT_NEAR(mean, 0.5, 0.01);
  EXPECT_NEAR(var, 1.0 / (4.0 * (2 * 0.4 + 1)), 0.005);  // Beta(a,a): 1 / (4 (2a + 1)) = 0.1389
  EXPECT_NEAR(g / n, 2.5, 0.05);                          // Gamma(k, 1) mean k
}

TEST(Mixup, FixedSeedGivesAFixedDrawAndExactMixing) {
  MixupConfig c;
  c.alpha = 0.4;
  Rng r1(5, 3), r2(5, 3);
  const MixupDraw a = draw_mixup(c, 4, r1), b = draw_mixup(c, 4, r2);
  ASSERT_TRUE(a.mixed);
  EXPECT_EQ(a.lambda, b.lambda);
  EXPECT_EQ(a.partner, b.partner);
  std::vector<int64_t> sorted = a.partner;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(sorted, (std::vector<int64_t>{0, 1, 2, 3}));
  auto x = torch::arange(4, torch::kFloat32).view({4, 1}), y = 10 * torch::arange(4, torch::kFloat32).view({4, 1, 1});
  const auto x0 = x.clone(), y0 = y.clone();
  apply_mixup(x, y, a);
  for (int64_t i = 0; i < 4; ++i) {
    const double j = static_cast<double>(a.partner[static_cast<size_t>(i)]);
    EXPECT_NEAR(x[i][0].item<double>(), a.lambda * i + (1 - a.lambda) * j, 1e-6);
    EXPECT_NEAR(y[i][0][0].item<double>(), 10 * (a.lambda * i + (1 - a.lambda) * j), 1e-5);
  }
  c.prob = 0.0;
  EXPECT_FALSE(draw_mixup(c, 4, r1).mixed);
}

TEST(Augment, LinkDropZeroesWholeLinks) {
  torch::manual_seed(1);
  const auto x = torch::rand({6, 540, 20}) + 0.5;
  AugmentConfig c;
  c.link_drop = 0.5;
  const auto out = augment_inputs(x, c, num_links({540, 20}));
  const auto per_link = out.view({6, 9, 60, 20});
  const auto kept = per_link.eq(x.view({6, 9, 60, 20})).all(-1).all(-1);
  const auto zero = per_link.eq(0).all(-1).all(-1);
  EXPECT_TRUE((kept | zero).all().item<bool>());
  EXPECT_GT(zero.sum().item<int64_t>(), 0);
  EXPECT_GT(kept.sum().item<int64_t>(), 0);
  c.link_drop = 1.0;
  EXPECT_EQ(augment_inputs(x, c, 9).abs().sum().item<double>(), 0.0);
}

TEST(Augment, TimeMaskIsOneShortSpanAndScaleIsPerSample) {
  torch::manual_seed(2);
  const auto x = torch::rand({16, 3, 114, 10}) + 0.5;
  AugmentConfig c;
  c.time_mask = 3;
  const auto out = augment_inputs(x, c, num_links({3, 114, 10}));
  const auto zero_t = out.eq(0).all(1).all(1);  // (16, 10): time steps zeroed per sample
  for (int64_t i = 0; i < 16; ++i) {
    std::vector<int64_t> z;
    for (int64_t t = 0; t < 10; ++t)
      if (zero_t[i][t].item<bool>()) z.push_back(t);
    EXPECT_LE(z.size(), 3u);
    if (!z.empty()) {
      EXPECT_EQ(z.back() - z.front() + 1, static_cast<int64_t>(z.size()));  // contiguous
    }
  }
  AugmentConfig s;
  s.scale = 0.1;
  const auto scaled = augment_inputs(x, s, 3);
  const auto ratio = (scaled / x).view({16, -1});
  EXPECT_LT((std::get<0>(ratio.max(1)) - std::get<0>(ratio.min(1))).max().item<double>(), 1e-5);
  EXPECT_GE(ratio.min().item<double>(), 0.9 - 1e-6);
  EXPECT_LE(ratio.max().item<double>(), 1.1 + 1e-6);
  // Seeded: the same torch seed gives the same augmentation.
  torch::manual_seed(9);
  const auto a = augment_inputs(x, s, 3);
  torch::manual_seed(9);
  EXPECT_TRUE(torch::equal(a, augment_inputs(x, s, 3)));
}

TEST(Augment, TtaViews) {
  const auto x = torch::arange(5, torch::kFloat32).view({1, 1, 5});
  EXPECT_TRUE(torch::equal(tta_view(x, "identity"), x));
  EXPECT_TRUE(torch::equal(tta_view(x, "shift:1"), torch::tensor({0.f, 0.f, 1.f, 2.f, 3.f}).view({1, 1, 5})));
  EXPECT_TRUE(torch::equal(tta_view(x, "shift:-2"), torch::tensor({2.f, 3.f, 4.f, 4.f, 4.f}).view({1, 1, 5})));
  EXPECT_TRUE(torch::allclose(tta_view(x, "scale:2"), 2 * x));
  EXPECT_NE(error_of([&] { tta_view(x, "flip"); }).find("flip"), std::string::npos);
}

}  // namespace
}  // namespace csipose
