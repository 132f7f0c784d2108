"""The language-model report's comparisons (mltools.reports.language_model)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mltools.runs import runlog


def test_the_language_model_report_compares_with_bp_and_with_untrained_blocks(tmp_path):
    """summary.csv's differences and intervals equal scipy's Welch test on the same values."""
    import csv

    from scipy import stats

    from mltools.reports.language_model import write_lm_report

    bpc = {"bp": [2.40, 2.45, 2.43], "dfa": [3.1, 3.3, 3.2], "shallow": [3.6, 3.62, 3.65]}
    for method, values in bpc.items():
        for seed, value in enumerate(values):
            run = tmp_path / "language_model" / method / f"seed{seed}"
            run.mkdir(parents=True)
            config = {"arch": "gpt", "method": method, "lr": 0.01, "epochs": 1, "status": "done"}
            runlog.write_config(run, config)
            records = [{"epoch": e, "eval_bpc": value + 1 - e, "eval_top1": 30.0} for e in (0, 1)]
            (run / runlog.METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))
    write_lm_report(tmp_path, echo=lambda _: None)
    with open(tmp_path / "language_model" / "summary.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    for reference, prefix in (("bp", ""), ("shallow", "shallow_")):
        test = stats.ttest_ind(bpc["dfa"], bpc[reference], equal_var=False)
        low, high = test.confidence_interval(0.95)
        column = "bpc_minus_bp" if reference == "bp" else "bpc_minus_shallow"
        got = rows["dfa"]
        want = np.mean(bpc["dfa"]) - np.mean(bpc[reference])
        assert float(got[column]) == pytest.approx(want, abs=1e-5)
        assert float(got[f"{prefix}ci_low"]) == pytest.approx(low, abs=1e-5)
        assert float(got[f"{prefix}ci_high"]) == pytest.approx(high, abs=1e-5)
    assert rows["bp"]["bpc_minus_bp"] == "" and rows["shallow"]["bpc_minus_shallow"] == ""
    report = (tmp_path / "language_model" / "report.md").read_text(encoding="utf-8")
    assert "dfa − shallow = -0.423, 95% CI" in report
