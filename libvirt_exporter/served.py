"""What scrapes are answered with: an exposition's gzipped bodies, and which of them a request takes.

Both processes use it: the exporter renders expositions (exposition.py), and its front process
(front.py) answers from them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.exposition import choose_encoder, gzip_accepted

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def wants_openmetrics(accept_header: str) -> bool:
    """Whether prometheus_client would answer this Accept header in OpenMetrics: it takes the
    first type it serves in the header's order (Prometheus lists them by preference), OpenMetrics
    from version 1.0.0 on, plain text otherwise. It ignores q-values, so a type refused with q=0 is
    struck out first. The content types sent stay ours: the formatter writes no escaping variant."""
    _, content_type = choose_encoder(_acceptable(accept_header))
    return content_type.startswith("application/openmetrics-text")


def accepts_gzip(accept_encoding: str) -> bool:
    """prometheus_client's rule (`gzip` listed), less a `gzip;q=0`, which refuses it."""
    return gzip_accepted(_acceptable(accept_encoding))


def _acceptable(header: str) -> str:
    """The header without the entries whose q-value is 0: RFC 9110 calls them "not acceptable"."""
    return ",".join(entry for entry in header.split(",") if not _refused(entry))


def _refused(entry: str) -> bool:
    for parameter in entry.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "q":
            try:
                return float(value.strip()) == 0
            except ValueError:
                return False
    return False


GZIP_WBITS = 16 + zlib.MAX_WBITS
"""zlib's window size, with gzip's framing."""


class Page(Protocol):
    """A page served gzipped, wherever it is rendered."""

    def gzipped(self) -> tuple[bytes, int]:
        """The page gzipped, and its plain size; on the hub, it may wait but never holds it up."""
        ...


@dataclass(frozen=True)
class _EmptyPage:
    """The page of an exposition that has none (yet): empty."""

    def gzipped(self) -> tuple[bytes, int]:
        return _EMPTY_GZIP, 0


_EMPTY_GZIP = zlib.compress(b"", wbits=GZIP_WBITS)
_NO_PAGE = _EmptyPage()


@dataclass(frozen=True)
class Exposition:
    """One rendered snapshot, in both formats, gzipped: what Prometheus asks for. The plain text is
    about twenty times its gzipped size, so a snapshot holds only the gzipped bodies; a plain answer
    is unzipped part by part as the client reads it (http.py)."""

    text_gzipped: bytes
    openmetrics_gzipped: bytes
    text_size: int
    openmetrics_size: int
    status_page: Page = _NO_PAGE
    """The status page (status_page.py) of the same state."""


class Served(Protocol):
    """What the HTTP side answers from: the exposition to serve now."""

    @property
    def current(self) -> Exposition: ...
