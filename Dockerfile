# libvirt-exporter as a container image: `make image` builds it (see README, "Container image").
#
# Two stages on the same Debian base, so that the venv built in the first runs unchanged in the
# second: the same python3 at the same path, the same libvirt soname. libvirt-python has no wheels
# and compiles against libvirt-dev; the runtime stage holds only python3, libvirt's client library
# and the venv, with no compiler and no headers.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS builder
# ca-certificates: pip verifies the package index against the system's CA bundle.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates python3-venv python3-dev libvirt-dev gcc pkg-config \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/libvirt-exporter
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libvirt_exporter ./libvirt_exporter
# pip and setuptools only install; the exporter needs neither at run time.
RUN /opt/libvirt-exporter/bin/pip install --no-cache-dir . \
    && /opt/libvirt-exporter/bin/pip uninstall -y pip setuptools

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="libvirt-exporter" \
      org.opencontainers.image.description="Prometheus exporter for libvirt hosts that never blocks a scrape on a hung VM" \
      org.opencontainers.image.licenses="Apache-2.0"
# libvirt0 is libvirt's client library; the daemon stays on the host.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 libvirt0 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
COPY --from=builder /opt/libvirt-exporter /opt/libvirt-exporter
# nobody:nogroup (65534), as Prometheus' own images run. libvirtd's read-only socket is open to
# every user, but libvirtd looks each client's uid and gid up in the *host's* user database and
# refuses ids it does not find there; 65534 is the one pair every Linux host has.
USER 65534:65534
EXPOSE 9177
ENTRYPOINT ["/opt/libvirt-exporter/bin/libvirt-exporter"]
# qemu:///system opens /run/libvirt/libvirt-sock-ro: mount the host's /run/libvirt read-only.
CMD ["--libvirt.uri=qemu:///system", "--web.listen-address=:9177"]
