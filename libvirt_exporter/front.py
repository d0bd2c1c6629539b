"""The front process: it answers every HTTP request, from what the exporter hands over (handover.py),
and does nothing else.

A scrape answered in the exporter's own process waits for the GIL each time it needs it while the
render's or a call's thread holds it: those threads run Python for tens of milliseconds at a time
at each cycle's start. No thread holds this process's GIL, so a scrape here costs what the machine
gives a socket and a few hundred microseconds of Python (docs/benchmarks.md). It opens no libvirt
connection either, so what parses requests from the network cannot reach libvirt.

Its life follows the exporter's: it ends when the exporter's end of the channel closes, and it
leaves SIGTERM and SIGINT to the exporter, which closes that end as it stops.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace

import gevent
from gevent.event import AsyncResult
from gevent.socket import socket

from libvirt_exporter.config import WebLimits
from libvirt_exporter.handover import Channel, Message, Page, PageRequest
from libvirt_exporter.http import make_server
from libvirt_exporter.logs import get_logger, setup_logging
from libvirt_exporter.served import Exposition
from libvirt_exporter.web_config import load_web_config

log = get_logger(__name__)

PAGE_TIMEOUT = 30.0
"""Seconds a status page request waits for the exporter, whose hub never waits on libvirt: only a
stopped exporter (SIGSTOP, a debugger) takes this long."""


@dataclass(frozen=True)
class FrontSetup:
    """What the front needs to know, passed as JSON in its one argument."""

    listener_fd: int
    channel_fd: int
    telemetry_path: str
    web_config_file: str
    limits: WebLimits
    log_level: str
    log_format: str

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FrontSetup:
        fields = json.loads(text)
        return cls(**{**fields, "limits": WebLimits(**fields["limits"])})


class PageFailed(Exception):
    """The exporter answered a status page request with no page: the app answers 500."""


class StatusPages:
    """The status page, asked of the exporter, which renders it from its own state."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._numbers = itertools.count()
        self._waiting: dict[int, AsyncResult] = {}

    def gzipped(self) -> tuple[bytes, int]:
        number = next(self._numbers)
        self._waiting[number] = answer = AsyncResult()
        try:
            self._channel.send(PageRequest(number))
            page: Page = answer.get(timeout=PAGE_TIMEOUT)
        finally:
            del self._waiting[number]
        if not page.gzipped:
            raise PageFailed("the exporter could not render the status page; its log says why")
        return page.gzipped, page.size

    def answered(self, page: Page) -> None:
        """An answer to a request that gave up waiting is dropped."""
        waiting = self._waiting.get(page.number)
        if waiting is not None:
            waiting.set(page)


class HandedOver:
    """The exposition served now: the last one handed over, with the status page asked of the
    exporter."""

    def __init__(self, channel: Channel, first: Exposition) -> None:
        self.pages = StatusPages(channel)
        self.current: Exposition
        self.take(first)

    def take(self, exposition: Exposition) -> None:
        self.current = replace(exposition, status_page=self.pages)


def main(argv: Sequence[str]) -> int:
    setup = FrontSetup.from_json(argv[0])
    setup_logging(setup.log_level, setup.log_format)
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, signal.SIG_IGN)
    channel = Channel(socket(fileno=setup.channel_fd))
    messages = channel.messages()
    first = next(messages, None)  # no request is taken before there is something to answer
    if not isinstance(first, Exposition):
        return 0  # the exporter ended before handing anything over
    served = HandedOver(channel, first)
    web_config = load_web_config(setup.web_config_file) if setup.web_config_file else None
    listener = socket(fileno=setup.listener_fd)
    server = make_server(listener, served, setup.telemetry_path, web_config, setup.limits)
    server.start()
    gevent.spawn(_follow, messages, served).link(lambda _: server.stop(timeout=1))
    server.serve_forever()
    return 0


def _follow(messages: Iterator[Message], served: HandedOver) -> None:
    """Take each message from the exporter, until its end closes."""
    for message in messages:
        if isinstance(message, Exposition):
            served.take(message)
        elif isinstance(message, Page):
            served.pages.answered(message)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
