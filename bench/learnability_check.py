#!/usr/bin/env python3
"""Calibration check for the synthetic dataset: can a small non-linear network learn it?

Trains a small 1D-conv network in PyTorch (Debian's python3-torch) on a WiFlow-layout directory
with its split.txt and prints val/test PCK@20 under the locked metric, next to nothing else.
This is a calibration tool for the data generator, not part of the product: the product's
trainer is `csipose train`.

usage: /usr/bin/python3 bench/learnability_check.py DATA_DIR [--epochs 30]
"""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn


def load(root):
    x = np.load(f"{root}/csi_windows.npy", mmap_mode="r")
    kp = np.load(f"{root}/all_keypoints.npy")
    wi = np.load(f"{root}/window_info.npz")
    w2f, w2fr = wi["window_to_file"], wi["window_to_frame"]
    y = kp[w2fr]
    lists = {}
    for line in open(f"{root}/split.txt"):
        line = line.split("#")[0].strip()
        if ":" in line:
            k, v = line.split(":", 1)
            lists[k.strip()] = set(int(t) for t in v.split())
    split = np.zeros(len(w2f), dtype=np.int64)
    split[np.isin(w2f, list(lists["val"]))] = 1
    split[np.isin(w2f, list(lists["test"]))] = 2
    x = np.array(x, dtype=np.float32)
    bad = ~np.isfinite(x).reshape(len(x), -1).all(1) | (np.abs(np.nan_to_num(x, nan=0)) > 1.5).reshape(len(x), -1).any(1)
    x[bad] = 0
    return x, y.astype(np.float32), split, bad


def pck20(pred, gt):
    norm = np.maximum(np.linalg.norm(gt[:, 2] - gt[:, 12], axis=-1), 0.01)
    d = np.linalg.norm(pred - gt, axis=-1)
    return float((d <= 0.2 * norm[:, None]).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--epochs", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    x, y, split, bad = load(args.root)
    tr = (split == 0) & ~bad
    mu = x[tr].mean(axis=(0, 2), keepdims=True)
    sd = x[tr].std(axis=(0, 2), keepdims=True) + 1e-6
    xs = torch.from_numpy((x - mu) / sd)
    yt = torch.from_numpy(y.reshape(len(y), -1))
    ym = yt[tr].mean(0)
    net = nn.Sequential(
        nn.Conv1d(540, 128, 3, padding=1), nn.BatchNorm1d(128), nn.SiLU(),
        nn.Conv1d(128, 128, 3, padding=1), nn.BatchNorm1d(128), nn.SiLU(),
        nn.Conv1d(128, 128, 3, padding=2, dilation=2), nn.BatchNorm1d(128), nn.SiLU(),
        nn.Flatten(), nn.Dropout(0.2), nn.Linear(128 * 20, 256), nn.SiLU(), nn.Linear(256, y.shape[1] * 2))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    tr_idx = np.nonzero(tr)[0]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.epochs * ((len(tr_idx) + 63) // 64))
    start = time.time()
    for ep in range(args.epochs):
        net.train()
        perm = np.random.RandomState(ep).permutation(tr_idx)
        for b in range(0, len(perm), 64):
            i = torch.from_numpy(perm[b:b + 64])
            loss = nn.functional.smooth_l1_loss(net(xs[i]) + ym, yt[i], beta=0.01)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if ep % 5 == 4 or ep == args.epochs - 1:
            net.eval()
            with torch.no_grad():
                pred = (net(xs) + ym).numpy().reshape(y.shape)
            print(f"epoch {ep + 1}: train {pck20(pred[tr], y[tr]):.3f}  val {pck20(pred[split == 1], y[split == 1]):.3f}"
                  f"  test/clean {pck20(pred[(split == 2) & ~bad], y[(split == 2) & ~bad]):.3f}  ({time.time() - start:.0f}s)",
                  flush=True)


if __name__ == "__main__":
    main()
