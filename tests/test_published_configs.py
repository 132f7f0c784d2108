"""Every config.json published under docs/results still loads (mltools.runs.config.read), keeps
every setting it holds, and would build the network its run trained.

The reference networks below are built from the files' own keys, flat or nested, with the
model constructors called directly, as the training loop did before the architecture registry:
an independent path to compare the registry's build with. Each run's metrics.jsonl says how many
feedback points its network had (one alignment entry per point).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dfatools.inspect import find_dfa
from mltools.models import networks
from mltools.models.architectures import get
from mltools.runs import runlog
from mltools.runs.config import RUNTIME_OPTIONS, read
from mltools.training.train import build_model, build_net

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "docs" / "results").rglob(runlog.CONFIG))
SHAPES = {"digits": (1, 8, 8), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
CLASSES = 10  # the image sets'; a text run's vocabulary is taken as 10 too (shapes compare alike)


def flat(config: dict) -> dict:
    """A config.json object with its model options under their flat, pre-registry names."""
    model = config.get("model")
    if model is None:
        return config
    names = {option: name for name, option in get(config["arch"]).flat.items()}
    return {**config, **{names[k]: v for k, v in model.items()}}


def reference_net(c: dict, shape: tuple[int, ...]) -> torch.nn.Module:
    arch = c["arch"]
    if arch == "fc":
        return networks.fc(
            shape,
            CLASSES,
            act=c.get("act", "tanh"),
            input_dropout=c.get("input_dropout", 0.0),
            dropout=c.get("dropout", 0.0),
            batch_norm=c.get("batch_norm", False),
        )
    if arch == "cnn":
        return networks.cnn(
            shape,
            CLASSES,
            act=c.get("act", "tanh"),
            input_dropout=c.get("input_dropout", 0.0),
            conv_dropout=c.get("conv_dropout", 0.0),
            dropout=c.get("dropout", 0.0),
            batch_norm=c.get("batch_norm", False),
            min_side=c.get("cnn_min_side", 32),
        )
    if arch == "bottleneck":
        return networks.bottleneck_net(
            shape,
            CLASSES,
            c["bottleneck_size"],
            mode=c.get("bottleneck_mode", "mask"),
            width=c.get("width", 800),
            seed=c.get("seed", 0),
            input_mask_batch=c["batch_size"] if c.get("bottleneck_points") == "2019" else None,
        )
    if arch == "resnet":
        return networks.resnet(shape, CLASSES)
    if arch == "transformer":
        return networks.RowTransformer(shape, CLASSES, norm=c.get("norm", "pre"))
    assert arch == "gpt", arch
    return networks.CharGPT(
        CLASSES, c["context"], c["lm_width"], c["lm_depth"], c.get("norm", "pre")
    )


def distinct_networks() -> dict[str, Path]:
    """One published run folder for each network (the settings that shape it) in docs."""
    found: dict[str, Path] = {}
    for path in CONFIGS:
        config = flat(json.loads(path.read_text()))
        # The bottleneck size alone changes one layer's width: one size per cell is enough.
        shaping = ("arch", "dataset", "context", "method", *get(config["arch"]).flat)
        key = {k: config.get(k) for k in shaping if k != "bottleneck_size"}
        found.setdefault(json.dumps(key, sort_keys=True), path.parent)
    return found


def test_docs_hold_published_configs():
    assert len(CONFIGS) > 1000  # a wrong path would make the tests below pass on nothing


def test_every_published_config_loads_and_keeps_every_setting():
    for path in CONFIGS:
        raw = json.loads(path.read_text())
        cfg = read(raw)
        file = flat(raw)
        model = vars(cfg.model)
        for key, value in file.items():
            if key in get(cfg.arch).flat:
                assert model[get(cfg.arch).flat[key]] == value, (path, key)
            elif key in vars(cfg) and key not in ("model", "recipe", *RUNTIME_OPTIONS):
                assert getattr(cfg, key) == value, (path, key)
        assert read(runlog.read_config(path.parent)[0]) == cfg, path  # the one reader agrees


@pytest.mark.parametrize("run_dir", list(distinct_networks().values()), ids=str)
def test_a_published_config_builds_the_network_its_run_trained(run_dir):
    raw = json.loads((run_dir / runlog.CONFIG).read_text())
    cfg = read(raw)
    c = flat(raw)
    shape = (c["context"],) if cfg.arch == "gpt" else SHAPES[c["dataset"]]
    net, _ = build_net(cfg, shape, CLASSES)
    ours = [(n, p.shape) for n, p in net.named_parameters()]
    assert ours == [(n, p.shape) for n, p in reference_net(c, shape).named_parameters()]
    first = json.loads((run_dir / runlog.METRICS).read_text().splitlines()[0])
    model = build_model(cfg, shape, CLASSES)
    assert len(first["alignment"]) == len(find_dfa(model).points), run_dir
