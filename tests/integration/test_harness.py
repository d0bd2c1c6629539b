"""Proof that the integration harness itself works: VMs start, freeze, thaw, vanish,
and survive a libvirtd restart. If these fail, no other integration test can be trusted."""

from __future__ import annotations

import libvirt

from tests.integration.vms import LibvirtdControl, TinyVM, VMFactory, process_state


def domain_names(conn: libvirt.virConnect) -> set[str]:
    return {dom.name() for dom in conn.listAllDomains()}


def test_tiny_vms_run_freeze_thaw_and_are_cleaned_up(
    make_tiny_vms: VMFactory, libvirt_conn: libvirt.virConnect
) -> None:
    vms = make_tiny_vms(2, second_disk=True)

    for vm in vms:
        assert vm.domain(libvirt_conn).isActive()
        assert vm.disk_virtual_size_bytes == 64 * 1024 * 1024
        assert all(path.exists() for path in vm.disk_paths)
        assert len(vm.disk_paths) == 2
    assert len({vm.name for vm in vms}) == 2

    frozen, running = vms
    frozen.freeze()
    assert process_state(frozen.qemu_pid()) == "T"
    assert process_state(running.qemu_pid()) != "T"
    frozen.thaw()
    assert process_state(frozen.qemu_pid()) != "T"

    make_tiny_vms.destroy(vms)
    assert not domain_names(libvirt_conn) & {vm.name for vm in vms}
    assert not any(path.exists() for vm in vms for path in vm.disk_paths)


def test_destroying_a_frozen_vm_is_quick(make_tiny_vms: VMFactory) -> None:
    """Teardown after a failed test may meet a VM still frozen: it must not hang."""
    [vm] = make_tiny_vms(1)
    vm.freeze()
    make_tiny_vms.destroy([vm])
    assert not vm.frozen


def test_vms_survive_a_libvirtd_restart(
    tiny_vms: list[TinyVM], libvirtd_control: LibvirtdControl, libvirt_uri: str
) -> None:
    pids = [vm.qemu_pid() for vm in tiny_vms]

    libvirtd_control.restart()

    conn = libvirt.open(libvirt_uri)
    try:
        assert all(vm.domain(conn).isActive() for vm in tiny_vms)
    finally:
        conn.close()
    assert [vm.qemu_pid() for vm in tiny_vms] == pids
