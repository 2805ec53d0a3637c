"""mkdocs hooks (mkdocs.yml): the README is the site's first page, the API reference is generated from
the docstrings of ``pescador_fp.__all__``, and a link to a file outside docs/ is checked and kept as text.

The README links to ``docs/guide.md``, as GitHub shows it; on the site those links point to the pages.
A page's link to a file outside docs/ (``../benchmarks/``) has no page to point to: the file must exist
(else the build fails, as for a broken link) and the link becomes its path in the repository.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ADAPTERS = [f"pescador_fp.{name}" for name in ("compat", "torch", "keras", "jax", "ray")]
_LINK = re.compile(r"(?<!!)\[([^\]]*)\]\(([^)\s]+)\)")


def exported() -> list[str]:
    """The names of ``pescador_fp.__all__``, read from the source (nothing is imported)."""
    tree = ast.parse((ROOT / "pescador_fp" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise PluginError("pescador_fp/__init__.py has no __all__")


def reference() -> str:
    """The API reference page: one mkdocstrings entry per public name, then the adapter modules."""
    parts = [
        "# API reference",
        "",
        "Generated from the docstrings. Every name of the first part is importable from `pescador_fp` "
        "(`import pescador_fp as pf`); the [guide](guide.md) explains how the pieces fit.",
        "",
    ]
    parts += [f"::: pescador_fp.{name}\n" for name in exported()]
    parts += ["## Adapters", ""]
    parts += [f"::: {module}\n    options:\n      show_root_full_path: true\n" for module in ADAPTERS]
    return "\n".join(parts)


def on_files(files: Files, config: Any) -> Files:
    readme = (ROOT / "README.md").read_text()
    files.append(File.generated(config, "index.md", content=readme))
    files.append(File.generated(config, "reference.md", content=reference()))
    return files


def _outside(text: str, target: str, base: Path, page: str) -> str | None:
    """A link of ``page`` (whose files lie in ``base``) to a file outside docs/, as text; else None."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
        return None
    path = (base / target.split("#")[0]).resolve()
    if path == DOCS or DOCS in path.parents:
        return None
    if not path.exists():
        raise PluginError(f"{page}: the link to {target!r} points to {path}, which does not exist")
    where = path.relative_to(ROOT).as_posix() + ("/" if path.is_dir() else "")
    return f"`{where}`" if text.strip("`") in (where, target) else f"{text} (`{where}` in the repository)"


def _readme_link(match: re.Match[str]) -> str:
    """A link of the README (relative to the repository's root): to a page, or to a file outside docs/."""
    text, target = match[1], match[2]
    if target.startswith("docs/"):
        return f"[{text}]({target.removeprefix('docs/')})"
    return _outside(text, target, ROOT, "README.md") or match[0]


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    source = page.file.src_uri
    if source == "index.md":
        return _LINK.sub(_readme_link, markdown)
    base = (DOCS / source).parent
    return _LINK.sub(lambda m: _outside(m[1], m[2], base, source) or m[0], markdown)
