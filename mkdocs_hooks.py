"""MkDocs hooks (mkdocs.yml ``hooks:``): API pages show Sphinx roles as code, and the dfatools
page must list every public name.

The docstrings cross-reference with Sphinx roles (``:func:`~dfatools.to_dfa```), which Markdown
does not know: on the API pages each role is dropped and its target shown as code.

After the page ``api/dfatools.md`` is rendered, each name of ``dfatools.__all__`` must have its
anchor (``id="dfatools.<name>"``, which mkdocstrings gives each documented object) and a
docstring in the source; otherwise the build fails, so a name added to ``__all__`` without a
docstring, or an API page that stops rendering one, cannot pass ``mkdocs build --strict``.
"""

from __future__ import annotations

import re
from pathlib import Path

import griffe
from mkdocs.exceptions import PluginError

API_PAGE = "api/dfatools.md"
# ``:func:`~x` `` as Markdown renders it: the role as text, then the target as code.
SPHINX_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):<code>~?")


def on_page_content(html: str, page, config, files) -> str:
    """On the API pages, Sphinx roles become plain code."""
    if not page.file.src_uri.startswith("api/"):
        return html
    return SPHINX_ROLE.sub("<code>", html)


def on_post_page(output: str, page, config) -> str:
    """Check the rendered dfatools API page; other pages pass through unchanged."""
    if page.file.src_uri != API_PAGE:
        return output
    root = Path(config["config_file_path"]).parent  # the repository, wherever mkdocs runs
    package = griffe.load("dfatools", search_paths=[str(root)])
    names = list(package.exports or [])
    if not names:
        raise PluginError("dfatools has no __all__: the API page cannot be checked")
    missing = [n for n in names if f'id="dfatools.{n}"' not in output]
    undocumented = sorted(n for n in names if not package[n].docstring)
    problems = []
    if missing:
        problems.append(f"not on {API_PAGE}: {', '.join(missing)}")
    if undocumented:
        problems.append(f"no docstring: {', '.join(undocumented)}")
    if problems:
        raise PluginError("dfatools API reference: " + "; ".join(problems))
    return output
