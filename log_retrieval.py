"""Rebuild metrics from human-readable logs, ours or the 2019 code's.

    python log_retrieval.py results/best_practices/fc-tanh/seed0       # -> metrics.recovered.jsonl
    python log_retrieval.py old_run.log -o old_run.json                  # 2019 log -> JSON runs

A run folder (or its log.txt) gets ``metrics.recovered.jsonl`` beside the log, which the reports
read when metrics.jsonl is missing or damaged. A 2019-format log becomes a JSON list of runs
(default ``<file>.recovered.json``) for ``bottleneck_from_log.py --recovered``. Warnings go to
stderr. The 2019 code's progress and set-up lines are known and skipped silently; other lines
that are no record are summarised (the first few and a count), in full with ``--verbose``.
Exit code 1 when a path gave no epoch, 2 on bad arguments. No torch needed.
"""

from pathlib import Path

from mltools.cli import ArgumentParser, run_main
from mltools.legacy.retrieval import retrieve


def main() -> int:
    parser = ArgumentParser(
        description="Rebuild per-epoch metrics from run logs (ours or 2019-format)."
    )
    parser.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="run folder holding log.txt, a log.txt, or a 2019-code log file",
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        help="output file (one PATH only); default metrics.recovered.jsonl beside "
        "our log, <file>.recovered.json for a 2019 log",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="list every unrecognised line (default: the first few and a count)",
    )
    args = parser.parse_args()
    return retrieve(args.paths, args.out, verbose=args.verbose)


if __name__ == "__main__":
    run_main(main, "log_retrieval.py")
