"""Metric names of other libvirt exporters, and the family of ours that replaces each one.

docs/metrics.md renders these tables (see metrics_doc.py), and a unit test checks that every
family named here exists, so a renamed family cannot leave the migration guide pointing at
nothing. The names were read from the exporters themselves, not recalled:

- Debian's `prometheus-libvirt-exporter` 0.2.0-1+b12 (kumina/libvirt_exporter, Go): its
  `/metrics` scraped on a host with one running VM, and the metric names and help texts
  compiled into `/usr/bin/prometheus-libvirt-exporter`, for the families it emits only when
  libvirt reports the field.
- inovex/prometheus-libvirt-exporter: the metric definitions in
  `pkg/exporter/prometheus-libvirt-exporter.go` at commit 05c9372, and the names that commit
  f1ecf5d (an older release) used where they differ.
"""

from __future__ import annotations

from typing import NamedTuple


class Rename(NamedTuple):
    """One family of another exporter: its name, ours (None when we have none), and what differs."""

    theirs: str
    ours: str | None
    note: str = ""


DEBIAN_SOURCE = (
    "Debian 12's `prometheus-libvirt-exporter` 0.2.0-1+b12, which packages "
    "[kumina/libvirt_exporter](https://github.com/kumina/libvirt_exporter) (port 9177): names taken "
    "from its `/metrics` on a host with one running VM, and from the binary for the block-time "
    "families it declares."
)

DEBIAN_LABELS = (
    "Every per-domain series of theirs carries `domain` and `uuid` (with "
    "`--libvirt.export-nova-metadata` also `name`, `flavor` and `project_name`); block series add "
    "`source_file` and `target_device`, interface series `source_bridge` and `target_device`. Ours "
    "carry `domain` and, per device, `device` (their `target_device`) only. The rest is in info "
    "families: `uuid` in `libvirt_domain_info`, the file in `libvirt_domain_block_info{path}`, the "
    "bridge in `libvirt_domain_interface_info{source}`. To get a label back, join: "
    "`libvirt_domain_cpu_time_seconds_total * on(domain) group_left(uuid) libvirt_domain_info`. "
    "Their Nova labels `name`, `flavor` and `project_name` are `instance_name`, `flavor` and "
    "`project_name` of `libvirt_domain_openstack_info`."
)

_DOMAIN_INFO_FAMILIES = (
    # Both exporters come from kumina's and name the virDomainGetInfo figures alike.
    Rename("libvirt_domain_info_maximum_memory_bytes", "libvirt_domain_memory_maximum_bytes"),
    Rename(
        "libvirt_domain_info_memory_usage_bytes",
        "libvirt_domain_memory_current_bytes",
        "the balloon's current size, not what the guest uses",
    ),
    Rename("libvirt_domain_info_virtual_cpus", "libvirt_domain_vcpus_current"),
    Rename("libvirt_domain_info_cpu_time_seconds_total", "libvirt_domain_cpu_time_seconds_total"),
)

_INTERFACE_COUNTERS = (
    # Both exporters name the interface counters alike: theirs `_stats_` infix, ours none.
    Rename(
        "libvirt_domain_interface_stats_receive_bytes_total", "libvirt_domain_interface_receive_bytes_total"
    ),
    Rename(
        "libvirt_domain_interface_stats_receive_packets_total",
        "libvirt_domain_interface_receive_packets_total",
    ),
    Rename(
        "libvirt_domain_interface_stats_receive_errors_total",
        "libvirt_domain_interface_receive_errors_total",
    ),
    Rename(
        "libvirt_domain_interface_stats_receive_drops_total", "libvirt_domain_interface_receive_drops_total"
    ),
    Rename(
        "libvirt_domain_interface_stats_transmit_bytes_total",
        "libvirt_domain_interface_transmit_bytes_total",
    ),
    Rename(
        "libvirt_domain_interface_stats_transmit_packets_total",
        "libvirt_domain_interface_transmit_packets_total",
    ),
    Rename(
        "libvirt_domain_interface_stats_transmit_errors_total",
        "libvirt_domain_interface_transmit_errors_total",
    ),
    Rename(
        "libvirt_domain_interface_stats_transmit_drops_total",
        "libvirt_domain_interface_transmit_drops_total",
    ),
)

DEBIAN: tuple[Rename, ...] = (
    Rename(
        "libvirt_up",
        "libvirt_up",
        "theirs: whether the scrape's libvirt calls succeeded; ours: whether libvirtd is connected",
    ),
    Rename("libvirt_domains_number", "libvirt_domains", "ours is split by `state`: `sum(libvirt_domains)`"),
    Rename("libvirt_domain_state_code", "libvirt_domain_state_code", "same virDomainState number"),
    *_DOMAIN_INFO_FAMILIES,
    Rename("libvirt_domain_block_stats_read_bytes_total", "libvirt_domain_block_read_bytes_total"),
    Rename("libvirt_domain_block_stats_read_requests_total", "libvirt_domain_block_read_requests_total"),
    Rename(
        "libvirt_domain_block_stats_read_seconds_total",
        "libvirt_domain_block_read_time_seconds_total",
        "declared by theirs, but its virDomainBlockStats call never returns it",
    ),
    Rename("libvirt_domain_block_stats_write_bytes_total", "libvirt_domain_block_write_bytes_total"),
    Rename("libvirt_domain_block_stats_write_requests_total", "libvirt_domain_block_write_requests_total"),
    Rename(
        "libvirt_domain_block_stats_write_seconds_total",
        "libvirt_domain_block_write_time_seconds_total",
        "declared by theirs, but never emitted (as above)",
    ),
    Rename(
        "libvirt_domain_block_stats_flush_requests_total",
        "libvirt_domain_block_flush_requests_total",
        "declared by theirs, but never emitted (as above)",
    ),
    Rename(
        "libvirt_domain_block_stats_flush_seconds_total",
        "libvirt_domain_block_flush_time_seconds_total",
        "declared by theirs, but never emitted (as above)",
    ),
    *_INTERFACE_COUNTERS,
)

INOVEX_SOURCE = (
    "[inovex/prometheus-libvirt-exporter](https://github.com/inovex/prometheus-libvirt-exporter): "
    "the metric definitions in `pkg/exporter/prometheus-libvirt-exporter.go` at commit 05c9372; rows "
    "marked *older releases* are names that commit f1ecf5d used instead."
)

INOVEX_LABELS = (
    "At commit 05c9372 their per-domain series carry `domain` (plus `target_device` or `vcpu`), and "
    "metadata is in `libvirt_domain_info{os_type,os_type_arch,os_type_machine}` and "
    "`libvirt_domain_openstack_info`. Older releases put `instanceName`, `instanceId`, `flavorName`, "
    "`userName`, `userId`, `projectName`, `projectId` and `host` on every series. Ours carry `domain` "
    "and `device` (their `target_device`); the UUID is `libvirt_domain_info{uuid}` and the host "
    "`libvirt_host_info{hostname}`; join them in with `* on(domain) group_left(uuid) "
    "libvirt_domain_info`."
)

_MILLISECONDS = "theirs passes libvirt's milliseconds on as seconds; ours are seconds"
_FILE_IS_DISK = "libvirt's `file*` job fields are the `disk_*` job stats"
_POOL_LABEL = "same name; their `storage_pool` label is our `pool`"

INOVEX: tuple[Rename, ...] = (
    Rename(
        "libvirt_up", "libvirt_up", "theirs is 1 or absent; ours drops to 0 while libvirtd is unreachable"
    ),
    Rename(
        "libvirt_domain_timed_out",
        "libvirt_domain_sample_stale",
        "see also `libvirt_domain_sample_timeouts_total` and `libvirt_domain_call_in_flight_seconds`",
    ),
    Rename(
        "libvirt_domains", "libvirt_domains", "same name; ours is split by `state`: `sum(libvirt_domains)`"
    ),
    Rename(
        "libvirt_domain_info",
        "libvirt_domain_info",
        "same name; labels `os_type`, `arch`, `machine`, plus `uuid`",
    ),
    Rename(
        "libvirt_domain_openstack_info",
        "libvirt_domain_openstack_info",
        "same name; their `flavor_name` label is our `flavor`",
    ),
    Rename(
        "libvirt_domain_info_state",
        "libvirt_domain_state_code",
        "their `state_desc` label: `libvirt_domain_state{state,reason}`",
    ),
    *_DOMAIN_INFO_FAMILIES,
    Rename(
        "libvirt_domain_job_info_type",
        "libvirt_domain_job_info",
        "the job type as the `type` label, in words",
    ),
    Rename(
        "libvirt_domain_job_info_time_elapsed_seconds", "libvirt_domain_job_elapsed_seconds", _MILLISECONDS
    ),
    Rename(
        "libvirt_domain_job_info_time_remaining_seconds",
        "libvirt_domain_job_remaining_seconds",
        _MILLISECONDS,
    ),
    Rename("libvirt_domain_job_info_data_total_bytes", "libvirt_domain_job_data_total_bytes"),
    Rename("libvirt_domain_job_info_data_processed_bytes", "libvirt_domain_job_data_processed_bytes"),
    Rename("libvirt_domain_job_info_data_remaining_bytes", "libvirt_domain_job_data_remaining_bytes"),
    Rename("libvirt_domain_job_info_memory_total_bytes", "libvirt_domain_job_memory_total_bytes"),
    Rename("libvirt_domain_job_info_memory_processed_bytes", "libvirt_domain_job_memory_processed_bytes"),
    Rename("libvirt_domain_job_info_memory_remaining_bytes", "libvirt_domain_job_memory_remaining_bytes"),
    Rename("libvirt_domain_job_info_file_total_bytes", "libvirt_domain_job_disk_total_bytes", _FILE_IS_DISK),
    Rename(
        "libvirt_domain_job_info_file_processed_bytes",
        "libvirt_domain_job_disk_processed_bytes",
        _FILE_IS_DISK,
    ),
    Rename(
        "libvirt_domain_job_info_file_remaining_bytes",
        "libvirt_domain_job_disk_remaining_bytes",
        _FILE_IS_DISK,
    ),
    Rename(
        "libvirt_domain_memory_stats_swap_in_bytes",
        "libvirt_domain_memory_swap_in_bytes_total",
        "a gauge there, a counter here",
    ),
    Rename(
        "libvirt_domain_memory_stats_swap_out_bytes",
        "libvirt_domain_memory_swap_out_bytes_total",
        "a gauge there, a counter here",
    ),
    Rename("libvirt_domain_memory_stats_unused_bytes", "libvirt_domain_memory_unused_bytes"),
    Rename("libvirt_domain_memory_stats_available_bytes", "libvirt_domain_memory_available_bytes"),
    Rename("libvirt_domain_memory_stats_usable_bytes", "libvirt_domain_memory_usable_bytes"),
    Rename("libvirt_domain_memory_stats_rss_bytes", "libvirt_domain_memory_rss_bytes"),
    Rename("libvirt_domain_memory_stats_actual_balloon_bytes", "libvirt_domain_memory_current_bytes"),
    Rename("libvirt_domain_memory_stats_major_fault_total", "libvirt_domain_memory_major_faults_total"),
    Rename("libvirt_domain_memory_stats_minor_fault_total", "libvirt_domain_memory_minor_faults_total"),
    Rename(
        "libvirt_domain_memory_stats_used_percent",
        None,
        "compute it: `100 * libvirt_domain_memory_used_bytes / libvirt_domain_memory_available_bytes`",
    ),
    Rename(
        "libvirt_domain_block_stats_info",
        "libvirt_domain_block_info",
        "labels `device`, `path`, `bus`, `driver_type`, `type` (their `disk_type`), `protocol` (their "
        "`source_protocol`); no cache, discard or serial",
    ),
    Rename("libvirt_domain_block_stats_read_bytes_total", "libvirt_domain_block_read_bytes_total"),
    Rename("libvirt_domain_block_stats_read_requests_total", "libvirt_domain_block_read_requests_total"),
    Rename("libvirt_domain_block_stats_write_bytes_total", "libvirt_domain_block_write_bytes_total"),
    Rename("libvirt_domain_block_stats_write_requests_total", "libvirt_domain_block_write_requests_total"),
    Rename(
        "libvirt_domain_block_stats_read_time_seconds_total", "libvirt_domain_block_read_time_seconds_total"
    ),
    Rename(
        "libvirt_domain_block_stats_write_time_seconds_total",
        "libvirt_domain_block_write_time_seconds_total",
    ),
    Rename("libvirt_domain_block_stats_flush_requests_total", "libvirt_domain_block_flush_requests_total"),
    Rename(
        "libvirt_domain_block_stats_flush_time_seconds_total",
        "libvirt_domain_block_flush_time_seconds_total",
    ),
    Rename("libvirt_domain_block_stats_capacity_bytes", "libvirt_domain_block_capacity_bytes"),
    Rename(
        "libvirt_domain_interface_stats_info",
        "libvirt_domain_interface_info",
        "labels `device`, `mac`, `source`, `model`, `type` (their `interface_type`); no MTU",
    ),
    *_INTERFACE_COUNTERS,
    Rename("libvirt_domain_vcpu_current", "libvirt_domain_vcpus_current"),
    Rename("libvirt_domain_vcpu_maximum", "libvirt_domain_vcpus_maximum"),
    Rename("libvirt_domain_vcpu_state", "libvirt_domain_vcpu_state"),
    Rename("libvirt_domain_vcpu_time_seconds_total", "libvirt_domain_vcpu_time_seconds_total"),
    Rename("libvirt_domain_vcpu_wait_seconds_total", "libvirt_domain_vcpu_wait_seconds_total"),
    Rename("libvirt_domain_vcpu_delay_seconds_total", "libvirt_domain_vcpu_delay_seconds_total"),
    Rename("libvirt_storage_pool_state", "libvirt_storage_pool_state", _POOL_LABEL),
    Rename("libvirt_storage_pool_capacity_bytes", "libvirt_storage_pool_capacity_bytes", _POOL_LABEL),
    Rename("libvirt_storage_pool_allocation_bytes", "libvirt_storage_pool_allocation_bytes", _POOL_LABEL),
    Rename("libvirt_storage_pool_available_bytes", "libvirt_storage_pool_available_bytes", _POOL_LABEL),
    Rename("libvirt_domains_number", "libvirt_domains", "older releases; `sum(libvirt_domains)`"),
    Rename("libvirt_domain_state_code", "libvirt_domain_state_code", "older releases"),
    Rename(
        "libvirt_domain_stat_memory_swap_in_bytes",
        "libvirt_domain_memory_swap_in_bytes_total",
        "older releases",
    ),
    Rename(
        "libvirt_domain_stat_memory_swap_out_bytes",
        "libvirt_domain_memory_swap_out_bytes_total",
        "older releases",
    ),
    Rename("libvirt_domain_stat_memory_unused_bytes", "libvirt_domain_memory_unused_bytes", "older releases"),
    Rename(
        "libvirt_domain_stat_memory_available_bytes",
        "libvirt_domain_memory_available_bytes",
        "older releases",
    ),
    Rename("libvirt_domain_stat_memory_usable_bytes", "libvirt_domain_memory_usable_bytes", "older releases"),
    Rename("libvirt_domain_stat_memory_rss_bytes", "libvirt_domain_memory_rss_bytes", "older releases"),
    Rename(
        "libvirt_domain_block_stats_read_time_total",
        "libvirt_domain_block_read_time_seconds_total",
        "older releases; theirs in nanoseconds",
    ),
    Rename(
        "libvirt_domain_block_stats_write_time_total",
        "libvirt_domain_block_write_time_seconds_total",
        "older releases; theirs in nanoseconds",
    ),
)
