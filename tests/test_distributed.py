"""Data-parallel DFA (issue 34): two CPU processes (gloo) under DistributedDataParallel, each
on half of a batch, take the step of one process on the whole batch, for every method and for
``(N, K)``, per-token ``(N, T, V)`` and ``error_at`` outputs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import dfatools
from mltools.models import networks

WORLD = 2
BATCH = 7  # slices of 3 and 4: each rank's mean loss weighted by its share
LAYOUTS = ("fc", "fc-mean", "gpt", "gpt-hidden")  # fc-mean: error="mean"


def build(layout: str, method: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """The converted model and a batch ``(x, y)``, the same in every process (seeded)."""
    torch.manual_seed(0)
    if layout.startswith("fc"):
        net = networks.fc((6,), 5, width=16, depth=2)
        error = "mean" if layout == "fc-mean" else "sum"
        model = dfatools.to_method(net, method, 5, seed=3, error=error)
        return model, torch.randn(BATCH, 6), torch.randint(0, 5, (BATCH,))
    net = networks.CharGPT(7, 6, 16, 2)
    site = {"error_at": "norm"} if layout == "gpt-hidden" and method != "drtp" else {}
    width = 16 if site else 7
    model = dfatools.to_method(net, method, width, seed=3, points=[networks.Block], **site)
    return model, torch.randint(0, 7, (BATCH, 6)), torch.randint(0, 7, (BATCH, 6))


def step_gradients(
    model: torch.nn.Module, x, y, method: str, wrap=None, share: float = 1.0
) -> dict:
    """The gradients of one step of ``method`` on ``(x, y)``, by name (None where none), the
    mean loss weighted by ``share`` (a rank's part of the batch times the world size)."""
    node = dfatools.find_dfa(model)
    run = wrap(model) if wrap is not None else model
    mode = dfatools.backprop(model) if method == "bp" else torch.enable_grad()
    with mode:
        out = run(x)
        node.set_target(y)
        (dfatools.cross_entropy(out, y) * share).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def worker(rank: int, folder: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/init", rank=rank, world_size=WORLD
    )
    torch.set_num_threads(1)
    try:
        found = {}
        for layout in LAYOUTS:
            for method in dfatools.METHODS:
                model, x, y = build(layout, method)
                part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
                share = y[part].numel() * WORLD / y.numel()  # as mltools.training.train weighs it
                ddp = lambda m: DistributedDataParallel(m, find_unused_parameters=True)  # noqa: E731
                grads = step_gradients(model, x[part], y[part], method, wrap=ddp, share=share)
                node = dfatools.find_dfa(model)
                matrices = node.matrices if node.materialized else []
                found[f"{layout}/{method}"] = {"grads": grads, "matrices": matrices}
        # Not data-parallel (one model per rank): data_parallel=False keeps the rank's own error.
        torch.manual_seed(0)
        alone = dfatools.to_dfa(networks.fc((6,), 5, width=16, depth=2), 5, data_parallel=False)
        x, y = torch.randn(BATCH, 6), torch.randint(0, 5, (BATCH,))
        found["alone"] = {"grads": step_gradients(alone, x[:3], y[:3], "dfa"), "matrices": []}
        torch.save(found, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("ddp")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    mp.spawn(worker, args=(str(folder),), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("method", dfatools.METHODS)
def test_two_processes_take_the_step_of_one_on_the_whole_batch(ranks, layout, method):
    model, x, y = build(layout, method)
    want = step_gradients(model, x, y, method)
    key = f"{layout}/{method}"
    for rank in ranks:
        got = rank[key]["grads"]
        assert set(got) == set(want)
        for name, grad in want.items():
            if grad is None:
                assert got[name] is None or not got[name].any(), name
                continue
            scale = grad.abs().max().clamp_min(1e-12)
            assert (got[name] - grad).abs().max() / scale < 1e-5, f"{key} {name}"
    hidden = [g for n, g in want.items() if g is not None and not n.startswith("head")]
    if method != "shallow":  # the hidden layers learn: a wrong scale could not hide
        assert hidden and any(g.abs().sum() > 0 for g in hidden)


def test_a_model_that_is_not_data_parallel_keeps_its_own_error(ranks):
    torch.manual_seed(0)
    alone = dfatools.to_dfa(networks.fc((6,), 5, width=16, depth=2), 5)
    x, y = torch.randn(BATCH, 6), torch.randint(0, 5, (BATCH,))
    want = step_gradients(alone, x[:3], y[:3], "dfa")
    for rank in ranks:
        for name, grad in want.items():
            torch.testing.assert_close(rank["alone"]["grads"][name], grad, msg=name)


def test_every_rank_holds_the_same_feedback_matrices(ranks):
    for key, first in ranks[0].items():
        for other in ranks[1:]:
            for a, b in zip(first["matrices"], other[key]["matrices"]):
                assert torch.equal(a, b), key
    assert ranks[0]["fc/dfa"]["matrices"], "the DFA node drew its matrix"


# -- the scripts under torchrun ------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
VERSE = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"
LM = ["--text", "some.txt", "--context", "32", "--width", "32", "--depth", "2", "--quiet"]


def language_model(cwd: Path, *args: str, processes: int = 1, **popen):
    """language_model.py in one process, or under torchrun in ``processes``."""
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*launcher, str(ROOT / "language_model.py"), *LM, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if popen:
        return subprocess.Popen(command, cwd=cwd, env=env, **popen)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def metrics(run_dir: Path) -> list[dict]:
    out = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time_s"} for r in out]


def close(a, b, rel: float = 1e-5) -> bool:
    """Records equal but for floating-point rounding (relative ``rel``)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-3)
    return a == b


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("text")
    (folder / "some.txt").write_text(VERSE * 80, encoding="utf-8")
    return folder


def test_two_processes_train_one_run_folder_with_the_metrics_of_one(text_dir):
    """Every method's metrics within 1e-5 (relative) of one process's: the sums of the ranks'
    gradients differ from one process's sum only by the order of float additions."""
    methods = ["dfa", "drtp", "bp"]  # the scaled signals, and the reference (the rest: above)
    one = language_model(text_dir, "--methods", *methods, "--epochs", "2", "--out", "one")
    assert one.returncode == 0, one.stderr
    two = language_model(
        text_dir, "--methods", *methods, "--epochs", "2", "--out", "two", processes=2
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("runs in all, 2 processes each") == 1  # rank 0 alone prints
    for method in methods:
        run = text_dir / "two" / "language_model" / method / "seed0"
        config = json.loads((run / "config.json").read_text())
        assert config["world_size"] == 2 and config["status"] == "done"
        got, want = metrics(run), metrics(text_dir / "one" / "language_model" / method / "seed0")
        assert len(got) == 3 and close(got, want), method
    assert sorted(p.name for p in (text_dir / "two" / "language_model").iterdir()) == sorted(
        [*methods, "figures", "report.md", "summary.csv"]
    )


def test_a_killed_torchrun_job_resumes_to_the_metrics_of_an_uninterrupted_one(text_dir):
    (text_dir / "long.txt").write_text(VERSE * 1000, encoding="utf-8")  # epochs of seconds
    args = ["--methods", "dfa", "--epochs", "3", "--recipe", "adam2020", "--plateau"]
    args += ["--text", "long.txt"]
    whole = language_model(text_dir, *args, "--out", "whole", processes=2)
    assert whole.returncode == 0, whole.stderr
    job = language_model(
        text_dir, *args, "--out", "killed", processes=2,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    run = text_dir / "killed" / "language_model" / "dfa" / "seed0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and job.poll() is None:
        if (run / "metrics.jsonl").exists() and len(metrics(run)) >= 2:
            break
        time.sleep(0.05)
    for pid in [job.pid, *descendants(job.pid)]:  # torchrun and both ranks, mid-run
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    job.wait()
    assert len(metrics(run)) < 4, "the job finished before it could be killed"
    resumed = language_model(text_dir, *args, "--out", "killed", processes=2)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from the checkpoint" in (run / "log.txt").read_text()
    assert close(metrics(run), metrics(text_dir / "whole" / "language_model" / "dfa" / "seed0"))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its ranks in sessions of their own)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [p for p, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_jobs_shards_and_slurm_are_refused_under_torchrun(text_dir):
    out = language_model(text_dir, "--jobs", "2", "--out", "bad", processes=2)
    assert out.returncode != 0 and "under torchrun" in out.stderr
    assert not (text_dir / "bad").exists()
