"""Make GX Data Docs render offline: no CDN stylesheets or scripts, styles inlined into each page.

GX's pages link bootstrap, bootstrap-table, font-awesome, jQuery and vega from CDNs; without a network a browser
shows them blank or waits on the stylesheets. `localize(folder)` rewrites every HTML page in place: remote
`<link>`/`<script src>` tags are removed, GX's own stylesheet (static/styles in the docs) plus a small offline
stylesheet shipped here (static/data_docs_offline.css) are inlined into a `<style>` block, so a page renders
alone, also inside MLflow's artifact viewer, where relative links to static/ do not resolve. Remote logo images
point at the local copy. What is lost offline: vega charts (the numbers are in the tables) and table filters.
"""

from __future__ import annotations

import re
from pathlib import Path

_REMOTE_LINK = re.compile(r"<link\b[^>]*\bhref=[\"']https?://[^>]*>\s*", re.IGNORECASE)
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"']https?://[^\"']*[\"'][^>]*>\s*</script>\s*", re.IGNORECASE)
_REMOTE_LOGO = re.compile(r"(<img\b[^>]*\bsrc=)[\"']https?://[^\"']*logo[^\"']*[\"']", re.IGNORECASE)
MARK = "<!-- mtl: offline data docs -->"
OFFLINE_CSS = Path(__file__).with_name("static") / "data_docs_offline.css"


def _styles(root: Path) -> str:
    own = root / "static" / "styles" / "data_docs_default_styles.css"
    parts = [own.read_text()] if own.is_file() else []
    return "\n".join([*parts, OFFLINE_CSS.read_text()])


def localize_page(html: str, css: str, logo: str) -> str:
    """One page with remote assets removed and `css` inlined; unchanged if already done (idempotent)."""
    if MARK in html:
        return html
    html = _REMOTE_SCRIPT.sub("", _REMOTE_LINK.sub("", html))
    html = _REMOTE_LOGO.sub(lambda m: f'{m.group(1)}"{logo}"', html)
    block = f"{MARK}\n<style>\n{css}\n</style>\n"
    head = re.search(r"<head[^>]*>", html, re.IGNORECASE)
    return html[:head.end()] + "\n" + block + html[head.end():] if head else block + html


def localize(root: str | Path) -> int:
    """Rewrite every *.html under the Data Docs folder `root` in place -> number of pages rewritten."""
    root = Path(root)
    css, done = _styles(root), 0
    for page in sorted(root.rglob("*.html")):
        depth = len(page.relative_to(root).parts) - 1
        logo = "../" * depth + "static/images/logo-long.png"
        text = page.read_text(encoding="utf-8")
        new = localize_page(text, css, logo)
        if new != text:
            page.write_text(new, encoding="utf-8")
            done += 1
    return done
