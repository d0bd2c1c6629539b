"""The few facts about libvirt-python that the rest of the exporter relies on, kept in one place."""

from __future__ import annotations

import logging
import threading
from typing import Any

import libvirt

log = logging.getLogger(__name__)


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _silence_default_error_printer() -> None:
    """libvirt prints every error to stderr by default; the exporter logs the ones that matter."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def start_event_loop() -> None:
    """Run libvirt's default event loop in a real OS thread, once per process.

    It must be registered before the first connection is opened: without it no close callback
    or domain event is delivered, and libvirtd's own keepalive pings go unanswered.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        _silence_default_error_printer()
        libvirt.virEventRegisterDefaultImpl()
        thread = threading.Thread(target=_run_event_loop, name="libvirt-event-loop", daemon=True)
        thread.start()
        _event_loop_started = True


def _run_event_loop() -> None:
    while True:
        if libvirt.virEventRunDefaultImpl() < 0:
            log.error("libvirt's event loop failed an iteration")


def open_read_only(uri: str) -> Any:
    """A read-only connection: it can read every statistic and change nothing.

    Client-side keepalive stays off: a keepalive timeout that closes a connection while several
    threads wait on it can crash the process (docs/libvirt-behaviour.md). MainConnection probes
    liveness instead.
    """
    start_event_loop()
    return libvirt.openReadOnly(uri)


def open_read_write(uri: str) -> Any:
    """A read-write connection, for the one sampler whose calls libvirt refuses on a read-only
    one (the guest agent's, samplers/guest.py); the exporter changes nothing through it."""
    start_event_loop()
    return libvirt.open(uri)


_DENIED = {
    libvirt.VIR_ERR_OPERATION_DENIED,  # a read-only connection
    libvirt.VIR_ERR_ACCESS_DENIED,  # an access driver (polkit) refused the permission
    libvirt.VIR_ERR_AUTH_FAILED,  # the read-write socket refused the client
    libvirt.VIR_ERR_AUTH_UNAVAILABLE,
    libvirt.VIR_ERR_AUTH_CANCELLED,
}


def error_code(error: BaseException) -> int | None:
    """libvirt's error number for a libvirt error, None for anything else."""
    if isinstance(error, libvirt.libvirtError):
        code = error.get_error_code()
        return int(code) if code is not None else None
    return None


def is_missing_domain(error: BaseException) -> bool:
    """The domain went away between being listed and being asked: not a failure of anything."""
    return bool(error_code(error) == libvirt.VIR_ERR_NO_DOMAIN)


def is_unsupported(error: BaseException) -> bool:
    """The driver does not implement the call (libvirt's test driver lacks some)."""
    return bool(error_code(error) == libvirt.VIR_ERR_NO_SUPPORT)


def is_denied(error: BaseException) -> bool:
    """libvirtd refused the client or the call for want of a privilege."""
    return error_code(error) in _DENIED


def describe(error: BaseException) -> str:
    """One line for the log."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
