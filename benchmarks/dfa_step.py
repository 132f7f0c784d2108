"""Time one training step (forward, backward, SGD step) in DFA and in backprop mode.

Both modes run on the same module in one process, interleaved step by step, so machine noise
hits both alike; the script prints the medians and the ratio DFA/BP for the paper FC
(3072-800-800-800-10, tanh) and the paper CNN, batch 128, random CIFAR-shaped data.

    python benchmarks/dfa_step.py --device cpu
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

# Run as `python benchmarks/<name>.py` from a checkout: the packages live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dfatools
from mltools import models
from mltools.device import resolve_device, synchronize


def step_time(model, opt, x, y, device, backprop: bool) -> float:
    ctx = model.backprop() if backprop else contextlib.nullcontext()
    synchronize(device)
    start = time.perf_counter()
    with ctx:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    synchronize(device)
    return time.perf_counter() - start


def bench(name: str, net, device, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    model = dfatools.to_dfa(net, 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=5e-4)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times = {False: [], True: []}
    for i in range(warmup + steps):
        for bp in (False, True) if i % 2 == 0 else (True, False):
            t = step_time(model, opt, x, y, device, backprop=bp)
            if i >= warmup:
                times[bp].append(t)
    dfa, bp = statistics.median(times[False]), statistics.median(times[True])
    print(f"| {name} | {dfa * 1e3:.2f} | {bp * 1e3:.2f} | {dfa / bp:.3f} |", flush=True)
    return dfa, bp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["fc", "cnn"], choices=["fc", "cnn"])
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, median of {args.steps} interleaved steps per mode\n")
    print("| model | DFA step (ms) | BP step (ms) | DFA/BP |\n|---|---|---|---|")
    shape = (3, 32, 32)
    builders = {"fc": lambda: models.fc(shape, 10), "cnn": lambda: models.cnn(shape, 10)}
    for name in args.models:
        bench(name, builders[name](), device, args.batch_size, args.steps, args.warmup)


if __name__ == "__main__":
    main()
