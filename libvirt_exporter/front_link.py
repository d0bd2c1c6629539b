"""The exporter's side of its front process (front.py): it starts the front on the listening socket,
hands over each exposition the snapshot publishes, and answers the front's requests for the status
page from the snapshot's state."""

from __future__ import annotations

import socket
import sys

import gevent
import gevent.socket
import gevent.subprocess

from libvirt_exporter.config import Config
from libvirt_exporter.exposition import Snapshot
from libvirt_exporter.front import FrontSetup
from libvirt_exporter.handover import Channel, Page, PageRequest
from libvirt_exporter.logs import get_logger
from libvirt_exporter.served import Exposition

log = get_logger(__name__)

STOP_TIMEOUT = 5.0
"""Seconds the front has to end once the channel is closed (it closes its connections within one)
before it is killed."""

_THIS_INTERPRETER = "/proc/self/exe"
"""The front runs this process's interpreter, reached through the kernel's link to it: the path it
was started by may not resolve for the user it runs as (a virtualenv's link into root's home, for
`nobody`). Given `sys.executable` as its name, the interpreter finds the same modules as ours."""


class FrontFailed(Exception):
    """The front process could not start, or ended while the exporter was not stopping: nothing
    answers scrapes."""


def answer_pages(channel: Channel, snapshot: Snapshot) -> None:
    """Answer each request for the status page on `channel` with the snapshot's current one, in
    turn, until the other end closes."""
    try:
        for message in channel.messages():
            if isinstance(message, PageRequest):
                channel.send(_page(message.number, snapshot))
    except OSError:
        return


def _page(number: int, snapshot: Snapshot) -> Page:
    """The current status page; a page that fails to render (a bug) is logged here and answered
    with no body, which the front turns into a 500, as an exception in the app would be."""
    try:
        gzipped, size = snapshot.current.status_page.gzipped()
    except Exception:
        log.exception("status page failed")
        return Page(number, b"", 0)
    return Page(number, gzipped, size)


class Front:
    """The running front process and our end of its channel."""

    def __init__(self, process: gevent.subprocess.Popen, channel: Channel) -> None:
        self._process = process
        self._channel = channel

    @classmethod
    def start(cls, listener: socket.socket, config: Config) -> Front:
        """Start the front on `listener`, which it then holds: the caller may close its own."""
        ours, theirs = gevent.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        setup = FrontSetup(
            listener.fileno(),
            theirs.fileno(),
            config.telemetry_path,
            config.web_config_file,
            config.web,
            config.log_level,
            config.log_format,
        )
        try:
            process = gevent.subprocess.Popen(
                [sys.executable, "-m", "libvirt_exporter.front", setup.to_json()],
                executable=_THIS_INTERPRETER,
                pass_fds=(listener.fileno(), theirs.fileno()),
            )
        except OSError as error:  # not the port's fault: the caller reports those as "cannot listen"
            raise FrontFailed(f"the front process (which answers HTTP) could not start: {error}") from error
        finally:
            theirs.close()
        return cls(process, Channel(ours))

    @property
    def pid(self) -> int:
        pid: int = self._process.pid
        return pid

    def follow(self, snapshot: Snapshot) -> None:
        """Hand over the snapshot's exposition, then each one it publishes, for as long as the front
        takes them. A publish that comes while one is handed over is skipped to the last."""
        handed: Exposition | None = None
        try:
            while True:
                handed = snapshot.newer_than(handed)
                self._channel.send(handed)
        except OSError:
            return  # the front ended: `answer` returns and says so

    def answer(self, snapshot: Snapshot) -> None:
        """Answer the front's requests for the status page; return once the front has ended."""
        answer_pages(self._channel, snapshot)

    def how_it_ended(self) -> str:
        """As an operator would say it: "exit status 1", "killed by signal 9"."""
        status: int = self._process.poll()
        return f"killed by signal {-status}" if status < 0 else f"exit status {status}"

    def stop(self) -> None:
        """Close our end, which ends the front, and wait for it (killed if it does not end)."""
        self._channel.close()
        try:
            self._process.wait(timeout=STOP_TIMEOUT)
        except gevent.subprocess.TimeoutExpired:
            log.warning("front process did not end; killed", pid=self.pid)
            self._process.kill()
            self._process.wait()
