"""The architecture registry, the nested config.json and its reader, and ``mltools.rerun``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from mltools.models import architectures
from mltools.models.architectures import BottleneckOptions, GPTOptions
from mltools.rerun import added_since, differences
from mltools.runs import runlog
from mltools.runs.config import RunConfig, read, upgrade

ROOT = Path(__file__).resolve().parents[1]


def test_every_architecture_has_options_and_a_builder():
    from mltools.models import networks

    for arch in architectures.ARCHS:
        entry = architectures.get(arch)
        assert callable(getattr(networks, entry.builder)), arch
        assert set(entry.flat.values()) <= set(asdict(entry.options()))


def test_options_belong_to_their_architecture():
    assert RunConfig(arch="gpt").model == GPTOptions()
    assert RunConfig(arch="bottleneck", model={"size": 5}).model == BottleneckOptions(size=5)
    with pytest.raises(ValueError, match="norm: not an option of arch 'fc'"):
        RunConfig(arch="fc", model={"norm": "post"})
    with pytest.raises(ValueError, match="takes FCOptions, not GPTOptions"):
        RunConfig(arch="fc", model=GPTOptions())
    with pytest.raises(ValueError, match="unknown architecture 'mlp'"):
        RunConfig(arch="mlp")


def test_config_json_is_nested_and_reads_back_to_the_same_settings(tmp_path):
    cfg = RunConfig(arch="gpt", context=16, model={"width": 32, "norm": "post"}, recipe="adamw")
    runlog.write_config(tmp_path, asdict(cfg))
    raw = json.loads((tmp_path / runlog.CONFIG).read_text())
    assert raw["model"] == {
        "width": 32,
        "depth": 4,
        "points": "macro",
        "norm": "post",
        "error_at": "logits",
    }
    assert "lm_width" not in raw and "bottleneck_size" not in raw
    assert read(runlog.read_config(tmp_path)[0]) == cfg


def test_a_flat_config_keeps_its_architectures_keys_and_drops_the_others():
    flat = {
        "arch": "bottleneck",
        "bottleneck_size": 5,
        "bottleneck_mode": "width",
        "width": 64,
        "lm_width": 128,  # another architecture's default, in every old file
        "cnn_points": "all",
        "optimizer": "sgd",
        "status": "done",
    }
    up = upgrade(flat)
    assert up["model"] == {"size": 5, "mode": "width", "width": 64}
    assert up["status"] == "done" and "optimizer" not in up and "lm_width" not in up
    assert read(flat).model == BottleneckOptions(size=5, mode="width", points="all", width=64)
    gpt = read({"arch": "gpt", "lm_width": 16, "lm_depth": 2, "width": 800, "context": 8})
    assert (gpt.model.width, gpt.model.depth, gpt.context) == (16, 2, 8)
    # The recipe: a file's dict, a file from before recipes (paper SGD, or Adam), or a name.
    assert read({"recipe": {"name": "adamw", "optimizer": "adamw"}}).recipe.optimizer == "adamw"
    assert read({}).recipe.name == "paper" and read({"optimizer": "adam"}).recipe.name == "adam"
    assert read({"arch": "resnet", "recipe": "sgd"}).recipe.name == "sgd"


def test_differences_compare_every_number_but_wall_time():
    a = [{"epoch": 0, "loss": 2.0, "time_s": 1.0, "alignment": [{"cos": 0.5}], "x": None}]
    b = [{"epoch": 0, "loss": 2.5, "time_s": 9.0, "alignment": [{"cos": 0.5}], "x": None}]
    assert differences(a, a) == []
    assert differences(a, b) == [("epoch 0.loss", 0.2)]  # |2 - 2.5| / 2.5
    assert differences(a, [*b, b[0]])[0] == ("epochs recorded", math.inf)
    c = [{**a[0], "alignment": [{"cos": None}]}]
    assert differences(a, c) == [("epoch 0.alignment[0].cos", math.inf)]
    # A metric recorded since the published run was made is not a difference; one lost is.
    newer = [{**a[0], "stream_norm": [1.0]}]
    assert added_since(a, newer) == ["stream_norm"] and differences(a, newer) == []
    assert differences(newer, a) == [("epoch 0.stream_norm", math.inf)]


def test_a_run_trained_again_from_its_config_gives_the_same_numbers(tmp_path):
    from mltools.training.train import train_run

    cfg = RunConfig(
        experiment="fc-tanh",
        model={"act": "relu", "dropout": 0.2},
        epochs=2,
        batch_size=64,
        lr=0.05,
        train_samples=256,
        eval_samples=128,
    )
    import torch

    train_run(cfg, tmp_path / "seed0", torch.device("cpu"), quiet=True)
    rerun = [sys.executable, "-m", "mltools.rerun", str(tmp_path / "seed0")]
    out = subprocess.run(
        [*rerun, "--out", str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "every recorded number equals the published one (3 epochs)" in out.stdout
    # A changed number is found and fails the comparison.
    metrics = tmp_path / "seed0" / runlog.METRICS
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    records[-1]["eval_top1"] += 1.0
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = subprocess.run(
        [*rerun, "--out", str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 1 and "1 numbers differ" in out.stdout and "eval_top1" in out.stdout
    bad = subprocess.run([*rerun[:3], str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr
    assert "Traceback" not in bad.stderr
