"""Re-plot the bottleneck figures and table from saved runs, no training and no torch.

    python bottleneck_from_log.py                     # results/bottleneck/*/seed*/, last epoch
    python bottleneck_from_log.py results --epoch 10
    python bottleneck_from_log.py results --recovered old.recovered.json --sizes 1 5 28 118 800

Run folders whose metrics.jsonl is lost are read from metrics.recovered.jsonl (log_retrieval.py).
Outputs go to RESULTS_DIR/bottleneck/figures/, or RESULTS_DIR/bottleneck/figures-recovered/ for
--recovered (a 2019 log, JSON from log_retrieval.py; one run per size, in order).
"""

from pathlib import Path

from mltools.cli import ArgumentParser, non_negative_int, positive_int, run_main
from mltools.errors import UsageError
from mltools.legacy.bottleneck_recovered import write_recovered_bottleneck_report
from mltools.reports.bottleneck import write_bottleneck_report
from mltools.studies.experiments import BOTTLENECK


def main() -> int:
    parser = ArgumentParser(description="Bottleneck figures and table from saved runs or logs.")
    parser.add_argument(
        "results",
        nargs="?",
        type=Path,
        default=Path("results"),
        metavar="RESULTS_DIR",
        help="results folder holding bottleneck/ (default: results)",
    )
    parser.add_argument(
        "--epoch",
        type=non_negative_int,
        default=None,
        help="epoch to report (default: each run's last)",
    )
    parser.add_argument(
        "--recovered",
        type=Path,
        default=None,
        metavar="FILE",
        help="JSON written by log_retrieval.py from a 2019-code log",
    )
    parser.add_argument(
        "--sizes",
        type=positive_int,
        nargs="+",
        default=None,
        metavar="B",
        help="bottleneck size of each recovered run, in order",
    )
    parser.add_argument(
        "--module",
        type=non_negative_int,
        default=None,
        metavar="INDEX",
        help="index of the bottleneck module in the 2019 log (default: the second Linear module)",
    )
    args = parser.parse_args()
    try:
        folder = report(args)
    except OSError as err:  # e.g. a read-only results folder
        raise UsageError(f"cannot write {err.filename}: {err.strerror}") from None
    print(
        f"wrote {folder}/: bottleneck_table.md, bottleneck_table.csv, alignment_vs_size.png, "
        "accuracy_vs_size.png"
    )
    return 0


def report(args) -> Path:
    """Check the argument combination, write the outputs, return their folder."""
    if args.recovered is None:
        if args.sizes is not None or args.module is not None:
            raise UsageError("--sizes and --module need --recovered FILE")
        if not args.results.is_dir():
            raise UsageError(f"results folder {args.results} does not exist")
        return write_bottleneck_report(args.results, args.epoch)
    if args.sizes is None:
        raise UsageError("--recovered needs --sizes B ... (one bottleneck size per run)")
    if not args.recovered.is_file():
        raise UsageError(f"recovered log {args.recovered} does not exist")
    return write_recovered_bottleneck_report(
        args.recovered,
        args.sizes,
        args.results / BOTTLENECK / "figures-recovered",
        args.epoch,
        args.module,
    )


if __name__ == "__main__":
    run_main(main, "bottleneck_from_log.py")
