"""The channel between the exporter and its front process, over a real socket pair."""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest
from prometheus_client import CollectorRegistry

from libvirt_exporter.exposition import Snapshot, TakenState
from libvirt_exporter.handover import Channel, Message, Page, PageRequest
from libvirt_exporter.served import Exposition


@pytest.fixture
def pair() -> tuple[Channel, Channel]:
    ours, theirs = gevent.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return Channel(ours), Channel(theirs)


def received(channel: Channel, count: int) -> list[Message]:
    """The next `count` messages; a frame garbled by interleaved sends fails here, not hangs."""
    messages = channel.messages()
    with gevent.Timeout(10):
        return [next(messages) for _ in range(count)]


def test_every_message_arrives_as_sent_even_past_the_sockets_buffers(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    large = bytes(range(256)) * 8192  # 2 MiB: the exposition of thousands of domains
    sent: list[Message] = [
        Exposition(large, large[::-1], 40 * len(large), 41 * len(large)),
        PageRequest(7),
        Page(7, b"\x1f\x8b page", 123),
        Exposition(b"", b"", 0, 0),
    ]
    sending = gevent.spawn(lambda: [sender.send(message) for message in sent])
    got = received(receiver, len(sent))
    sending.get(timeout=10)
    assert got == sent


def test_messages_sent_by_greenlets_at_once_arrive_whole(pair: tuple[Channel, Channel]) -> None:
    """The exporter hands over expositions and answers page requests from different greenlets."""
    sender, receiver = pair
    bodies = [bytes([n]) * 300_000 for n in range(8)]
    senders = [gevent.spawn(sender.send, Page(n, body, n)) for n, body in enumerate(bodies)]
    got = received(receiver, len(bodies))
    gevent.joinall(senders, raise_error=True)
    assert sorted((page.number, page.gzipped) for page in got if isinstance(page, Page)) == list(
        enumerate(bodies)
    )


def test_the_messages_end_when_the_other_end_closes(pair: tuple[Channel, Channel]) -> None:
    sender, receiver = pair
    sender.send(PageRequest(1))
    sender.close()
    assert list(receiver.messages()) == [PageRequest(1)]


def test_a_message_cut_short_by_the_other_end_closing_is_not_taken(pair: tuple[Channel, Channel]) -> None:
    """An exporter killed while it hands an exposition over leaves half a frame: nothing of it is
    served."""
    sender, receiver = pair
    sender._socket.sendall(b"\x01\x00\x00\x00\x00\x00\x01\x00\x00partial")
    sender.close()
    assert list(receiver.messages()) == []


def test_newer_than_waits_for_a_publish_and_skips_to_the_last() -> None:
    snapshot = Snapshot(lambda: TakenState(lambda: (), lambda: b""), CollectorRegistry())
    first = snapshot.newer_than(None)
    waiting = gevent.spawn(snapshot.newer_than, first)
    gevent.sleep(0)  # it runs until it waits
    assert not waiting.ready()  # nothing newer yet
    snapshot.publish()
    assert waiting.get(timeout=10) is snapshot.current is not first
    snapshot.publish()
    assert snapshot.newer_than(first) is snapshot.current  # two publishes later: the last one
