"""The channel between the exporter and its front process (front.py): a Unix socket pair carrying
messages, each a frame of a kind and a length.

The exporter hands over every exposition it renders and answers the front's requests for the
status page; the front asks for nothing else. Each side reads the other's end closing as the other
having ended, however it ended (a crash and SIGKILL included): the kernel closes the end.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from gevent.lock import Semaphore
from gevent.socket import socket

from libvirt_exporter.served import Exposition


class _Kind(IntEnum):
    EXPOSITION = 1
    PAGE_REQUEST = 2
    PAGE = 3


_FRAME = struct.Struct("!BQ")
"""A frame's head: its kind and the length of what follows."""
_SIZES = struct.Struct("!QQQQ")
"""An exposition's: the lengths of its two gzipped bodies, then their plain sizes."""
_NUMBER = struct.Struct("!Q")
_PAGE = struct.Struct("!QQ")
"""A page's: the number of the request it answers, and its plain size."""


@dataclass(frozen=True)
class PageRequest:
    """The front asks for the status page; the answer carries the same number."""

    number: int


@dataclass(frozen=True)
class Page:
    """The status page, gzipped, and its plain size, for the request `number`."""

    number: int
    gzipped: bytes
    size: int


Message = Exposition | PageRequest | Page


class Channel:
    """One end of the pair. Messages are sent whole: a send waits (in its greenlet) for any other
    send to end, so that greenlets sending at once never interleave their frames."""

    def __init__(self, sock: socket) -> None:
        self._socket = sock
        self._sending = Semaphore()

    def close(self) -> None:
        self._socket.close()

    def send(self, message: Message) -> None:
        kind, parts = _encoded(message)
        with self._sending:
            self._socket.sendall(_FRAME.pack(kind, sum(len(part) for part in parts)))
            for part in parts:
                self._socket.sendall(part)

    def messages(self) -> Iterator[Message]:
        """Every message received, until the other end closes."""
        while True:
            head = self._read(_FRAME.size)
            if head is None:
                return
            kind, length = _FRAME.unpack(head)
            body = self._read(length)
            if body is None:
                return
            yield _decoded(_Kind(kind), body)

    def _read(self, length: int) -> memoryview | None:
        """`length` bytes, or None if the other end closed first. A view, not a copy: the parts a
        message keeps are copied out of it once (`_decoded`)."""
        view = memoryview(bytearray(length))
        received = 0
        while received < length:
            count = self._socket.recv_into(view[received:])
            if count == 0:
                return None
            received += count
        return view


def _encoded(message: Message) -> tuple[_Kind, tuple[bytes, ...]]:
    if isinstance(message, Exposition):
        text, openmetrics = message.text_gzipped, message.openmetrics_gzipped
        sizes = _SIZES.pack(len(text), len(openmetrics), message.text_size, message.openmetrics_size)
        return _Kind.EXPOSITION, (sizes, text, openmetrics)
    if isinstance(message, PageRequest):
        return _Kind.PAGE_REQUEST, (_NUMBER.pack(message.number),)
    return _Kind.PAGE, (_PAGE.pack(message.number, message.size), message.gzipped)


def _decoded(kind: _Kind, body: memoryview) -> Message:
    if kind is _Kind.EXPOSITION:
        text_length, openmetrics_length, text_size, openmetrics_size = _SIZES.unpack_from(body)
        text_end = _SIZES.size + text_length
        openmetrics = bytes(body[text_end : text_end + openmetrics_length])
        return Exposition(bytes(body[_SIZES.size : text_end]), openmetrics, text_size, openmetrics_size)
    if kind is _Kind.PAGE_REQUEST:
        return PageRequest(*_NUMBER.unpack(body))
    number, size = _PAGE.unpack_from(body)
    return Page(number, bytes(body[_PAGE.size :]), size)
