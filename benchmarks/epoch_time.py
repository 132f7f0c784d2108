"""Time one full epoch (train + evaluation) four ways, in one process, on CIFAR-shaped data.

1. plain: a minimal PyTorch loop over tensors in memory (nn.Sequential, SGD, no metrics), the
   floor for back-propagation;
2. 2019-style: a torchvision-style dataset with per-sample ToTensor and Normalize through a
   DataLoader, same model and loop as 1;
3. our trainer in BP mode, with all its metrics, logging and checkpoint;
4. our trainer in DFA mode, with alignment at the end of the epoch.

Rows are repeated interleaved and the medians reported, with each row's ratio to row 1.

    python benchmarks/epoch_time.py --device cpu                  # 5,000 samples: minutes
    python benchmarks/epoch_time.py --device cpu --samples 50000  # a CIFAR-10 epoch, the tables'
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

# Run as `python benchmarks/<name>.py` from a checkout: the packages live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mltools.data.datasets import NORMALIZATION
from mltools.models import networks
from mltools.runs import runlog
from mltools.training.device import resolve_device, synchronize
from mltools.training.train import EVAL_BATCH, RunConfig, Trainer, get_data

BATCH = 128  # every row evaluates in batches of EVAL_BATCH, the trainer's, so rows compare fairly
EVAL_SAMPLES = 10000  # the synthetic test split, CIFAR-10's size


class UInt8Images(VisionDataset):
    """Images held as uint8 HWC arrays and turned into tensors one sample at a time, as
    torchvision's CIFAR10 dataset does (the 2019 code's data path)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        super().__init__(root="", transform=transform)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def plain_epoch(net, opt, x, y, xe, device, gen) -> None:
    net.train()
    for idx in torch.randperm(len(y), generator=gen).to(device).split(BATCH):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        for start in range(0, len(xe), EVAL_BATCH):
            net(xe[start : start + EVAL_BATCH])


def loader_epoch(net, opt, train_loader, eval_loader, device) -> None:
    net.train()
    for xb, yb in train_loader:
        xb, yb = xb.to(device), yb.to(device)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(xb), yb).backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        for xb, _ in eval_loader:
            net(xb.to(device))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Normalized (N, 3, H, W) images back to uint8 (N, H, W, 3), as PIL reads them."""
    mean, std = NORMALIZATION["cifar10"]
    return (
        (x.cpu() * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1))
        .clamp(0, 1)
        .mul(255)
        .byte()
        .permute(0, 2, 3, 1)
        .numpy()
    )


def loaders_2019(data) -> tuple[DataLoader, DataLoader]:
    """The 2019 data path on the same images: uint8 arrays, PIL transforms, DataLoaders."""
    mean, std = NORMALIZATION["cifar10"]
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    train_set = UInt8Images(to_uint8(data.x_train), data.y_train.cpu().numpy(), tf)
    eval_set = UInt8Images(to_uint8(data.x_eval), data.y_eval.cpu().numpy(), tf)
    return (
        DataLoader(train_set, batch_size=BATCH, shuffle=True),
        DataLoader(eval_set, batch_size=EVAL_BATCH),
    )


def time_rows(
    rows: dict, device: torch.device, warmup: int, repeats: int, arch: str
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each row's epoch times ``{row: [s per repeat]}`` and peak memory in MB, after ``warmup``
    untimed epochs; repeats interleave the rows and alternate their order."""
    times = {name: [] for name in rows}
    peaks = {name: 0.0 for name in rows}
    for name in rows:  # first-use costs (allocator, kernel selection) stay out of the timings
        for e in range(1, warmup + 1):
            rows[name](e)
    for rep in range(1, repeats + 1):
        names = list(rows) if rep % 2 else list(reversed(rows))  # interleave, alternate order
        for name in names:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            tic = time.perf_counter()
            rows[name](warmup + rep)
            synchronize(device)
            times[name].append(time.perf_counter() - tic)
            peaks[name] = max(peaks[name], peak_memory_mb(device))
            print(f"  {arch} repeat {rep}: {name}: {times[name][-1]:.2f}s", flush=True)
    return times, peaks


def bench_arch(
    arch: str,
    device: torch.device,
    samples: int,
    eval_samples: int | None,
    repeats: int,
    warmup: int,
    workdir: Path,
) -> list[dict]:
    base = RunConfig(
        experiment=f"bench-{arch}",
        dataset="synthetic",
        arch=arch,
        epochs=warmup + repeats,
        batch_size=BATCH,
        lr=5e-4,
        train_samples=samples,
        eval_samples=eval_samples,
    )
    data = get_data(base, device)
    shape, k = data.input_shape, data.num_classes
    build = (lambda: networks.fc(shape, k)) if arch == "fc" else (lambda: networks.cnn(shape, k))
    torch.manual_seed(0)
    plain = build().to(device)
    plain_opt = torch.optim.SGD(plain.parameters(), lr=5e-4)
    gen = torch.Generator().manual_seed(0)

    loaders = loaders_2019(data)
    torch.manual_seed(0)
    legacy = build().to(device)
    legacy_opt = torch.optim.SGD(legacy.parameters(), lr=5e-4)

    trainers = {}
    for method in ("bp", "dfa"):
        run_dir = workdir / f"{arch}-{method}"
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = RunConfig(**{**base.__dict__, "method": method})
        trainers[method] = Trainer(cfg, run_dir, device, runlog.RunLog(run_dir))
        trainers[method].start()

    rows = {
        "1. plain PyTorch loop (BP)": lambda e: plain_epoch(
            plain, plain_opt, data.x_train, data.y_train, data.x_eval, device, gen
        ),
        "2. 2019-style DataLoader (BP)": lambda e: loader_epoch(
            legacy, legacy_opt, *loaders, device
        ),
        "3. our trainer, BP": lambda e: trainers["bp"].epoch(e),
        "4. our trainer, DFA + alignment": lambda e: trainers["dfa"].epoch(e),
    }
    times, peaks = time_rows(rows, device, warmup, repeats, arch)
    floor = statistics.median(times[next(iter(rows))])
    return [
        {
            "arch": arch,
            "row": name,
            "median_s": statistics.median(t),
            "times_s": t,
            "ratio": statistics.median(t) / floor,
            "peak_mb": peaks[name],
        }
        for name, t in times.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--epochs", type=int, default=3, help="interleaved repeats of each row")
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs of each row first")
    parser.add_argument(
        "--samples",
        type=int,
        default=5000,
        help="training samples per epoch (default 5000, about 5 minutes on 2 CPU cores for both "
        "networks; 50000: a CIFAR-10 epoch, as docs/performance.md's tables)",
    )
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=EVAL_SAMPLES,
        help="evaluation samples per epoch (at most 10000)",
    )
    parser.add_argument("--archs", nargs="+", default=["fc", "cnn"], choices=["fc", "cnn"])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({name}), torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"{args.samples} train + {args.eval_samples} eval samples, batch {BATCH}, "
        f"median of {args.epochs}",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs:
            results += bench_arch(
                arch, device, args.samples, args.eval_samples, args.epochs, args.warmup, Path(tmp)
            )
    peak_label = "peak GPU MiB" if device.type == "cuda" else "process peak RSS MiB"
    print(f"\n| model | row | epoch (s) | ratio to row 1 | {peak_label} |\n|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['arch']} | {r['row']} | {r['median_s']:.2f} | {r['ratio']:.3f} "
            f"| {r['peak_mb']:.0f} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": str(device),
                    "device_name": name,
                    "torch": torch.__version__,
                    "samples": args.samples,
                    "eval_samples": args.eval_samples,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
