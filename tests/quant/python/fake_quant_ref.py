"""PyTorch's own fake-quant on inputs written by tests/quant/test_fake_quant.cpp.

Usage: python3 fake_quant_ref.py params1.json [params2.json ...]   (one torch import for all cases)
Each params file: {"input": x.npy, "output": y.npy, "grad": g.npy,
                  "scale": [...], "zero_point": [...], "qmin": int, "qmax": int, "axis": int (-1 = per tensor)}
Writes y = torch.fake_quantize_per_{tensor,channel}_affine(x, ...) and d sum(y) / dx (the STE mask).
"""
import json
import sys

import numpy as np
import torch


def run_case(path: str) -> None:
    with open(path) as f:
        p = json.load(f)
    x = torch.from_numpy(np.load(p["input"])).float().requires_grad_(True)
    if p["axis"] < 0:
        y = torch.fake_quantize_per_tensor_affine(x, float(p["scale"][0]), int(p["zero_point"][0]),
                                                  p["qmin"], p["qmax"])
    else:
        scale = torch.tensor(p["scale"], dtype=torch.float32)
        zero_point = torch.tensor(p["zero_point"], dtype=torch.int32)
        y = torch.fake_quantize_per_channel_affine(x, scale, zero_point, p["axis"], p["qmin"], p["qmax"])
    y.sum().backward()
    np.save(p["output"], y.detach().numpy())
    np.save(p["grad"], x.grad.numpy())


def main() -> None:
    for path in sys.argv[1:]:
        run_case(path)


if __name__ == "__main__":
    main()
