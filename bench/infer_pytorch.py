#!/usr/bin/python3
"""PyTorch side of bench/infer_latency: eager fp32 and torch.ao FX int8 of the same models.

    infer_pytorch.py --model PRESET --weights W.safetensors --threads N --engine onednn|qnnpack
                     [--iters-b1 200] [--iters-b256 3]

The models are the independent references of tests/models/python (wiflow_ref.py, pose_ref.py), with
csipose's fp32 weights loaded (same names), so both sides run the same network. int8: FX graph mode
post-training quantization (prepare_fx with the engine's default qconfig mapping, calibration on 8
random batches, convert_fx) on the chosen quantized engine. Prints one JSON line per measurement:
{"impl": "pytorch", "model", "numerics": "fp32" | "int8 (FX, <engine>)", "threads", "batch_size",
"p50_ms", "p90_ms", "samples_per_s"}; a measurement that fails prints "error" instead of numbers.
Needs only Debian's python3-torch and python3-numpy.
"""
import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'tests', 'models', 'python'))
import pose_ref  # noqa: E402
import wiflow_ref  # noqa: E402

WIFLOW = {
    'wiflow_full': {},
    'wiflow_half': {'tcn_channels': [270, 220, 170, 120], 'conv_channels': [4, 8, 16, 32], 'attn_groups': 4},
}


def build(preset, weights):
    if preset in WIFLOW:
        cfg = dict(wiflow_ref.DEFAULTS)
        cfg.update(WIFLOW[preset])
        model = wiflow_ref.WiFlowRef(cfg)
        shape = (cfg['input_channels'], cfg['time_steps'])
    else:
        model = pose_ref.build(preset)
        shape = (3, 114, 10)
    state = wiflow_ref.read_safetensors(weights)
    model.load_state_dict({k: torch.from_numpy(v.copy()) if not torch.is_tensor(v) else v for k, v in state.items()},
                          strict=True)
    return model.eval(), shape


def timed(model, x, iters, warmup):
    with torch.no_grad():
        for _ in range(warmup):
            model(x)
        ms = []
        t0 = time.perf_counter()
        for _ in range(iters):
            a = time.perf_counter()
            model(x)
            ms.append(1000.0 * (time.perf_counter() - a))
        secs = time.perf_counter() - t0
    ms.sort()
    pick = lambda q: ms[min(len(ms) - 1, int(q * (len(ms) - 1) + 0.5))]
    # Throughput from the median forward (robust to a shared machine's stalls), the mean one beside it.
    return {'p50_ms': pick(0.5), 'p90_ms': pick(0.9), 'samples_per_s': 1000.0 * x.shape[0] / pick(0.5),
            'mean_samples_per_s': iters * x.shape[0] / secs}


def fx_int8(model, shape, engine):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = engine
    example = torch.rand((8,) + shape)
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), example_inputs=(example,))
    with torch.no_grad():
        for _ in range(8):
            prepared(torch.rand((8,) + shape))
    return convert_fx(prepared)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True)
    ap.add_argument('--weights', required=True)
    ap.add_argument('--threads', type=int, required=True)
    ap.add_argument('--engine', default='onednn')
    ap.add_argument('--iters-b1', type=int, default=200)
    ap.add_argument('--iters-b256', type=int, default=10)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, shape = build(a.model, a.weights)
    variants = [('fp32', lambda: model)]
    variants.append(('int8 (FX, %s)' % a.engine, lambda: fx_int8(model, shape, a.engine)))
    for name, make in variants:
        try:
            m = make()
            err = None
        except Exception as e:  # a model FX cannot quantize is a row with the reason
            m, err = None, '%s: %s' % (type(e).__name__, str(e).splitlines()[0][:160])
        for batch, iters in ((1, a.iters_b1), (256, a.iters_b256)):
            row = {'impl': 'pytorch', 'model': a.model, 'numerics': name, 'threads': a.threads, 'batch_size': batch,
                   'torch': torch.__version__}
            if err is None:
                try:
                    row.update(timed(m, torch.rand((batch,) + shape), iters, 2 if batch > 1 else 20))
                except Exception as e:
                    row['error'] = '%s: %s' % (type(e).__name__, str(e).splitlines()[0][:160])
            else:
                row['error'] = err
            print(json.dumps(row), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
