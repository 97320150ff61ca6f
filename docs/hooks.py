"""MkDocs hook: the home page is README.md itself (included, not copied).

`docs/index.md` holds the marker `<!-- include: README.md -->`; this hook puts the README there
and rewrites its links for the site: `docs/x.md` becomes `x.md`; a link to a file outside docs/
(source code, scripts) becomes plain code text, since the site does not carry those files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MARKER = "<!-- include: README.md -->"
_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def _rewrite(match: re.Match[str]) -> str:
    bang, text, target = match.groups()
    if re.match(r"^[a-z]+:|^#", target):
        return match.group(0)  # absolute URL or anchor
    if target.startswith("docs/"):
        return f"{bang}[{text}]({target[len('docs/'):]})"
    return f"{text} (`{target}`)" if text and text.strip("`") != target else f"`{target}`"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    root = Path(config["config_file_path"]).parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    return markdown.replace(MARKER, _LINK.sub(_rewrite, readme))
