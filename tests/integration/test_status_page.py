"""The status page `/` in a real browser: headless Chromium (Debian's `chromium`) loads it while one
VM's QEMU is stopped on the real libvirtd, and finds that VM marked stuck and the others fresh.

The screenshots in docs/ are taken here, by `chromium --headless --screenshot`, at a desktop's and
a phone's width; `UPDATE_SCREENSHOTS=1` copies them there.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.exposition import Series, value
from tests.integration.test_real_libvirt import SAMPLERS, scrape_until
from tests.integration.vms import FAST_SAMPLING as ARGS
from tests.integration.vms import Exporter, TinyVM, VMFactory
from tests.status_page import StatusPage, read_status_page

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCREENSHOTS = {"status-page.png": (1280, 800), "status-page-phone.png": (412, 915)}
"""File name and window size: a laptop's, and a phone's viewport in CSS pixels."""
BROWSER_TIMEOUT = 120
"""Seconds Chromium may take to start, load the page and quit on a loaded 2-core machine."""


@pytest.fixture(scope="module")
def vms(make_tiny_vms: VMFactory) -> list[TinyVM]:
    return make_tiny_vms(3)


def chromium(profile: Path, *args: str) -> bytes:
    """Run headless Chromium with a profile of its own; its standard output."""
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: `make test` installs Debian's chromium (scripts/ensure-libvirtd.sh)"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=BROWSER_TIMEOUT)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header chunk."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_chromium_shows_the_frozen_vm_stuck_and_the_others_fresh(
    vms: list[TinyVM], run_exporter: Callable[..., Exporter], tmp_path: Path
) -> None:
    exporter = run_exporter(*ARGS)
    names = {vm.name for vm in vms}

    def fresh(s: Series, name: str) -> bool:
        return all(value(s, "libvirt_domain_sample_stale", domain=name, sampler=x) == 0 for x in SAMPLERS)

    scrape_until(exporter, lambda s: all(fresh(s, name) for name in names), timeout=30)
    frozen, healthy = vms[1], [vms[0].name, vms[2].name]
    frozen.freeze()
    stopped = {"domain": frozen.name, "signal": "qemu_stopped"}
    block = {"domain": frozen.name, "sampler": "block"}

    def flagged(s: Series) -> bool:
        signal = value(s, "libvirt_domain_hang_signal", **stopped) == 1
        return signal and value(s, "libvirt_domain_sample_stale", **block) == 1

    scrape_until(exporter, flagged, timeout=30)

    url = exporter.base_url + "/"
    page: StatusPage = read_status_page(chromium(tmp_path / "profile", "--dump-dom", url).decode())

    assert names <= set(page.domains), "every VM has its row"
    row = page.domains[frozen.name]
    assert row.attributes["data-verdict"] == "stuck"
    assert row.cells["verdict"] == "stuck" and row.cells["hang signals"] == "qemu_stopped"
    assert "stale" in row.cells["block"] and row.cell_classes["basic"] == "fresh"
    for name in healthy:
        assert page.domains[name].attributes["data-verdict"] == "fresh", page.domains[name].cells
    assert next(iter(page.domains)) == frozen.name, "the stuck VM comes first"
    assert page.scripts == 0

    for file_name, (width, height) in SCREENSHOTS.items():
        shot = tmp_path / file_name
        chromium(tmp_path / "profile", f"--screenshot={shot}", f"--window-size={width},{height}", url)
        assert png_size(shot) == (width, height)
        if os.environ.get("UPDATE_SCREENSHOTS"):
            shutil.copy(shot, DOCS / file_name)
