#!/usr/bin/env python3
"""Independent PyTorch reference of the WiFlow family (shared/reference/MODELS.md section 1).

Written from the spec, not from src/models/wiflow.cpp, for tests/models/test_wiflow_pytorch.cpp.
Parameter and buffer names are the checkpoint layout (tests/models/reference/wiflow_*.state_dict.txt),
so a csipose state dict loads with load_state_dict(strict=True).

    wiflow_ref.py --config JSON --weights W.safetensors --input X.npy --output Y.npy [--perturb NAME]

--config is a JSON object (inline text or a file path) with any of: tcn_channels, conv_channels,
attn_groups, groups_mode ("gcd20" | "depthwise"), input_pw_groups, input_channels, time_steps,
keypoints, dropout, dropout2d. Missing keys take wiflow_full's values.
--input holds x (N, input_channels, time_steps) float32; --output gets (N, keypoints, 2) float32.
--perturb NAME adds 0.1 to the first element of that state-dict tensor after loading (a sanity
check that the comparison can fail).
Needs only torch and numpy (the safetensors package is not used: the format is read by hand).
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULTS = {
    'tcn_channels': [540, 440, 340, 240],
    'conv_channels': [8, 16, 32, 64],
    'attn_groups': 8,
    'groups_mode': 'gcd20',
    'input_pw_groups': 1,
    'input_channels': 540,
    'time_steps': 20,
    'keypoints': 15,
    'dropout': 0.5,
    'dropout2d': 0.3,
}


# ---- TCN ---------------------------------------------------------------------------------------
class TcnLevel(nn.Module):
    """One causal TCN level: (N, cin, T) -> (N, cout, T)."""

    def __init__(self, cin, cout, dilation, g_in, g_out, pw, dropout):
        super().__init__()
        self.chomp = 2 * dilation
        self.conv1_group = nn.Conv1d(cin, cin, 3, padding=2 * dilation, dilation=dilation, groups=g_in, bias=False)
        self.bn1_group = nn.BatchNorm1d(cin)
        self.conv1_pw = nn.Conv1d(cin, cout, 1, groups=pw, bias=False)
        self.bn1_pw = nn.BatchNorm1d(cout)
        self.drop1 = nn.Dropout(dropout)
        self.conv2_group = nn.Conv1d(cout, cout, 3, padding=2 * dilation, dilation=dilation, groups=g_out, bias=False)
        self.bn2_group = nn.BatchNorm1d(cout)
        self.conv2_pw = nn.Conv1d(cout, cout, 1, bias=False)
        self.bn2_pw = nn.BatchNorm1d(cout)
        self.drop2 = nn.Dropout(dropout)
        if cin != cout:
            self.downsample = nn.Sequential(nn.Conv1d(cin, cout, 1, groups=pw, bias=False), nn.BatchNorm1d(cout))
        else:
            self.downsample = None

    def _chomped(self, conv, x):
        y = conv(x)  # T + 2d samples (padded both sides)
        return y[:, :, :-self.chomp].contiguous()

    def forward(self, x):
        y = F.silu(self.bn1_group(self._chomped(self.conv1_group, x)))
        y = self.drop1(F.silu(self.bn1_pw(self.conv1_pw(y))))
        y = F.silu(self.bn2_group(self._chomped(self.conv2_group, y)))
        y = self.drop2(F.silu(self.bn2_pw(self.conv2_pw(y))))
        res = x if self.downsample is None else self.downsample(x)
        return F.silu(y + res)


class TCN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        if cfg['groups_mode'] == 'gcd20':
            g = lambda c: math.gcd(c, 20)
        elif cfg['groups_mode'] == 'depthwise':
            g = lambda c: c
        else:
            raise ValueError('groups_mode must be gcd20 or depthwise, got %r' % cfg['groups_mode'])
        levels, cin = [], cfg['input_channels']
        for i, cout in enumerate(cfg['tcn_channels']):
            pw = cfg['input_pw_groups'] if i == 0 else 1
            levels.append(TcnLevel(cin, cout, 2 ** i, g(cin), g(cout), pw, cfg['dropout']))
            cin = cout
        self.network = nn.Sequential(*levels)

    def forward(self, x):
        return self.network(x)


# ---- 2D encoder --------------------------------------------------------------------------------
class EncoderBlock(nn.Module):
    """Residual block on (N, cin, T, W); (1,3) kernels act on W, stride (1, s)."""

    def __init__(self, cin, cout, stride, p):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(cin, cout, (1, 3), stride=(1, stride), padding=(0, 1)),
            nn.BatchNorm2d(cout), nn.SiLU(), nn.Dropout2d(p),
            nn.Conv2d(cout, cout, (1, 3), padding=(0, 1)),
            nn.BatchNorm2d(cout), nn.SiLU(), nn.Dropout2d(p),
            nn.Conv2d(cout, cout, (1, 3), padding=(0, 1)),
            nn.BatchNorm2d(cout))
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=(1, stride), bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.silu(self.block(x) + self.downsample(x))


def stride_schedule(width, keypoints):
    strides = []
    for _ in range(4):
        half = -(-width // 2)
        if half >= keypoints:
            strides.append(2)
            width = half
        else:
            strides.append(1)
    return strides


# ---- attention ---------------------------------------------------------------------------------
class AxialAttention(nn.Module):
    """Self-attention along one axis of (N, C, H, W): W if along_width else H."""

    def __init__(self, channels, groups, along_width):
        super().__init__()
        assert channels % groups == 0
        self.C, self.G, self.along_width = channels, groups, along_width
        self.qkv_transform = nn.Conv1d(channels, 3 * channels, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(3 * channels)
        self.bn_similarity = nn.BatchNorm2d(groups)
        self.bn_output = nn.BatchNorm1d(channels)

    def forward(self, x):
        N, C, H, W = x.shape
        if self.along_width:
            seqs = x.permute(0, 2, 1, 3)  # (N, H, C, W): H sequences of length W per sample
        else:
            seqs = x.permute(0, 3, 1, 2)  # (N, W, C, H)
        n_other, L = seqs.shape[1], seqs.shape[3]
        seqs = seqs.reshape(N * n_other, C, L)
        qkv = self.bn_qkv(self.qkv_transform(seqs))
        q, k, v = torch.split(qkv, C, dim=1)
        cg = C // self.G
        q = q.reshape(-1, self.G, cg, L)
        k = k.reshape(-1, self.G, cg, L)
        v = v.reshape(-1, self.G, cg, L)
        sim = torch.einsum('bgci,bgcj->bgij', q, k)  # no 1/sqrt(d)
        p = torch.softmax(self.bn_similarity(sim), dim=3)
        out = torch.einsum('bgij,bgcj->bgci', p, v).reshape(-1, C, L)
        out = self.bn_output(out).reshape(N, n_other, C, L)
        if self.along_width:
            return out.permute(0, 2, 1, 3)  # (N, C, H, W)
        return out.permute(0, 2, 3, 1)


class DualAxial(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.width_axis = AxialAttention(channels, groups, along_width=True)
        self.height_axis = AxialAttention(channels, groups, along_width=False)

    def forward(self, x):
        return self.height_axis(self.width_axis(x))


# ---- the model ---------------------------------------------------------------------------------
class WiFlowRef(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        conv = cfg['conv_channels']
        p = cfg['dropout2d']
        self.tcn = TCN(cfg)
        self.up = EncoderBlock(1, conv[0], 1, p)
        strides = stride_schedule(cfg['tcn_channels'][-1], cfg['keypoints'])
        blocks, cin = [], conv[0]
        for cout, s in zip(conv, strides):
            blocks.append(EncoderBlock(cin, cout, s, p))
            cin = cout
        self.residual_blocks = nn.ModuleList(blocks)
        C = conv[-1]
        hidden = max(C // 2, 4)
        self.attention = DualAxial(C, cfg['attn_groups'])
        self.decoder = nn.Sequential(nn.Conv2d(C, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.SiLU(),
                                     nn.Conv2d(hidden, 2, 1), nn.BatchNorm2d(2), nn.SiLU())

    def forward(self, x):
        h = self.tcn(x)                       # (N, C_tcn, T)
        h = h.transpose(1, 2).unsqueeze(1)    # (N, 1, T, C_tcn)
        h = self.up(h)
        for blk in self.residual_blocks:
            h = blk(h)                        # (N, C, T, W')
        h = h.permute(0, 1, 3, 2)             # (N, C, W', T)
        h = self.attention(h)
        h = self.decoder(h)                   # (N, 2, W', T)
        h = F.adaptive_avg_pool2d(h, (self.cfg['keypoints'], 1))  # (N, 2, K, 1)
        return h[..., 0].permute(0, 2, 1)     # (N, K, 2)


# ---- I/O ---------------------------------------------------------------------------------------
ST_DTYPES = {'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16, 'BF16': torch.bfloat16,
             'I64': torch.int64, 'I32': torch.int32, 'I16': torch.int16, 'I8': torch.int8,
             'U8': torch.uint8, 'BOOL': torch.bool}


def read_safetensors(path):
    with open(path, 'rb') as f:
        blob = f.read()
    (n,) = struct.unpack('<Q', blob[:8])
    header = json.loads(blob[8:8 + n].decode('utf-8'))
    base = 8 + n
    tensors = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        begin, end = info['data_offsets']
        dtype = ST_DTYPES[info['dtype']]
        raw = bytearray(blob[base + begin:base + end])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info['shape']).clone()
    return tensors


def parse_config(text):
    if not text.lstrip().startswith('{') and os.path.exists(text):
        with open(text) as f:
            text = f.read()
    user = json.loads(text)
    unknown = set(user) - set(DEFAULTS)
    if unknown:
        raise ValueError('unknown config keys: %s' % sorted(unknown))
    cfg = dict(DEFAULTS)
    cfg.update(user)
    return cfg


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--config', required=True)
    ap.add_argument('--weights', required=True)
    ap.add_argument('--input', required=True)
    ap.add_argument('--output', required=True)
    ap.add_argument('--perturb', default=None, help='state-dict name whose first element gets +0.1')
    a = ap.parse_args(argv)

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    cfg = parse_config(a.config)
    model = WiFlowRef(cfg)
    model.load_state_dict(read_safetensors(a.weights), strict=True)
    if a.perturb:
        with torch.no_grad():
            model.state_dict()[a.perturb].view(-1)[0] += 0.1
    model.eval()
    x = torch.from_numpy(np.load(a.input).astype(np.float32, copy=False))
    with torch.no_grad():
        y = model(x)
    np.save(a.output, np.ascontiguousarray(y.numpy().astype(np.float32)))
    print('OK', tuple(y.shape))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
