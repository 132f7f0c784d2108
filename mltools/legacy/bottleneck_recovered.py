"""The bottleneck report of a 2019 log recovered by ``log_retrieval.py``
(``bottleneck_from_log.py``): its runs read as :class:`~mltools.reports.bottleneck.Cell`s, one
per bottleneck size, and written by the same table and figures as today's runs. No torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mltools.errors import UsageError
from mltools.reports.bottleneck import Cell, write_outputs
from mltools.reports.tables import Echo, well_formed
from mltools.runs.runlog import parse_json


def read_recovered(path: Path) -> list[list[dict]]:
    """The JSON that log_retrieval.py writes for a 2019 log: runs of epoch dicts; UsageError."""
    try:
        runs = parse_json(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"cannot read recovered log {path}: {err}") from None
    ok = isinstance(runs, list) and all(
        isinstance(run, list)
        and all(isinstance(e, dict) and isinstance(e.get("epoch"), int) for e in run)
        for run in runs
    )
    if not ok:
        raise UsageError(
            f"{path}: not a recovered 2019 log (expected a list of runs, each a list "
            "of epoch objects, as log_retrieval.py writes)"
        )
    return runs


def _modules(epoch: dict) -> list[dict]:
    """Well-formed module entries of a recovered epoch (dicts with an int ``index``)."""
    return well_formed(epoch.get("modules"), "index")


def _default_module(epoch: dict) -> int | None:
    linear = [m["index"] for m in _modules(epoch) if str(m.get("name", "")).startswith("Linear")]
    return linear[1] if len(linear) > 1 else None


def recovered_cells(
    runs: Sequence[Sequence[dict]],
    sizes: Sequence[int],
    epoch: int | None = None,
    module: int | None = None,
) -> tuple[list[Cell], list[str]]:
    """Cells from recovered 2019 runs, one run per size in order (a repeated size is a second seed).

    A module's ``mean`` stands in for ``cos_mean`` (the 2019 logs hold no per-sample angles, so
    degrees stay empty); the bottleneck point is module ``module``, by default the second Linear
    module of the epoch. Mode is "mask" (the 2019 code masked), init "recovered", points "2019".
    """
    if len(sizes) != len(runs):
        raise UsageError(
            f"{len(sizes)} sizes given for {len(runs)} recovered runs; give one size per run"
        )
    grouped: dict[int, list[dict]] = {}
    warnings = []
    for i, (run, size) in enumerate(zip(runs, sizes)):
        if epoch is None:
            record = run[-1] if run else None
        else:
            record = next((e for e in run if e["epoch"] == epoch), None)
        if record is None:
            warnings.append(f"recovered run {i} (size {size}): no epoch {epoch}; left out")
            grouped.setdefault(size, [])
            continue
        point = module if module is not None else _default_module(record)
        if point is None:
            raise UsageError(
                f"recovered run {i}: fewer than two Linear modules in epoch "
                f"{record['epoch']}; name the bottleneck module with --module"
            )
        if not any(m["index"] == point for m in _modules(record)):
            warnings.append(
                f"recovered run {i} (size {size}): no module {point} in epoch {record['epoch']}"
            )
        grouped.setdefault(size, []).append(
            {
                "epoch": record["epoch"],
                "train_top1": record.get("train_top1"),
                "eval_top1": record.get("test_top1"),
                "bottleneck_point": point,
                "alignment": [
                    {
                        "point": m["index"],
                        "name": m.get("name", ""),
                        "cos_mean": m.get("mean"),
                        "cos_std": m.get("std"),
                        "angle_deg": None,
                    }
                    for m in _modules(record)
                ],
            }
        )
    cells = [
        Cell(
            "dfa",
            "mask",
            "recovered",
            size,
            {"done": len(recs)},
            recs,
            recs[0]["bottleneck_point"] if recs else (module or 0),
            points="2019",
        )
        for size, recs in sorted(grouped.items())
    ]
    return cells, warnings


def write_recovered_bottleneck_report(
    recovered: Path,
    sizes: Sequence[int],
    out_dir: Path,
    epoch: int | None = None,
    module: int | None = None,
    echo: Echo = print,
) -> Path:
    """The bottleneck figures and table from a recovered 2019 JSON, written to ``out_dir``."""
    runs = read_recovered(recovered)
    cells, warnings = recovered_cells(runs, sizes, epoch, module)
    if not any(c.records for c in cells):
        raise UsageError(f"no recovered run has epoch {epoch}")
    at = f"epoch {epoch}" if epoch is not None else "the last epoch of each run"
    return write_outputs(
        cells,
        Path(out_dir),
        warnings,
        at,
        lambda p: f"m{p}",
        echo,
        source=f"recovered 2019 log {recovered}; cos = the module's logged mean, "
        "no angles in those logs",
    )
