"""MkDocs hook: the docstrings introduce literal blocks the reStructuredText way (``text::`` then an indented
block); Markdown renders the block as code already, so the ``::`` marker is dropped from the rendered page."""

from __future__ import annotations

import re
from typing import Any

_ALONE = re.compile(r"<p>::</p>\s*")  # a paragraph that is only the marker
_TRAILING = re.compile(r"::</p>")  # "text::" -> "text:"


def on_page_content(html: str, **kwargs: Any) -> str:
    """Drop reStructuredText's literal-block markers from the rendered API pages."""
    return _TRAILING.sub(":</p>", _ALONE.sub("", html))
