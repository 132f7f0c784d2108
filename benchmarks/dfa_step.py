"""Time one training step (forward, backward, SGD step) of every method, as a ratio to BP.

Each method trains its own copy of the same network (``dfatools.to_method``), all in one
process and interleaved step by step, in an order that rotates every step, so machine noise
hits every method alike. The script prints the median step of each method and its ratio to BP
for the paper FC (3072-800-800-800-10, tanh) and the paper CNN, batch 128, random CIFAR-shaped
data.

    python benchmarks/dfa_step.py --device cpu
    python benchmarks/dfa_step.py --device cpu --methods dfa bp --models fc --threads 1
"""

from __future__ import annotations

import argparse
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


def step_time(model, opt, x, y, device) -> float:
    """Seconds for one SGD step of ``model`` on ``(x, y)``."""
    synchronize(device)
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    model.feedback.set_target(y)  # DRTP's learning signal; ignored by the other methods
    loss.backward()
    opt.step()
    synchronize(device)
    return time.perf_counter() - start


def bench(
    name: str, net, methods: list[str], device, batch: int, steps: int, warmup: int
) -> dict[str, float]:
    """Median step time of each method, seconds; prints a table row per method."""
    trained = {m: dfatools.to_method(net, m, 10).to(device) for m in methods}
    opts = {m: torch.optim.SGD(model.parameters(), lr=5e-4) for m, model in trained.items()}
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    times: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(warmup + steps):
        shift = i % len(methods)
        for m in methods[shift:] + methods[:shift]:
            t = step_time(trained[m], opts[m], x, y, device)
            if i >= warmup:
                times[m].append(t)
    medians = {m: statistics.median(ts) for m, ts in times.items()}
    for m in methods:
        ratio = f"{medians[m] / medians['bp']:.3f}" if "bp" in medians else "-"
        print(f"| {name} | {m} | {medians[m] * 1e3:.2f} | {ratio} |", flush=True)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["fc", "cnn"], choices=["fc", "cnn"])
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(dfatools.METHODS),
        choices=dfatools.METHODS,
        help="methods to time (default: all; the ratio column needs bp)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: torch's); 1 is steadier on a busy machine, "
        "where every multi-threaded op can wait a time slice for a thread",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, median of {args.steps} interleaved steps per method\n"
    )
    print("| model | method | step (ms) | ratio to BP |\n|---|---|---|---|")
    shape = (3, 32, 32)
    builders = {"fc": lambda: models.fc(shape, 10), "cnn": lambda: models.cnn(shape, 10)}
    for name in args.models:
        bench(
            name, builders[name](), args.methods, device, args.batch_size, args.steps, args.warmup
        )


if __name__ == "__main__":
    main()
