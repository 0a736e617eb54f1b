"""Jinja2 environments of perfmodel's reports: a report's own templates folder, then the shared
page assets of ``perfmodel/templates/`` (``base.css``: page, tables and charts; ``report.js``:
draws each Vega-Lite spec into its element and makes tables sortable).

``static(name)`` in a template reads a file of either folder as it is (no template syntax), so
styles and scripts are copied into the page and the HTML is self-contained.
"""

from __future__ import annotations

from typing import Any, Callable

#: The shared assets' package and folder.
SHARED = ("perfmodel", "templates")


def environments(package: str, folder: str = "templates", *, strict: bool = False, **globals_: Any):
    """(HTML environment, Markdown environment) over ``package``'s ``folder`` and the shared
    assets; ``strict``: an undefined name in a template is an error; ``globals_`` are added to
    both (e.g. number formatters)."""
    import jinja2
    from markupsafe import Markup

    loader = jinja2.ChoiceLoader([jinja2.PackageLoader(package, folder), jinja2.PackageLoader(*SHARED)])
    options = dict(loader=loader, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    if strict:
        options["undefined"] = jinja2.StrictUndefined
    html = jinja2.Environment(autoescape=True, **options)
    markdown = jinja2.Environment(autoescape=False, **options)

    def static(name: str) -> Markup:
        """A style or script file of the templates folders, as it is."""
        source, _, _ = loader.get_source(html, name)
        return Markup(source)

    html.globals.update(static=static, **globals_)
    markdown.globals.update(globals_)
    return html, markdown


def script_json(obj: Any):
    """``obj`` as JSON that is safe inside a <script> element (a page's chart specs), marked safe
    for the HTML templates; values JSON has no type for are written as their text."""
    import json

    from markupsafe import Markup

    return Markup(json.dumps(obj, default=str).replace("</", "<\\/"))


def check_out_dir(out_dir) -> None:
    """A report's ``--out`` folder may exist, but not as a file nor under one: one line, before
    any work is done."""
    from pathlib import Path

    from perfmodel.errors import InputError

    out_dir = Path(out_dir)
    for path in (out_dir, *out_dir.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out_dir else f"lies under {path}, a file"
                raise InputError(f"--out {out_dir} {what}; the report folder must be a folder")
            return


def write_pages(out_dir, pages: dict[str, Callable[[], str]]) -> list:
    """Write each page (file name -> a function rendering its text) into ``out_dir``, made if
    missing; the written paths, in order. An unwritable folder is one :class:`InputError`."""
    from pathlib import Path

    from perfmodel.errors import InputError

    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    paths = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, render in pages.items():
            path = out_dir / name
            path.write_text(render(), encoding="utf-8")
            paths.append(path)
    except OSError as exc:
        raise InputError(f"cannot write to {out_dir}: {exc.strerror or exc}") from None
    return paths
