"""The Vega JavaScript of perfmodel's HTML reports (their charts are Vega-Lite specs, through
altair): inlined from ``vl-convert-python``'s bundle when installed, so that the page renders
offline, else loaded from a CDN, with a note saying which."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: Where the page loads the Vega scripts from when they cannot be inlined.
CDN = "https://cdn.jsdelivr.net/npm"


@dataclass(frozen=True)
class VegaScripts:
    """``inline`` JavaScript (safe inside a <script> element) or ``urls``; ``note`` says which."""

    inline: Optional[str]
    urls: tuple[str, ...]
    note: str


#: Largest bundle read back from the cache, bytes.
_MAX_BUNDLE = 64 * 2**20


def _bundle(vlc, vl_version: str) -> str:
    """vl-convert's Vega bundle, kept in the perfmodel cache folder (building it takes about a
    second): a regular file of this user, written 0600 in the 0700 cache folder."""
    import os

    from perfmodel.codecache import cache_dir

    version = getattr(vlc, "__version__", "unknown")
    path = cache_dir() / f"vega-bundle-{version}-{vl_version}.js".replace("/", "_")
    try:
        info = path.lstat()
        if path.is_file() and info.st_uid == os.getuid() and 0 < info.st_size <= _MAX_BUNDLE:
            return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        pass
    bundle = vlc.javascript_bundle(vl_version=vl_version)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(bundle)
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the time
    return bundle


def vega_scripts() -> VegaScripts:
    import altair as alt

    try:
        import vl_convert as vlc
        from altair.utils._importers import vl_version_for_vl_convert

        bundle = _bundle(vlc, vl_version_for_vl_convert())
        version = getattr(vlc, "__version__", "?")
        return VegaScripts(bundle.replace("</script", "<\\/script"), (),
                           f"Charts: Vega-Lite {alt.VEGALITE_VERSION}, JavaScript inlined from "
                           f"vl-convert-python {version}; the page needs no network.")
    except Exception:  # noqa: BLE001 - any failure means: fall back to the CDN
        urls = tuple(f"{CDN}/{name}@{ver}" for name, ver in (
            ("vega", alt.VEGA_VERSION), ("vega-lite", alt.VEGALITE_VERSION), ("vega-embed", alt.VEGAEMBED_VERSION)))
        return VegaScripts(None, urls, "Charts: the Vega JavaScript is loaded from a CDN "
                                       "(vl-convert-python is not installed); offline, the charts do not render.")
