"""Time one training step (forward, backward, SGD step) of every method, as a ratio to BP.

Each method trains its own copy of the same network (``dfatools.to_method``), all in one
process and interleaved step by step, in an order that rotates every step, so machine noise
hits every method alike. The script prints the median step of each method, its ratio to BP
(wall clock), the same ratio in CPU time (on the CPU; the steadier of the two on a shared
machine, where the wall clock also counts the time slices given to other processes), and the
FLOP floor: the method's FLOPs per step over BP's, counted by
``torch.utils.flop_counter`` (matrix products and convolutions), which is what the saved
``W^T delta`` products allow at best. Models, on random data:

- ``fc``: the paper FC (3072-800-800-800-10, tanh), batch 128, CIFAR-shaped;
- ``cnn``: the paper CNN, batch 128, CIFAR-shaped;
- ``resnet18``: torchvision's ``resnet18(num_classes=10)``, points at every ``BasicBlock``,
  ``(B, 3, 32, 32)`` input;
- ``transformer``: a causal Transformer language model with per-token outputs ``(B, T, V)``
  (2 encoder layers, d 128, 4 heads, T 64, V 256), points at every encoder layer.

    python benchmarks/dfa_step.py --device cpu
    python benchmarks/dfa_step.py --device cpu --methods dfa bp --models fc --threads 1
    python benchmarks/dfa_step.py --device cpu --models fc --methods bp sign --profile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

# Run as `python benchmarks/<name>.py` from a checkout: the packages live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dfatools
from mltools.models import networks
from mltools.training.device import resolve_device, synchronize


class CharLM(nn.Module):
    """Token embedding, learned positions, causal ``nn.TransformerEncoder``, Linear head.

    Shape: ``(N, T)`` token indices in, ``(N, T, vocab)`` logits out.
    """

    def __init__(self, vocab=256, length=64, d=128, layers=2, heads=4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        return self.head(self.encoder(h, mask=self.mask, is_causal=True))


def step(model, opt, x, y) -> None:
    """One SGD step of ``model`` on ``(x, y)``."""
    opt.zero_grad(set_to_none=True)
    loss = dfatools.cross_entropy(model(x), y)
    model.feedback.set_target(y)  # DRTP's learning signal; ignored by the other methods
    loss.backward()
    opt.step()


def step_time(model, opt, x, y, device) -> tuple[float, float]:
    """Seconds for one SGD step of ``model`` on ``(x, y)``: wall clock, and the CPU time of
    this process (every thread's)."""
    synchronize(device)
    start, cpu = time.perf_counter(), time.process_time()
    step(model, opt, x, y)
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu


def step_flops(model, opt, x, y) -> int:
    """FLOPs of one step (matrix products and convolutions), as torch's counter sees them."""
    counter = FlopCounterMode(display=False)
    with counter:
        step(model, opt, x, y)
    return counter.get_total_flops()


def print_profile(name: str, trained: dict, opts: dict, x, y, steps: int = 5) -> None:
    """Where each method's step goes: the 6 operators of most self CPU time per step
    (``torch.profiler``), so the ops a method adds to BP's show by name."""
    from torch.profiler import ProfilerActivity, profile

    for m, model in trained.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step(model, opts[m], x, y)
        top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        ops = ", ".join(f"{e.key} {e.self_cpu_time_total / steps / 1e3:.2f}" for e in top[:6])
        print(f"- {name} {m} (ms per step): {ops}", flush=True)


def bench(
    name: str,
    net,
    points,
    data,
    k: int,
    methods: list[str],
    device,
    steps: int,
    warmup: int,
    profile: bool = False,
) -> dict[str, float]:
    """Median step time of each method, seconds; prints a table row per method (and, with
    ``profile``, each method's costliest operators)."""
    options = {"points": points} if points else {}
    trained = {m: dfatools.to_method(net, m, k, **options).to(device) for m in methods}
    opts = {m: torch.optim.SGD(model.parameters(), lr=5e-4) for m, model in trained.items()}
    x, y = (t.to(device) for t in data)
    flops = {m: step_flops(trained[m], opts[m], x, y) for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    cpu: dict[str, list[float]] = {m: [] for m in methods}
    for i in range(warmup + steps):
        shift = i % len(methods)
        for m in methods[shift:] + methods[:shift]:
            wall, used = step_time(trained[m], opts[m], x, y, device)
            if i >= warmup:
                times[m].append(wall)
                cpu[m].append(used)
    medians = {m: statistics.median(ts) for m, ts in times.items()}
    cpu_medians = {m: statistics.median(ts) for m, ts in cpu.items()}
    for m in methods:
        ratio, cpu_ratio, floor = "-", "-", "-"
        if "bp" in methods:
            ratio = f"{medians[m] / medians['bp']:.3f}"
            floor = f"{flops[m] / flops['bp']:.3f}"
            if device.type == "cpu":  # on a GPU the CPU time is the launch overhead only
                cpu_ratio = f"{cpu_medians[m] / cpu_medians['bp']:.3f}"
        print(
            f"| {name} | {m} | {medians[m] * 1e3:.2f} | {ratio} | {cpu_ratio} | {floor} |",
            flush=True,
        )
    if profile:
        print_profile(name, trained, opts, x, y)
    return medians


def workloads(batch: int) -> dict:
    """name -> (network builder, points, (x, y), classes) for every model the script times."""
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock

    shape = (3, 32, 32)
    images = (torch.randn(batch, *shape), torch.randint(0, 10, (batch,)))
    tokens = torch.randint(0, 256, (max(batch // 4, 1), 65))
    return {
        "fc": (lambda: networks.fc(shape, 10), None, images, 10),
        "cnn": (lambda: networks.cnn(shape, 10), None, images, 10),
        "resnet18": (lambda: resnet18(num_classes=10), [BasicBlock], images, 10),
        "transformer": (
            CharLM,
            [nn.TransformerEncoderLayer],
            (tokens[:, :-1], tokens[:, 1:]),
            256,
        ),
    }


MODELS = ("fc", "cnn", "resnet18", "transformer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=128,
        help="images per step (default 128); the transformer takes a quarter as many sequences",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=60,
        help="timed steps per method (a third as many for resnet18 and transformer)",
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), choices=MODELS, help="default: all"
    )
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
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after each model's rows, each method's costliest operators per step",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    big_steps = max(args.steps // 3, 5)  # resnet18 and transformer steps take 5-10x longer
    print(
        f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"batch {args.batch_size}, median of {args.steps} interleaved steps per method "
        f"({big_steps} for resnet18 and transformer)\n"
    )
    print(
        "| model | method | step (ms) | ratio to BP | CPU-time ratio | FLOP floor |\n"
        "|---|---|---|---|---|---|"
    )
    loads = workloads(args.batch_size)
    for name in args.models:
        build, points, data, k = loads[name]
        steps = args.steps if name in ("fc", "cnn") else big_steps
        bench(
            name, build(), points, data, k, args.methods, device, steps, args.warmup, args.profile
        )


if __name__ == "__main__":
    main()
