"""The polkit grant docs/security.md gives the guest sampler, tried as written on a libvirtd with
libvirt's polkit access driver (tests/integration/guest_grant.py runs it in private namespaces):
with it the exporter, as an unprivileged user, exports a guest's file systems and still may not
suspend or destroy a domain; without it, or with half of it, the guest sampler fails with one log
line and every other sampler goes on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.guest import GuestKernel

RUN_TIMEOUT = 300.0
"""It boots the guest under pure emulation and starts three exporters: about 20 s here."""


@pytest.fixture(scope="module")
def seen(guest_kernel: GuestKernel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("grant")
    command = [sys.executable, "-m", "tests.integration.guest_grant", str(workdir), str(guest_kernel.kernel)]
    done = subprocess.run(
        [*command, str(guest_kernel.initrd)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("case", ["without_grant", "connect_only"])
def test_without_the_grant_the_guest_sampler_fails_with_one_log_line_and_the_rest_goes_on(
    seen: dict[str, Any], case: str
) -> None:
    refused = seen[case]
    assert refused["guest_errors"] >= 3 and refused["guest_stale"] == 1
    assert refused["basic_stale"] == 0 and refused["bulk_stale"] == 0, "the refusal held up another sampler"
    (line,) = refused["error_log_lines"]
    assert refused["guest_log_lines"] == [line]
    assert "libvirt refuses the guest sampler's calls" in line and "docs/security.md" in line


def test_with_the_documented_grant_the_guest_is_exported_and_nothing_more_is_allowed(
    seen: dict[str, Any],
) -> None:
    granted = seen["with_grant"]
    assert granted["data_used_bytes"] > 0 and granted["guest_stale"] == 0
    assert granted["error_log_lines"] == []
    assert granted["nobody_may"]["guestInfo"] == "allowed"
    for change in ("suspend", "destroy"):
        assert granted["nobody_may"][change].startswith("access denied"), granted["nobody_may"]
