"""Prometheus exporter for libvirt hosts that serves a cached snapshot and never blocks on QEMU."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("libvirt-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
