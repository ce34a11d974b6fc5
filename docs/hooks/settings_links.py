"""mkdocs hook: the table of settings links to sections as ``[title](#anchor)``.

The table is generated from the settings' declaration (trio_esper/config.py,
``python3 noxfile.py -s docs``), whose help texts name a section by its anchor
alone. On the configuration page, such an anchor that is not on the page
becomes a link to the page that has the heading, so the declaration need not
know how the site is cut into pages. An anchor no page has is left as it is,
and ``mkdocs build --strict`` fails on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify

HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
SECTION_LINK = re.compile(r"\]\(#([a-z0-9-]+)\)")
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)


def _anchors(markdown: str) -> set[str]:
    return {slugify(title, "-") for title in HEADING.findall(FENCE.sub("", markdown))}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **_: Any) -> str:
    if page.file.src_uri != "configuration.md":
        return markdown
    here = _anchors(markdown)
    where: dict[str, str] = {}
    for file in files.documentation_pages():
        if file.src_uri == page.file.src_uri:
            continue
        source = Path(file.abs_src_path).read_text(encoding="utf-8")
        for anchor in _anchors(source):
            where.setdefault(anchor, file.src_uri)

    def link(match: re.Match[str]) -> str:
        anchor = match.group(1)
        if anchor in here or anchor not in where:
            return match.group(0)
        return f"]({where[anchor]}#{anchor})"

    return SECTION_LINK.sub(link, markdown)
