"""Sphinx configuration for the zerospeed documentation.

Pages are Markdown (myst-parser); the API pages run autodoc inside ``{eval-rst}`` blocks so
that docstrings are parsed as reStructuredText (Google style, through napoleon). The build
must stay warning-free under ``sphinx-build -W``; ``nox -s docs`` runs it that way.

The packages are imported, not read from source: install them first (``nox -s docs`` does,
or ``pip install ./packages/zero-* .``).
"""

from __future__ import annotations

import re
from pathlib import Path

from sphinx.util import logging

import zero_aio
import zero_core
import zero_moe
import zero_optim
import zero_profiler
import zero_sched
import zerospeed

DOCS = Path(__file__).parent

# -- project ------------------------------------------------------------------------------

project = "zerospeed"
author = "zerospeed developers"
copyright = "zerospeed developers"
release = zerospeed.__version__
version = release

# -- general ------------------------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "requirements.txt"]

# References that cannot be resolved (torch classes, typing constructs) stay plain text
# instead of warnings. Classes are documented once, under their public package name
# (zero_sched.WarmupLR, zero_optim.CPUAdam); autodoc records the defining private module
# (zero_sched._warmup.WarmupLR, ...) as the canonical alias, so "Bases:" lines and type hints
# that use it still link. A private base class that is not exported at all
# (zero_optim._cpu_base.CPUOptimizer) is replaced by its own bases: see _public_bases.
nitpicky = False

# -- MyST ---------------------------------------------------------------------------------

myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "deflist"]

# -- autodoc / napoleon -------------------------------------------------------------------

autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
    # torch's LRScheduler and Optimizer methods (and their torch-flavoured docstrings) stay
    # out of our pages; each package documents what it defines. A method a public class
    # inherits from a private base (CPUAdam.step) is listed by name on the API page.
    "inherited-members": False,
    "undoc-members": False,
}
autodoc_member_order = "bysource"
autodoc_class_signature = "mixed"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML ---------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"zerospeed {release}"
html_static_path: list[str] = []
html_theme_options = {
    "description": "DeepSpeed's training stack on plain PyTorch",
    "fixed_sidebar": True,
}

# -- keeping the API pages honest ----------------------------------------------------------

_logger = logging.getLogger(__name__)

#: Public API of each importable package -> the page that must document all of it. Every
#: name in ``__all__`` except dunders (``__version__``) must have a directive on the page
#: (``.. autoclass:: zero_optim.CPUAdam``, ``.. py:data:: zerospeed.optim``, ...), and the
#: page may document no other top-level name of the package.
_API_PAGES = {
    "zero_sched": (zero_sched, DOCS / "api" / "zero-sched.md"),
    "zero_optim": (zero_optim, DOCS / "api" / "zero-optim.md"),
    "zero_aio": (zero_aio, DOCS / "api" / "zero-aio.md"),
    "zero_profiler": (zero_profiler, DOCS / "api" / "zero-profiler.md"),
    "zero_core": (zero_core, DOCS / "api" / "zero-core.md"),
    "zero_moe": (zero_moe, DOCS / "api" / "zero-moe.md"),
    "zerospeed": (zerospeed, DOCS / "api" / "zerospeed.md"),
}


def _check_api_pages(app, config) -> None:
    """Warn (an error under -W) when an API page and its package's ``__all__`` disagree."""
    for package, (module, page) in _API_PAGES.items():
        text = page.read_text(encoding="utf-8")
        documented = {
            name
            for name in re.findall(
                rf"^\.\. (?:auto\w+|py:\w+):: {package}\.(\w+)", text, flags=re.M
            )
            if not name.startswith("__")
        }
        public = {name for name in module.__all__ if not name.startswith("__")}
        for name in sorted(public - documented):
            _logger.warning(
                "%s.%s is in %s.__all__ but not documented in %s",
                package,
                name,
                package,
                page.relative_to(DOCS),
            )
        for name in sorted(documented - public):
            _logger.warning(
                "%s documents %s.%s, which is not in %s.__all__",
                page.relative_to(DOCS),
                package,
                name,
                package,
            )


_COLON = re.compile(r"(?<!:):(?!:)")


def _plain_property_summary(app, what, name, obj, options, lines) -> None:
    """Keep napoleon from reading a property summary's first colon as a type.

    napoleon treats ``"text: more"`` at the top of a property docstring as ``type:
    description``. Runs before napoleon (lower priority) and puts the property's return
    annotation in front, so the colon in the prose stays prose.
    """
    if what != "property" or not lines:
        return
    first = re.sub(r"``.*?``|`.*?`", "", lines[0])
    if not _COLON.search(first):
        return
    getter = getattr(obj, "fget", None)
    annotation = getattr(getter, "__annotations__", {}).get("return")
    if not isinstance(annotation, str):  # a real type when annotations are not postponed
        annotation = getattr(annotation, "__name__", None)
    if annotation:
        lines[0] = f"{annotation}: {lines[0]}"


def _public_bases(app, name, obj, options, bases) -> None:
    """Show a private base class by the public classes it derives from.

    ``CPUAdam``'s base is ``zero_optim._cpu_base.CPUOptimizer``, which is not exported; its
    "Bases:" line would name a class the reference does not document. Such a base (defined in
    one of our packages, absent from that package's ``__all__``) is replaced in place by its
    own bases, repeatedly, so the line reads ``torch.optim.Optimizer``.
    """
    i = 0
    while i < len(bases):
        base = bases[i]
        package = _API_PAGES.get(getattr(base, "__module__", "").partition(".")[0])
        if package is not None and base.__name__ not in package[0].__all__:
            bases[i : i + 1] = [b for b in base.__bases__ if b not in bases]
        else:
            i += 1


def setup(app):
    app.connect("config-inited", _check_api_pages)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-docstring", _plain_property_summary, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
