"""README.md and docs/ say what runs: every command names a script and flags that exist, every
Python snippet compiles and uses public dfatools names, every relative link resolves.

Commands come from fenced ``bash`` blocks and from inline code that starts with ``python`` or
``bash``. ``python SCRIPT.py ARGS`` and ``python -m mltools.X ARGS`` are parsed by the script's
own argparse parser (flags, choices and types, for real), and the script is stopped right after
parsing, before it does anything. ``bash SCRIPT.sh ARGS``: the script exists and its ``case``
patterns name every flag. ``pip install -r FILE``: FILE exists. Other programs must be listed in
EXTERNAL. Cheap and CPU only: nothing trains.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The published reports under docs/results/ are generated, not written: they hold no commands.
PAGES = [ROOT / "README.md"] + sorted(
    p for p in DOCS.rglob("*.md") if (DOCS / "results") not in p.parents
)
# Programs that are not ours: their flags are their own business.
EXTERNAL = {"apt-get", "pip", "tensorboard", "mkdocs", "pytest", "ruff", "mypy", "git", "lscpu"}
SHELL_SEPARATORS = {"&&", "||", ";", "|"}


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}: {shlex.join(self.words)}"


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """(language, first line number, body) of every fenced code block."""
    blocks, lang, start, indent, body = [], None, 0, "", []
    for number, line in enumerate(text.splitlines(), 1):
        fence = re.match(r"(\s*)```(\w*)", line)
        if fence and lang is None:
            indent, lang, start, body = fence.group(1), fence.group(2), number + 1, []
        elif fence:
            blocks.append((lang, start, "\n".join(body)))
            lang = None
        elif lang is not None:  # a fence indented in a list item indents its lines as much
            body.append(line[len(indent) :] if line.startswith(indent) else line)
    return blocks


def without_fences(text: str) -> str:
    """``text`` with fenced blocks blanked out, line numbers kept."""
    out, inside = [], False
    for line in text.splitlines():
        if re.match(r"\s*```", line):
            inside = not inside
            out.append("")
        else:
            out.append("" if inside else line)
    return "\n".join(out)


def split_commands(source: str) -> list[list[str]]:
    """Shell words of each simple command in ``source`` (comments dropped, ``$VAR`` as 0)."""
    source = re.sub(r"\$\{?[A-Z_]+\}?", "0", source.replace("\\\n", " "))
    lexer = shlex.shlex(source, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for word in lexer:
        if word in SHELL_SEPARATORS:
            commands.append(words)
            words = []
        else:
            words.append(word)
    return [c for c in [*commands, words] if c]


def commands_of(page: Path) -> list[Command]:
    text = page.read_text()
    found = []
    for lang, start, body in fenced_blocks(text):
        if lang not in ("bash", "sh", "shell"):
            continue
        lines, i = body.split("\n"), 0
        while i < len(lines):
            first, source = i, lines[i]
            while source.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                source = source.rstrip()[:-1] + " " + lines[i]
            found += [Command(page, start + first, tuple(w)) for w in split_commands(source)]
            i += 1
    prose = without_fences(text)
    for span in re.finditer(r"`([^`]+)`", prose):
        code = " ".join(span.group(1).split())
        if re.match(r"(python|bash) \S", code):
            line = prose.count("\n", 0, span.start()) + 1
            found += [Command(page, line, tuple(w)) for w in split_commands(code)]
    return found


COMMANDS = [c for page in PAGES for c in commands_of(page)]


class Parsed(BaseException):
    """Raised right after a script's parser accepted its arguments, so the script stops there.
    A BaseException, so that no ``except Exception`` in a script's main swallows it."""


def parse_with_script(target: list[str], args: list[str], monkeypatch, capsys) -> None:
    """Run ``python *target *args`` in this process up to its ``parse_args``; fail on a
    parser error."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *a, **kw):
        original(self, *a, **kw)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    monkeypatch.setattr(sys, "argv", [target[-1], *args])
    try:
        if target[0] == "-m":
            # runpy warns when the module was imported before (by another test): run it afresh.
            monkeypatch.delitem(sys.modules, target[1], raising=False)
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(str(ROOT / target[0]), run_name="__main__")
    except Parsed:
        return
    except SystemExit as stop:  # --help exits 0 from inside the parser; an error exits 2
        if stop.code not in (0, None):
            pytest.fail(f"the parser refused it: {capsys.readouterr().err.strip()}")
        return
    pytest.fail("the script never parsed its arguments")


def bash_flags(script: Path) -> set[str]:
    """The flags named by the ``case`` patterns of a bash script's argument loop."""
    patterns = re.findall(r"^\s*([-\w|]+)\)", script.read_text(), re.MULTILINE)
    return {flag for p in patterns for flag in p.split("|") if flag.startswith("-")}


LAUNCHERS = {"srun", "torchrun"}  # start a script of ours: its own arguments are checked


def launched_script(words: tuple[str, ...]) -> tuple[str, ...]:
    """``python script.py ARGS`` for a command that starts it through launchers
    (``srun torchrun --nproc_per_node 4 script.py ARGS``); the command itself otherwise."""
    if words[0] not in LAUNCHERS:
        return words
    script = next((i for i, w in enumerate(words) if w.endswith(".py")), None)
    assert script is not None, "a launcher that starts no script of ours"
    return ("python", *words[script:])


@pytest.mark.parametrize("command", COMMANDS, ids=str)
def test_command_runs_as_written(command: Command, monkeypatch, capsys) -> None:
    program, *args = launched_script(command.words)
    if program in EXTERNAL:
        if program == "pip" and "-r" in args:
            assert (ROOT / args[args.index("-r") + 1]).is_file(), "no such requirements file"
        return
    if program == "bash":
        script = ROOT / args[0]
        assert script.is_file(), f"no script {args[0]}"
        unknown = {a for a in args[1:] if a.startswith("-")} - bash_flags(script)
        assert not unknown, f"{args[0]} knows no {sorted(unknown)}"
        return
    assert program in ("python", "python3"), f"unknown program {program!r}: add it to EXTERNAL"
    if args[:2] == ["-m", "pytest"]:
        return
    if args[0] == "-m":
        assert args[1].startswith("mltools."), f"python -m {args[1]}: not a module of ours"
        assert (ROOT / (args[1].replace(".", "/") + ".py")).is_file(), f"no module {args[1]}"
        parse_with_script(args[:2], args[2:], monkeypatch, capsys)
        return
    assert (ROOT / args[0]).is_file(), f"no script {args[0]}"
    parse_with_script(args[:1], args[1:], monkeypatch, capsys)


def test_commands_are_found() -> None:
    """The extraction itself: the README's two set-up commands and a continued command."""
    readme = {shlex.join(c.words) for c in COMMANDS if c.page.name == "README.md"}
    assert "pip install -r requirements.txt" in readme
    assert "python best_practices.py" in readme
    assert "python -m pytest" in readme
    cluster = [c for c in COMMANDS if "--slurm-partition" in c.words]
    assert cluster and "--slurm-array" in cluster[0].words  # the line after the backslash
    assert split_commands('a --x "4 8" && b $SLURM_ARRAY_TASK_ID/10 # note') == [
        ["a", "--x", "4 8"],
        ["b", "0/10"],
    ]


def python_snippets() -> list[tuple[Path, int, str]]:
    return [
        (page, start, body)
        for page in PAGES
        for lang, start, body in fenced_blocks(page.read_text())
        if lang == "python"
    ]


@pytest.mark.parametrize(
    "page,line,code", python_snippets(), ids=lambda v: v.name if isinstance(v, Path) else ""
)
def test_python_snippet_compiles_and_uses_public_names(page: Path, line: int, code: str) -> None:
    import dfatools

    compile(code, f"{page.name}:{line}", "exec")
    used = set(re.findall(r"\bdfatools\.([A-Za-z_]\w*)", code))
    assert used <= set(dfatools.__all__), f"not in dfatools.__all__: {used - set(dfatools.__all__)}"


def slug(heading: str) -> str:
    """A heading's anchor as GitHub makes it (and Python-Markdown, for plain headings)."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", without_fences(page.read_text()), re.M)}


def links() -> list[tuple[Path, str]]:
    found = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", without_fences(page.read_text())):
            if not re.match(r"[a-z]+:", target):
                found.append((page, target))
    return found


@pytest.mark.parametrize(
    "page,target", links(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v
)
def test_relative_link_resolves(page: Path, target: str) -> None:
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    assert file.is_file(), f"{target}: no such file"
    if page.is_relative_to(DOCS):
        assert file.is_relative_to(DOCS), f"{target}: outside docs/, broken in the site"
    if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{target}: no heading with that anchor"
