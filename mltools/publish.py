"""Copy a results folder's publishable part: reports, tables, figures, and each run's
``config.json``, ``metrics.jsonl`` and a language model's ``samples.txt`` (never checkpoints,
models or locks).

    python -m mltools.publish results/fashion docs/results/fashion-mnist

No torch here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mltools.cli import ArgumentParser
from mltools.runs.runlog import CONFIG, METRICS, SAMPLES

PUBLISHED_NAMES = (CONFIG, METRICS, SAMPLES)
PUBLISHED_SUFFIXES = (".md", ".csv", ".png")


def publishable(path: Path, figures: bool = True) -> bool:
    if path.suffix == ".png" and not figures:
        return False
    return path.name in PUBLISHED_NAMES or path.suffix in PUBLISHED_SUFFIXES


def publish(src: Path, dst: Path, figures: bool = True) -> list[Path]:
    """Copy every publishable file under ``src`` to the same place under ``dst``; returns them."""
    copied = []
    for path in sorted(src.rglob("*")):
        if path.is_file() and publishable(path, figures):
            target = dst / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied.append(target)
    return copied


def main() -> None:
    parser = ArgumentParser(prog="python -m mltools.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="results folder")
    parser.add_argument("dst", type=Path, help="where to copy it (e.g. docs/results/<name>)")
    parser.add_argument("--no-figures", action="store_true", help="leave the PNG figures out")
    args = parser.parse_args()
    if not args.src.is_dir():
        parser.error(f"no results folder at {args.src}")
    copied = publish(args.src, args.dst, figures=not args.no_figures)
    print(f"{len(copied)} files copied to {args.dst}")


if __name__ == "__main__":
    main()
