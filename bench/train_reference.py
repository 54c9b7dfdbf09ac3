#!/usr/bin/env python3
"""PyTorch-eager training throughput: the reference side of bench/train_throughput.

Does per step exactly the work of `csipose train-bench` and prints the same one-line JSON result
with "impl": "pytorch_eager":

    train_reference.py --model pose_micro --batch-size 64 --steps 30 --warmup 5 --device cpu [--threads 2]
    {"impl": "pytorch_eager", "model": "pose_micro", "device": "cpu", "batch_size": 64, "steps": 30,
     "warmup": 5, "threads": 2, "samples_per_s": ..., "step_ms": ..., "torch": "1.13.0"}
    train_reference.py --self-test      # parameter counts / layouts of every preset, one step each

The work, per MODELS.md and the train-bench contract:
- torch.manual_seed(0), then the model, then a resident synthetic set of 2048 samples created
  once on the device, x first then y: WiFlow x ~ N(0,1) * 0.3 + 0.5 of shape (540, 20), pose x ~ U[0,1) of shape (3, 114, 10);
  targets y ~ U[0,1) of shape (J, 2), J = 15 (WiFlow) or 17 (pose);
- batches are gathered on the device with index_select from a fresh randperm per pass over the set;
- model.train() (dropout active), loss = PoseLoss (section 5): smooth_l1(pred, y, beta 0.1) +
  0.2 * smooth_l1(bone_len(pred), bone_len(y), beta 0.05), bone_len = sqrt(sum d^2 + 1e-8) over
  the dataset's skeleton (WiFlow 14 bones, COCO-17 16 bones), both terms means;
- backward, clip_grad_norm_(1.0), AdamW(lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01)
  with PyTorch's default implementation choice, zero_grad(set_to_none=True);
- `warmup` untimed steps, then `steps` timed ones; on CUDA the device is synchronized before the
  clock starts and before it stops; no host synchronization inside the timed loop.
samples_per_s = steps * batch_size / seconds; step_ms = 1000 * seconds / steps.

Runs with Debian's /usr/bin/python3 (torch 1.13) and with torch 2.x.
"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ beside the imported references (one is under tests/)
sys.path.insert(0, os.path.join(HERE, '..', 'tests', 'models', 'python'))
import pose_ref  # noqa: E402  (tests/models/python/pose_ref.py)
import wiflow_ref  # noqa: E402  (tests/models/python/wiflow_ref.py)

DATASET_SIZE = 2048
SEED = 0

# WiFlow presets (MODELS.md section 1, configs/models/wiflow_*.yaml); the rest of the config is
# wiflow_ref.DEFAULTS (gcd20 groups, input_pw_groups 1, dropout 0.5, dropout2d 0.3).
WIFLOW_PRESETS = {
    'wiflow_full': {'tcn_channels': [540, 440, 340, 240], 'conv_channels': [8, 16, 32, 64], 'attn_groups': 8},
    'wiflow_half': {'tcn_channels': [270, 220, 170, 120], 'conv_channels': [4, 8, 16, 32], 'attn_groups': 4},
    'wiflow_quarter': {'tcn_channels': [135, 110, 85, 60], 'conv_channels': [2, 4, 8, 16], 'attn_groups': 2},
    'wiflow_tiny': {'tcn_channels': [68, 56, 44, 32], 'conv_channels': [2, 4, 8, 16], 'attn_groups': 2,
                    'groups_mode': 'depthwise', 'input_pw_groups': 4},
}
# MODELS.md (full, half) and `csipose models` (quarter, tiny).
WIFLOW_PARAMETER_COUNTS = {'wiflow_full': 2225042, 'wiflow_half': 843834, 'wiflow_quarter': 338600,
                           'wiflow_tiny': 56290}

# WiFlow 15-joint skeleton (MODELS.md section 5).
WIFLOW_BONES = [(0, 1), (1, 8), (1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (8, 9), (8, 12), (9, 10),
                (10, 11), (12, 13), (13, 14)]


class Task:
    """A model with its input shape, joint count and skeleton."""

    def __init__(self, model, input_shape, joints, bones, family):
        self.model, self.input_shape, self.joints, self.bones, self.family = model, input_shape, joints, bones, family


def make_task(preset):
    if preset in WIFLOW_PRESETS:
        cfg = dict(wiflow_ref.DEFAULTS)
        cfg.update(WIFLOW_PRESETS[preset])
        model = wiflow_ref.WiFlowRef(cfg)
        # MODELS.md init: Conv1d kaiming-normal (fan_out, relu), BatchNorm1d weight 1 bias 0.
        for m in model.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        return Task(model, (cfg['input_channels'], cfg['time_steps']), cfg['keypoints'], WIFLOW_BONES, 'wiflow')
    if preset in pose_ref.PRESETS:
        return Task(pose_ref.build(preset), pose_ref.INPUT_SHAPE, pose_ref.KEYPOINTS, pose_ref.COCO17_BONES, 'pose')
    raise ValueError('unknown model %r; expected one of: %s'
                     % (preset, ', '.join(list(WIFLOW_PRESETS) + list(pose_ref.PRESETS))))


class PoseLoss(nn.Module):
    """MODELS.md section 5: smooth_l1(pred, gt, 0.1) + 0.2 * smooth_l1(bone_len(pred), bone_len(gt), 0.05)."""

    def __init__(self, bones):
        super().__init__()
        self.register_buffer('a', torch.tensor([a for a, _ in bones], dtype=torch.long), persistent=False)
        self.register_buffer('b', torch.tensor([b for _, b in bones], dtype=torch.long), persistent=False)

    def bone_lengths(self, kp):
        # kp: (N, J, 2) -> (N, bones)
        d = kp.index_select(1, self.a) - kp.index_select(1, self.b)
        return torch.sqrt(d.pow(2).sum(-1) + 1e-8)

    def forward(self, pred, gt):
        joints = F.smooth_l1_loss(pred, gt, beta=0.1)
        bones = F.smooth_l1_loss(self.bone_lengths(pred), self.bone_lengths(gt), beta=0.05)
        return joints + 0.2 * bones


def make_dataset(task, device):
    """The resident synthetic set, x then y, on the device (after the seeded model init)."""
    if task.family == 'wiflow':
        x = torch.randn((DATASET_SIZE,) + tuple(task.input_shape), device=device) * 0.3 + 0.5
    else:
        x = torch.rand((DATASET_SIZE,) + tuple(task.input_shape), device=device)
    y = torch.rand(DATASET_SIZE, task.joints, 2, device=device)
    return x, y


class BatchSampler:
    """Batches of indices from a fresh permutation of the set per pass (on the device)."""

    def __init__(self, n, batch_size, device):
        if batch_size > n:
            raise ValueError('batch size %d is larger than the synthetic set (%d samples)' % (batch_size, n))
        self.n, self.batch_size, self.device = n, batch_size, device
        self.perm, self.pos = None, n

    def next(self):
        if self.pos + self.batch_size > self.n:
            self.perm, self.pos = torch.randperm(self.n, device=self.device), 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def run(preset, batch_size, steps, warmup, device_name, threads):
    if threads is not None:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda: torch %s sees no CUDA device' % torch.__version__)
    torch.manual_seed(SEED)  # seeds the CPU and every CUDA generator: model init, then x, y, perms
    task = make_task(preset)
    model = task.model.to(device)
    model.train()
    loss_fn = PoseLoss(task.bones).to(device)
    x, y = make_dataset(task, device)
    sampler = BatchSampler(DATASET_SIZE, batch_size, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        idx = sampler.next()
        xb, yb = x.index_select(0, idx), y.index_select(0, idx)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - t0
    if steps and not math.isfinite(loss.item()):
        raise RuntimeError('%s: loss became %r' % (preset, loss.item()))
    return {
        'impl': 'pytorch_eager',
        'model': preset,
        'device': device.type,
        'batch_size': batch_size,
        'steps': steps,
        'warmup': warmup,
        'threads': torch.get_num_threads(),
        'samples_per_s': steps * batch_size / seconds if seconds > 0 else 0.0,
        'step_ms': 1000.0 * seconds / steps if steps else 0.0,
        'torch': torch.__version__,
    }


def self_test():
    torch.manual_seed(0)
    ref_dir = os.path.join(HERE, '..', 'tests', 'models', 'reference')
    for preset, want in WIFLOW_PARAMETER_COUNTS.items():
        model = make_task(preset).model
        n = pose_ref.count_parameters(model)
        assert n == want, '%s: %d parameters, expected %d' % (preset, n, want)
        listing = os.path.join(ref_dir, preset + '.state_dict.txt')
        if os.path.exists(listing):
            assert pose_ref.state_dict_listing(model) == pose_ref.read_state_dict_listing(listing), \
                '%s: state dict differs from %s' % (preset, listing)
        print('%-14s %9d parameters  ok' % (preset, n))
    pose_ref.self_test()
    # The loss: zero on equal inputs, and a hand-computed value for one joint moved by 1.
    loss = PoseLoss(WIFLOW_BONES)
    gt = torch.rand(2, 15, 2)
    assert loss(gt, gt).item() < 1e-6
    moved = gt.clone()
    moved[0, 0, 0] += 1.0  # joint 0 (one bone, 0-1) moved along x
    joints = (1.0 - 0.05) / (2 * 15 * 2)  # smooth_l1 beta 0.1 of |d| = 1: 1 - beta/2, mean over 60
    lb, lm = loss.bone_lengths(gt)[0, 0], loss.bone_lengths(moved)[0, 0]
    diff = abs(lm - lb).item()
    bone = (diff - 0.025 if diff >= 0.05 else 0.5 * diff * diff / 0.05) / (2 * 14)
    got = loss(moved, gt).item()
    assert abs(got - (joints + 0.2 * bone)) < 1e-6, 'PoseLoss: got %r, expected %r' % (got, joints + 0.2 * bone)
    for preset in ('pose_micro', 'wiflow_tiny'):
        r = run(preset, batch_size=8, steps=2, warmup=1, device_name='cpu', threads=None)
        assert r['samples_per_s'] > 0, r
    print('train step ok')
    print('OK')


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--model', help='preset: %s' % ', '.join(list(WIFLOW_PRESETS) + list(pose_ref.PRESETS)))
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--steps', type=int, default=30, help='timed steps')
    ap.add_argument('--warmup', type=int, default=5, help='untimed steps before the clock starts')
    ap.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
    ap.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch default)')
    ap.add_argument('--self-test', action='store_true', help='check the models and the loss, then exit')
    a = ap.parse_args(argv)
    if a.self_test:
        self_test()
        return 0
    if not a.model:
        ap.error('--model is required')
    for name in ('batch_size', 'steps'):
        if getattr(a, name) < 1:
            ap.error('--%s must be >= 1 (got %d)' % (name.replace('_', '-'), getattr(a, name)))
    if a.warmup < 0:
        ap.error('--warmup must be >= 0 (got %d)' % a.warmup)
    if a.threads is not None and a.threads < 1:
        ap.error('--threads must be >= 1 (got %d)' % a.threads)
    try:
        result = run(a.model, a.batch_size, a.steps, a.warmup, a.device, a.threads)
    except (ValueError, RuntimeError) as e:
        print('error: %s' % e, file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
