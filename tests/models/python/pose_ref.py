#!/usr/bin/env python3
"""PyTorch reference of the pose-transformer family (shared/reference/MODELS.md section 2).

Written from the spec, not from src/models/pose_transformer.cpp. tests/models/test_pose_transformer.cpp
loads csipose weights into it (strict state-dict load) and compares outputs;
bench/train_reference.py trains it as the PyTorch eager baseline. Parameter names and shapes are the checkpoint layout
(tests/models/reference/pose_{micro,flagship}.state_dict.txt).

    x: (N, 3, 114, 10) -> standardize -> tokens (N, 10, 342) -> proj (N, 10, d) + pos
       -> tf (L post-LN encoder layers) -> attention pooling z (N, d)
       -> head -> sigmoid -> kp0 (N, 17, 2) -> [gr] kp0 + 0.3 * tanh(...) (N, 17, 2)

    pose_ref.py --self-test    # parameter counts and state-dict layout of every preset, one
                               # forward/backward pass; exit 0 and "OK" on success
"""
import argparse
import os
import sys

import torch
import torch.nn as nn

# COCO-17 skeleton (MODELS.md sections 2 and 5): the graph refinement's adjacency and the
# bone-length term of PoseLoss.
COCO17_BONES = [(0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12),
                (11, 12), (11, 13), (13, 15), (12, 14), (14, 16)]

# name -> (d_model, layers, heads, head_hidden, graph_hidden, joint_embed); graph_hidden 0 = no `gr`.
PRESETS = {
    'pose_nano': (48, 1, 2, 48, 0, 0),
    'pose_micro': (64, 1, 2, 64, 64, 0),
    'pose_tiny': (96, 2, 4, 96, 64, 0),
    'pose_small': (128, 2, 4, 128, 64, 0),
    'pose_base': (160, 3, 4, 160, 64, 0),
    'pose_flagship': (256, 4, 8, 256, 96, 32),
}

# Trainable parameters: MODELS.md (nano, micro, flagship) and `csipose models` (tiny, small, base).
PARAMETER_COUNTS = {
    'pose_nano': 39971,
    'pose_micro': 75237,
    'pose_tiny': 210949,
    'pose_small': 348005,
    'pose_base': 726437,
    'pose_flagship': 2320869,
}

KEYPOINTS = 17
INPUT_SHAPE = (3, 114, 10)  # (antennas, subcarriers, packets); one token per packet


class GraphRefine(nn.Module):
    """out = kp0 + 0.3 tanh(out(relu(g2(A relu(g1(A relu(inp([z, je, kp0])))))))) over COCO-17."""

    def __init__(self, d, hidden, joint_embed, keypoints=KEYPOINTS, refine_scale=0.3):
        super().__init__()
        self.refine_scale = refine_scale
        if joint_embed:
            self.je = nn.Parameter(torch.empty(keypoints, joint_embed))
            nn.init.normal_(self.je, mean=0.0, std=0.02)
        else:
            self.je = None
        self.inp = nn.Linear(d + joint_embed + 2, hidden)
        self.g1 = nn.Linear(hidden, hidden)
        self.g2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 2)
        A = torch.eye(keypoints)
        for i, j in COCO17_BONES:
            A[i, j] = A[j, i] = 1
        # Row-normalized (I + adjacency); not part of the state dict.
        self.register_buffer('A', A / A.sum(1, keepdim=True), persistent=False)

    def forward(self, z, kp0):
        # z: (N, d), kp0: (N, K, 2) -> (N, K, 2)
        N, K = kp0.shape[:2]
        parts = [z.unsqueeze(1).expand(N, K, -1)]
        if self.je is not None:
            parts.append(self.je.unsqueeze(0).expand(N, -1, -1))
        f = torch.relu(self.inp(torch.cat(parts + [kp0], -1)))
        f = torch.relu(self.g1(self.A @ f))
        f = torch.relu(self.g2(self.A @ f))
        return kp0 + self.refine_scale * torch.tanh(self.out(f))


class PoseTransformer(nn.Module):
    """x: (N, 3, 114, 10) -> (N, 17, 2)."""

    def __init__(self, d, layers, heads, head_hidden, graph_hidden, joint_embed, dropout=0.2, head_dropout=0.3):
        super().__init__()
        antennas, subcarriers, packets = INPUT_SHAPE
        self.tokens, self.token_dim = packets, antennas * subcarriers
        self.pos = nn.Parameter(torch.empty(1, packets, d))
        nn.init.normal_(self.pos, mean=0.0, std=0.02)
        self.proj = nn.Linear(self.token_dim, d)
        layer = nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=dropout, activation='gelu',
                                           batch_first=True)
        # enable_nested_tensor only matters for padded inference; off keeps torch 2.x quiet.
        self.tf = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.att = nn.Linear(d, 1)
        self.head = nn.Sequential(nn.Linear(d, head_hidden), nn.GELU(), nn.Dropout(head_dropout),
                                  nn.Linear(head_hidden, 2 * KEYPOINTS))
        self.gr = GraphRefine(d, graph_hidden, joint_embed) if graph_hidden else None

    def forward(self, x):
        N = x.shape[0]
        f = x.reshape(N, -1)
        # Per-sample standardization over all 3420 values, unbiased std (torch.std's default).
        x = ((f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + 1e-6)).reshape(x.shape)
        h = self.tf(self.proj(x.permute(0, 3, 1, 2).reshape(N, self.tokens, self.token_dim)) + self.pos)
        w = torch.softmax(self.att(h), 1)      # (N, T, 1)
        z = (w * h).sum(1)                     # (N, d)
        kp0 = torch.sigmoid(self.head(z)).view(N, KEYPOINTS, 2)
        return self.gr(z, kp0) if self.gr is not None else kp0


def build(preset):
    """A freshly initialized model of a named preset; raises naming the presets for an unknown one."""
    if preset not in PRESETS:
        raise ValueError('unknown pose preset %r; expected one of: %s' % (preset, ', '.join(PRESETS)))
    return PoseTransformer(*PRESETS[preset])


def count_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def read_state_dict_listing(path):
    """tests/models/reference/*.state_dict.txt -> [(name, shape tuple, dtype name)]."""
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            name, shape, dtype = line.split()
            dims = () if shape == 'scalar' else tuple(int(s) for s in shape.split('x'))
            rows.append((name, dims, dtype))
    return rows


def state_dict_listing(model):
    return [(name, tuple(t.shape), str(t.dtype).replace('torch.', '')) for name, t in model.state_dict().items()]


def self_test():
    here = os.path.dirname(os.path.abspath(__file__))
    ref_dir = os.path.join(here, '..', 'reference')
    torch.manual_seed(0)
    for preset in PRESETS:
        model = build(preset)
        n = count_parameters(model)
        assert n == PARAMETER_COUNTS[preset], '%s: %d parameters, expected %d' % (preset, n, PARAMETER_COUNTS[preset])
        listing = os.path.join(ref_dir, preset + '.state_dict.txt')
        if os.path.exists(listing):
            want, got = read_state_dict_listing(listing), state_dict_listing(model)
            assert got == want, '%s: state dict differs from %s:\n%s' % (
                preset, listing, '\n'.join('  got %s, want %s' % (g, w) for g, w in zip(got, want) if g != w))
        model.train()
        x = torch.rand(4, *INPUT_SHAPE)
        y = model(x)
        assert y.shape == (4, KEYPOINTS, 2), '%s: output shape %s' % (preset, tuple(y.shape))
        y.sum().backward()
        assert all(p.grad is not None for p in model.parameters()), '%s: a parameter got no gradient' % preset
        print('%-14s %9d parameters  ok' % (preset, n))
    print('OK')


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--self-test', action='store_true', help='check parameter counts and layouts of every preset')
    a = ap.parse_args(argv)
    if not a.self_test:
        ap.print_help()
        return 2
    self_test()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
