"""Train a published run again with the code of the commit that made it, and compare that with
the same run trained by today's code.

    python docs/results/rerun_at_commit.py RUN_DIR AGAIN_DIR [--work DIR]

``RUN_DIR``: a published run (its ``config.json`` names the commit, ``git_commit``).
``AGAIN_DIR``: the same run trained by today's code (``python -m mltools.rerun RUN_DIR``). The
run's own commit is checked out in a git worktree under ``--work`` and trains the run there, on
this machine, with the run's recorded thread count. When the two agree number for number, any
difference from the published numbers comes from the machine that made them, not from the
code. Exit code 1 when they differ.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# Today's comparison and run reader, from this repository.
from mltools.rerun import differences  # noqa: E402
from mltools.runs.runlog import load_run  # noqa: E402

# Runs inside the worktree, with that commit's code: its RunConfig took the file's keys then.
TRAIN = """
import dataclasses, json, sys
from pathlib import Path
import torch
sys.path.insert(0, ".")
try:
    from mltools.training.train import RunConfig, train_run
except ImportError:  # before mltools had packages
    from mltools.train import RunConfig, train_run
config = json.loads(Path(sys.argv[1]).read_text())
names = {f.name for f in dataclasses.fields(RunConfig)}
cfg = RunConfig(**{k: v for k, v in config.items() if k in names and k != "data_dir"})
torch.set_num_threads(int(config.get("threads") or torch.get_num_threads()))
print(train_run(cfg, Path(sys.argv[2]), torch.device("cpu"), quiet=True))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a published run folder")
    parser.add_argument("again", type=Path, help="the same run trained by today's code")
    parser.add_argument("--work", type=Path, default=Path("results/at-commit"), help="worktrees")
    args = parser.parse_args()
    commit = load_run(args.run).config["git_commit"]
    tree = (args.work / commit[:12]).resolve()
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "-q", "--detach", str(tree), commit], cwd=ROOT, check=True
        )
    out = tree / "run" / args.run.name
    if load_run(out).status != "done":
        command = [sys.executable, "-c", TRAIN, str((args.run / "config.json").resolve()), str(out)]
        subprocess.run(command, cwd=tree, check=True)
    found = differences(load_run(out).records, load_run(args.again).records)
    if not found:
        print(f"{args.run}: the code of {commit[:7]} and today's give the same numbers here")
        return 0
    worst = max(found, key=lambda f: f[1])
    print(f"{args.run}: {len(found)} numbers differ from {commit[:7]}'s, the most {worst[1]:.3g}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
