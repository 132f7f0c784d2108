"""The package as pip installs it: one version, both packages, their data files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dfatools

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_both_packages_their_data_and_dfatools_version(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"  # a copy: building writes build/ and egg-info beside the sources
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    for package in ("dfatools", "mltools"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         str(source), "-w", str(tmp_path / "wheel")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("dfatools", "mltools"):
        # Every module and data file of the source tree, subpackages included, and nothing else.
        files = {
            p.relative_to(ROOT).as_posix()
            for pattern in ("*.py", "*.json")
            for p in (ROOT / package).rglob(pattern)
        }
        assert files == {n for n in names if n.startswith(f"{package}/")}
    assert "mltools/studies/fashion_fair.json" in names  # the choices a preset reads
    metadata = zipfile.ZipFile(wheel).read(next(n for n in sorted(names) if n.endswith("METADATA")))
    version = re.search(rb"^Version: (\S+)$", metadata, re.M)
    assert version is not None and version.group(1).decode() == dfatools.__version__
