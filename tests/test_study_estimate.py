"""benchmarks/study_estimate.py: the paper study's wall time from timed slices, by hand-checked
arithmetic on made-up run folders."""

import importlib.util
import sys
from pathlib import Path

import pytest

from mltools.runs import runlog

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "study_estimate", ROOT / "benchmarks" / "study_estimate.py"
)
study_estimate = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = study_estimate  # dataclasses look their module up there
_spec.loader.exec_module(study_estimate)


def fake_slice(
    out: Path, script: str, times: dict[str, tuple[float, float]], seeds: int = 2, epochs: int = 2
) -> Path:
    """Run folders whose epoch 0 took ``times[arch][0]`` s and every later epoch ``[1]`` s."""
    for arch, (first, later) in times.items():
        for seed in range(seeds):
            run_dir = out / script / f"{arch}-x" / f"seed{seed}"
            run_dir.mkdir(parents=True)
            runlog.write_config(
                run_dir,
                {
                    "arch": arch,
                    "status": "done",
                    "device": "cuda",
                    "device_name": "Some GPU",
                    "versions": {"torch": "2"},
                    "dataset": "synthetic",
                    "train_samples": None,
                },
            )
            records = [
                {"epoch": e, "time_s": first if e == 0 else later} for e in range(epochs + 1)
            ]
            runlog.write_metrics(run_dir / runlog.METRICS, records)
    return out


def test_the_paper_study_is_170_runs_and_the_bottleneck_sweep_28():
    paper, everything, bottleneck = study_estimate.study()
    assert paper.runs == {"fc": 110, "cnn": 60} and paper.epochs == 50
    assert sum(everything.runs.values()) == 180
    assert bottleneck.runs == {"bottleneck": 28} and bottleneck.epochs == 50


def test_estimate_from_slices(tmp_path):
    serial = fake_slice(tmp_path / "j1", "best_practices", {"fc": (1.0, 2.0), "cnn": (3.0, 4.0)})
    four = fake_slice(tmp_path / "j4", "best_practices", {"fc": (2.0, 3.0), "cnn": (5.0, 6.0)})
    bottleneck = fake_slice(tmp_path / "b", "bottleneck", {"bottleneck": (0.5, 1.0)})
    slices = [
        study_estimate.Slice(1, 50.0, study_estimate.read_runs(serial)),
        study_estimate.Slice(4, 30.0, study_estimate.read_runs(four)),
    ]
    result = study_estimate.compute(slices, 6.0, study_estimate.read_runs(bottleneck))
    # k = (50 - 6 - 32 s of epochs) / 12 epoch records; F_4 = 30 - (50 + 12 k) / 4
    assert result["overhead_per_epoch_s"] == pytest.approx(1.0)
    assert result["jobs"][4]["fixed_s"] == pytest.approx(14.5)
    # The bottleneck net at --jobs 4: its --jobs 1 times scaled as FC's (x2 and x1.5).
    assert result["jobs"][4]["epoch_s"]["bottleneck"] == pytest.approx(
        {"epoch0": 1.0, "epoch": 1.5}
    )
    paper, _, bottleneck_sweep = (s.label for s in study_estimate.study())
    # Per run: t0 + 50 t + 51 k; 110 FC and 60 CNN runs.
    assert result["jobs"][1]["estimate_s"][paper] == pytest.approx(6 + 110 * 152 + 60 * 254)
    assert result["jobs"][4]["estimate_s"][paper] == pytest.approx(
        14.5 + (110 * 203 + 60 * 356) / 4
    )
    assert result["jobs"][4]["estimate_s"][bottleneck_sweep] == pytest.approx(14.5 + 28 * 127 / 4)
    text = study_estimate.markdown(result)
    total = next(line for line in text.splitlines() if line.startswith("| the paper study"))
    assert total.startswith(
        "| the paper study: the paper's rows, then the bottleneck sweep | 170 + 28 runs |"
    )
    assert total.endswith("| --jobs 4 |")  # the best --jobs of the measured ones


def test_a_slice_without_finished_epochs_is_left_out(tmp_path):
    serial = fake_slice(tmp_path / "j1", "best_practices", {"fc": (1.0, 2.0), "cnn": (3.0, 4.0)})
    cut = fake_slice(tmp_path / "j4", "best_practices", {"fc": (2.0, 3.0)})  # CNN runs never ended
    bottleneck = fake_slice(tmp_path / "b", "bottleneck", {"bottleneck": (0.5, 1.0)})
    slices = [
        study_estimate.Slice(1, 50.0, study_estimate.read_runs(serial)),
        study_estimate.Slice(4, 30.0, study_estimate.read_runs(cut)),
    ]
    result = study_estimate.compute(slices, 6.0, study_estimate.read_runs(bottleneck))
    assert list(result["jobs"]) == [1] and result["incomplete_jobs"] == [4]
    assert "Left out, their slices did not finish: --jobs [4]" in study_estimate.markdown(result)
    with pytest.raises(ValueError, match="--jobs 1 slice"):
        study_estimate.compute(slices[1:], 6.0, study_estimate.read_runs(bottleneck))
