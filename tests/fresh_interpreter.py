"""Run one of the scripts in a new Python process, as a user would: as typed
(:func:`run_as_typed`), or through runpy to see what it imported (:func:`run_script`)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_as_typed(
    script: str, *args: object, cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python ROOT/script args`` in ``cwd``, output captured as text; ``args`` may be paths."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


_RUNNER = """import json, runpy, sys
script, report, *args = sys.argv[1:]
sys.argv = [script, *args]
try:
    runpy.run_path(script, run_name='__main__')
    code = 0
except SystemExit as e:
    code = e.code
with open(report, 'w') as f:
    json.dump({'code': code, 'modules': sorted(sys.modules)}, f)
"""


def run_script(
    script: str, *args: str, report: Path
) -> tuple[subprocess.CompletedProcess, int, set[str]]:
    """``python ROOT/script args`` through runpy in a fresh interpreter (cwd ROOT); returns the
    process, the script's exit code and the names of every module loaded by then."""
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, str(ROOT / script), str(report), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(Path(report).read_text())
    return proc, result["code"], set(result["modules"])
