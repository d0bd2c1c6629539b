"""Reading the status page `/` as a user would: each domain's row, what it says and how it is marked."""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from html.parser import HTMLParser

from libvirt_exporter.served import Exposition


@dataclass
class Row:
    """A table row: its data-* attributes and the text of each of its cells (`data-label` or
    the row header's `th`)."""

    attributes: dict[str, str]
    cells: dict[str, str] = field(default_factory=dict)
    cell_classes: dict[str, str] = field(default_factory=dict)


@dataclass
class StatusPage:
    domains: dict[str, Row]
    storages: dict[str, Row]
    stuck_calls: list[Row]
    text: str
    """All the page's text, as a reader sees it (no markup)."""
    scripts: int
    """`<script>` elements: the page has none of its own."""


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: list[Row] = []
        self.text: list[str] = []
        self.scripts = 0
        self._row: Row | None = None
        self._cell: tuple[str, str] | None = None
        self._cell_text: list[str] = []
        self._section = ""
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {name: value or "" for name, value in attrs}
        if tag == "script":
            self.scripts += 1
        elif tag == "br":
            self.handle_data(" ")
        elif tag == "h2":
            self._in_heading, self._section = True, ""
        elif tag == "tr":
            self._row = Row({"section": self._section, **found})
        elif tag in ("td", "th") and self._row is not None:
            label = found.get("data-label", "name" if found.get("scope") == "row" else "")
            self._cell, self._cell_text = (label, found.get("class", "")), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_heading = False
        elif tag in ("td", "th") and self._row is not None and self._cell is not None:
            label, css = self._cell
            self._row.cells[label] = " ".join("".join(self._cell_text).split())
            self._row.cell_classes[label] = css
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_heading:
            self._section += data
        if self._cell is not None:
            self._cell_text.append(data)


def status_html(exposition: Exposition) -> str:
    """The status page of a rendered snapshot, as a browser gets it."""
    return gzip.decompress(exposition.status_page.gzipped()[0]).decode()


def read_status_page(page: str) -> StatusPage:
    reader = _Reader()
    reader.feed(page)
    reader.close()
    rows = reader.rows
    return StatusPage(
        domains={row.attributes["data-domain"]: row for row in rows if "data-domain" in row.attributes},
        storages={row.attributes["data-storage"]: row for row in rows if "data-storage" in row.attributes},
        stuck_calls=[r for r in rows if r.attributes["section"] == "Stuck calls" and "name" in r.cells],
        text=" ".join("".join(reader.text).split()),
        scripts=reader.scripts,
    )
