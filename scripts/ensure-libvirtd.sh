#!/usr/bin/env bash
# Make a system libvirtd with the QEMU driver answer at qemu:///system, and install
# every Debian package the test suite and the benchmarks use, so that no test ever
# installs one half-way through. Idempotent; run as root. Used by `make test`,
# `make bench-real`, `make chaos` and CI. apt's output goes to stderr, never to stdout.
#
# Machines here have no systemd, so the daemons are started by hand (`-d`).
# A libvirtd that already answers is left alone: we never reconfigure a host's
# own libvirtd.
set -euo pipefail

readonly URI="qemu:///system"
readonly QEMU_CONF="/etc/libvirt/qemu.conf"
readonly LIBVIRTD_CONF="/etc/libvirt/libvirtd.conf"
readonly WAIT_SECONDS=30
readonly LIBVIRT_PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
                          qemu-system-x86 qemu-utils)
# What the tests and benchmarks use besides libvirtd, each for:
#   prometheus                   promtool lints the exposition; a real server loads the rules
#   systemd systemd-container    systemd-analyze verifies the unit; systemd-nspawn boots it
#   linux-image-amd64 busybox-static cpio qemu-guest-agent e2fsprogs
#                                the booting guest whose balloon driver reports memory figures,
#                                with qemu-ga in its initramfs and an ext4 disk (mkfs.ext4)
#   polkitd dbus-daemon dbus-bin the guest sampler's polkit grant, tried on a private libvirtd with
#                                libvirt's polkit access driver (tests/integration/guest_grant.py)
#   python3-venv python3-dev libvirt-dev gcc pkg-config
#                                scripts/build-deb.sh builds the .deb on Debian's python3
#   prometheus-libvirt-exporter  the peer that `make bench-real` compares against
#   bindfs fuse3                 storage that stops answering: disk images on a FUSE mount whose
#                                daemon is stopped, as on a dead NFS server
#   chromium fonts-liberation    a real browser loads the status page with a VM frozen and takes
#                                the README's screenshots (the font is a recommendation of
#                                chromium's, which --no-install-recommends would leave out)
readonly TEST_PACKAGES=(prometheus systemd systemd-container linux-image-amd64 busybox-static cpio
                        qemu-guest-agent e2fsprogs polkitd dbus-daemon dbus-bin python3-venv python3-dev libvirt-dev gcc pkg-config
                        prometheus-libvirt-exporter bindfs fuse3 chromium fonts-liberation)

# libvirt's polkit actions ship in libvirt-daemon-system, which also brings init scripts and a
# default network that a test host's libvirtd must not get: its .deb is kept here, unpacked only
# into the private namespace of tests/integration/guest_grant.py.
readonly POLICY_DEB_DIR=/var/cache/libvirt-exporter-tests

log() { echo "ensure-libvirtd: $*" >&2; }

libvirtd_answers() {
    command -v virsh >/dev/null && virsh -c "$URI" version >/dev/null 2>&1
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

# Install those of the given Debian packages that are missing. `apt-get update`
# runs only when apt knows no candidate for one (a fresh machine has empty lists).
install_missing() {
    local missing=() pkg candidate
    for pkg in "$@"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    candidate=$(apt-cache policy "${missing[0]}" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if [[ -z "$candidate" || "$candidate" == "(none)" ]]; then
        log "apt-get update"
        apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
    fi
    log "installing ${missing[*]}"
    # Without systemd (and with Debian's container policy-rc.d) postinst scripts
    # cannot start services; apt still finishes cleanly. Its output goes to stderr.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >&2
}


# Set `key = "value"` in a libvirt config file: keep a line already set that way,
# replace an active line set otherwise, else append. Everything else in the file is kept.
set_conf() {
    local file=$1 key=$2 value=$3
    touch "$file"
    if grep -Eq "^[[:space:]]*${key}[[:space:]]*=[[:space:]]*\"${value}\"[[:space:]]*$" "$file"; then
        return 0
    fi
    if grep -Eq "^[[:space:]]*${key}[[:space:]]*=" "$file"; then
        sed -i -E "s|^[[:space:]]*${key}[[:space:]]*=.*$|${key} = \"${value}\"|" "$file"
    else
        echo "${key} = \"${value}\"" >>"$file"
    fi
    log "set ${key} = \"${value}\" in $file"
}

# Debian builds the QEMU driver with user and group libvirt-qemu, and the driver
# looks both up at startup *before* reading qemu.conf: without them it fails with
# "Failed to parse user 'libvirt-qemu'" whatever qemu.conf says. Only the package
# libvirt-daemon-system creates them, and it wants an init system, so do it here.
ensure_qemu_user() {
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    if ! getent passwd libvirt-qemu >/dev/null; then
        log "creating system user libvirt-qemu"
        useradd --system --gid libvirt-qemu --no-create-home --home-dir /var/lib/libvirt \
            --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
    fi
}

# Then run QEMU as root and unconfined: test disks live in pytest's temp dirs,
# which user libvirt-qemu could not read, and there is no AppArmor here.
# qemu.conf belongs to libvirt-daemon-system too, so it is usually absent.
configure_qemu_driver() {
    mkdir -p "$(dirname "$QEMU_CONF")" /var/log/libvirt /run/libvirt
    set_conf "$QEMU_CONF" user root
    set_conf "$QEMU_CONF" group root
    set_conf "$QEMU_CONF" security_driver none
}

# Debian's libvirtd checks a non-root client of its read-only socket with polkit,
# over D-Bus, which machines without systemd lack: it refuses the client with "Unable
# to get system bus connection". Where polkit runs, its default policy admits every
# local user there; without it, admit them all the same. The packaged exporter runs
# as its own user (tests/integration/test_deb.py). libvirtd.conf, like qemu.conf,
# belongs to libvirt-daemon-system and is usually absent.
configure_readonly_auth() {
    set_conf "$LIBVIRTD_CONF" auth_unix_ro none
}

keep_policy_deb() {
    if compgen -G "$POLICY_DEB_DIR/libvirt-daemon-system_*.deb" >/dev/null; then
        return 0
    fi
    log "downloading libvirt-daemon-system's .deb into $POLICY_DEB_DIR (not installing it)"
    mkdir -p "$POLICY_DEB_DIR"
    chown _apt "$POLICY_DEB_DIR" 2>/dev/null || true  # apt downloads as _apt where it may
    (cd "$POLICY_DEB_DIR" && apt-get -o DPkg::Lock::Timeout=600 download -qq libvirt-daemon-system >&2)
}

start_daemon() {
    local name=$1
    if pidof "$name" >/dev/null; then
        return 0
    fi
    log "starting $name"
    # -d daemonizes: the child detaches from our stdout/stderr, so callers that
    # capture this script's output (make, CI) are not held open by it.
    without_inherited_fds "$name" -d
}

# Run a command with no file descriptor of ours but stdin, stdout and stderr. A
# daemon that inherits the descriptor of a caller's `flock /tmp/system-libvirtd.lock`
# holds that lock for as long as it runs, and every later caller waits for good.
without_inherited_fds() {
    (
        local fd
        for fd in /proc/self/fd/*; do
            fd=${fd##*/}
            if ((fd > 2)); then
                eval "exec ${fd}>&-" 2>/dev/null || true
            fi
        done
        exec "$@"
    )
}

# `libvirtd -d` exits 0 before its drivers initialise, so a driver failure only
# shows as the daemon vanishing. One that was still shutting down when we looked
# (pidof found it) vanishes too: start it again, twice at most, then show its log.
fail_with_log() {
    log "$1"
    log "last errors in /var/log/libvirt/libvirtd.log:"
    grep -E ' error : ' /var/log/libvirt/libvirtd.log 2>/dev/null | tail -n 5 >&2 || true
    exit 1
}

wait_until_libvirtd_answers() {
    local deadline=$((SECONDS + WAIT_SECONDS)) starts=1
    until libvirtd_answers; do
        if ! pidof libvirtd >/dev/null; then
            ((starts < 3)) || fail_with_log "libvirtd exited during startup"
            starts=$((starts + 1))
            start_daemon libvirtd
        fi
        ((SECONDS < deadline)) || fail_with_log "libvirtd did not answer at $URI within ${WAIT_SECONDS}s"
        sleep 0.2
    done
}

main() {
    if ((EUID != 0)); then
        log "must run as root"
        exit 1
    fi
    if libvirtd_answers; then
        log "libvirtd already answers at $URI; leaving it alone"
        install_missing "${TEST_PACKAGES[@]}"
        keep_policy_deb
        exit 0
    fi
    install_missing "${LIBVIRT_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    keep_policy_deb
    ensure_qemu_user
    configure_qemu_driver
    configure_readonly_auth
    start_daemon virtlogd
    start_daemon libvirtd
    wait_until_libvirtd_answers
    log "libvirtd answers at $URI"
}

main "$@"
