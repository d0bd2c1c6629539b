#!/usr/bin/env bash
# Build the container image with podman and check it, the way that works on machines with no image
# registry and no Docker engine (our build machines). `make image` runs it; it takes minutes, so it
# is not part of `make test`. Run as root. Where a registry is reachable,
# `docker build .` or `podman build .` needs none of this.
#
#   IMAGE       the tag to build (default localhost/libvirt-exporter:VERSION, the version in
#               pyproject.toml, which packaging/kubernetes runs)
#   BASE_IMAGE  the base of both stages (default debian:bookworm-slim); when podman has no image of
#               that name, one is made with debootstrap from the Debian mirror apt uses
#
# Then the image is checked: user 65534, port 9177, no compiler or libvirt headers, and its entry
# point, run as uid 65534 in a chroot of the exported filesystem (`podman run` fails on our kernels)
# with the host's /run/libvirt mounted read-only, must serve libvirt_up 1 from the system libvirtd.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml")
readonly VERSION
readonly IMAGE=${IMAGE:-localhost/libvirt-exporter:$VERSION}
readonly BASE_IMAGE=${BASE_IMAGE:-debian:bookworm-slim}
readonly SUITE=bookworm
readonly UID_GID=65534:65534
readonly PORT=9177
# Packages that must not be in the runtime stage: they belong to the builder.
readonly BUILD_ONLY_PACKAGES=(gcc cpp libvirt-dev python3-dev pkg-config)
# The integration tests restart and kill the system libvirtd; hold their lock while scraping it.
readonly LIBVIRTD_LOCK=/tmp/system-libvirtd.lock
readonly SCRAPE_TIMEOUT_SECONDS=60

# What the EXIT trap undoes: mounts (innermost last), scratch directories, a container, a process.
MOUNTS=()
SCRATCH=()
CONTAINER=""
EXPORTER_PID=""
# The image's ENTRYPOINT + CMD and its environment, and the command prefix that runs a command in
# the exported image as a container would: as the image's user, in its filesystem and environment.
IMAGE_COMMAND=()
IMAGE_ENV=()
IN_IMAGE=()

log() { echo "build-image: $*" >&2; }
fail() {
    log "FAIL: $*"
    exit 1
}

cleanup() {
    local i dir
    if [[ -n "$EXPORTER_PID" ]]; then
        kill "$EXPORTER_PID" 2>/dev/null || true
        wait "$EXPORTER_PID" 2>/dev/null || true
    fi
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTS[i]}" || log "could not unmount ${MOUNTS[i]}"
    done
    if [[ -n "$CONTAINER" ]]; then
        podman rm -f "$CONTAINER" >/dev/null || true
    fi
    for dir in "${SCRATCH[@]}"; do
        # --one-file-system: never descend into a mount that failed to come off (/run/libvirt, /proc).
        rm -rf --one-file-system "$dir"
    done
}
trap cleanup EXIT

ensure_tools() {
    command -v podman >/dev/null && command -v debootstrap >/dev/null && command -v curl >/dev/null && return
    log "installing podman and debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
        podman debootstrap fuse-overlayfs uidmap slirp4netns curl
}

# The first active archive URI of apt's sources that ends in /NAME, e.g. NAME=debian.
apt_mirror() {
    local name=$1 default=$2 uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -E '^[[:space:]]*(deb|URIs:)[[:space:]]' |
        grep -oE "https?://[^[:space:]]+/${name}/?([[:space:]]|$)" | head -n1 | tr -d '[:space:]' || true)
    echo "${uri:-$default}"
}

# A base image like Debian's official slim one: minbase, with updates and security sources, and
# without documentation (the same dpkg excludes as the official image).
make_base_image() {
    local rootfs mirror security
    mirror=$(apt_mirror debian http://deb.debian.org/debian)
    security=$(apt_mirror debian-security http://deb.debian.org/debian-security)
    rootfs=$(mktemp -d /var/tmp/debian-rootfs.XXXXXX)
    SCRATCH+=("$rootfs" "$rootfs.log")
    log "no image $BASE_IMAGE: making one with debootstrap $SUITE from $mirror"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 ||
        { tail -n 20 "$rootfs.log" >&2; fail "debootstrap failed"; }
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    find "$rootfs/usr/share/doc" -type f -not -name copyright -delete
    rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/cache/apt/archives/*.deb
    rm -rf "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | podman import - "$BASE_IMAGE" >/dev/null
}

# --isolation=chroot: the default runtime fails here ("cgroups in hybrid mode not supported").
# The host's own extra CAs go into the builder's trust store when it installs ca-certificates,
# so that pip works behind a TLS-intercepting proxy; they do not reach the runtime stage.
build_image() {
    local args=(--isolation=chroot --network=host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE")
    local cas=/usr/local/share/ca-certificates
    if compgen -G "$cas/*.crt" >/dev/null; then
        args+=(-v "$cas:$cas:ro")
    fi
    log "podman build ${args[*]} $REPO"
    podman build "${args[@]}" "$REPO"
}

check_config() {
    local user ports
    user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
    ports=$(podman image inspect --format '{{range $p, $_ := .Config.ExposedPorts}}{{$p}} {{end}}' "$IMAGE")
    [[ "$user" == "$UID_GID" ]] || fail "image user is '$user', expected $UID_GID"
    ports=${ports% }
    [[ " $ports " == *" $PORT/tcp "* ]] || fail "image exposes '$ports', expected $PORT/tcp"
    log "ok: user $user, exposes $ports, size $(podman image inspect --format '{{.Size}}' "$IMAGE") bytes"
}

# The image's filesystem as a directory, for the checks below.
export_rootfs() {
    local root=$1
    CONTAINER=$(podman create "$IMAGE")
    podman export "$CONTAINER" | tar -x -C "$root"
    podman rm "$CONTAINER" >/dev/null
    CONTAINER=""
}

check_no_build_tools() {
    local root=$1 pkg
    for pkg in "${BUILD_ONLY_PACKAGES[@]}"; do
        if dpkg-query --admindir="$root/var/lib/dpkg" -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -q 'ok installed'; then
            fail "the runtime stage has the build-only package $pkg"
        fi
    done
    [[ ! -e "$root/usr/bin/gcc" && ! -e "$root/usr/include/libvirt" ]] ||
        fail "the runtime stage has gcc or libvirt's headers"
    log "ok: none of ${BUILD_ONLY_PACKAGES[*]} installed, no gcc, no /usr/include/libvirt"
}

# The image's entry point and CMD, and its environment, one element a line from podman.
read_image_command() {
    local root=$1
    mapfile -t IMAGE_COMMAND < <(podman image inspect \
        --format '{{range .Config.Entrypoint}}{{println .}}{{end}}{{range .Config.Cmd}}{{println .}}{{end}}' \
        "$IMAGE" | sed '/^$/d')
    mapfile -t IMAGE_ENV < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' \
        "$IMAGE" | sed '/^$/d')
    IN_IMAGE=(chroot --userspec="$UID_GID" --groups="${UID_GID#*:}" "$root" env -i "${IMAGE_ENV[@]}")
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# libvirtd looks each client's uid and gid up in the host's user and group databases, and refuses
# a client that has no record there ("Failed to find user record for uid"), whatever the
# container's /etc/passwd says.
check_host_knows_uid() {
    local uid=${UID_GID%%:*} gid=${UID_GID#*:}
    if ! getent passwd "$uid" >/dev/null || ! getent group "$gid" >/dev/null; then
        fail "this host has no user $uid or no group $gid, so libvirtd would refuse the image's" \
            "exporter: add both (groupadd --system --gid $gid NAME; useradd --system --uid $uid" \
            "--gid $gid --no-create-home --shell /usr/sbin/nologin NAME) or run the image as a uid" \
            "and gid the host has"
    fi
}

# Start the image's command (with its CMD, on a free loopback port) against the system libvirtd
# and wait until a scrape shows libvirt_up 1 and the exporter's own series.
check_scrape() {
    local root=$1 port metrics="$1.metrics" lock_fd deadline
    check_host_knows_uid
    exec {lock_fd}>"$LIBVIRTD_LOCK"
    log "waiting for $LIBVIRTD_LOCK"
    flock "$lock_fd"
    # No child gets the lock's descriptor: a libvirtd started here would hold the lock for good.
    bash "$REPO/scripts/ensure-libvirtd.sh" {lock_fd}>&-
    mkdir -p "$root/run/libvirt" "$root/proc"
    mount --bind -o ro /run/libvirt "$root/run/libvirt"
    MOUNTS+=("$root/run/libvirt")
    [[ ",$(findmnt -no OPTIONS "$root/run/libvirt")," == *,ro,* ]] || fail "/run/libvirt is not read-only"
    mount -t proc proc "$root/proc"
    MOUNTS+=("$root/proc")
    port=$(free_port)
    "${IN_IMAGE[@]}" "${IMAGE_COMMAND[@]}" "--web.listen-address=127.0.0.1:$port" 2>"$root.log" {lock_fd}>&- &
    EXPORTER_PID=$!
    deadline=$((SECONDS + SCRAPE_TIMEOUT_SECONDS))
    until curl -fsS --max-time 5 "http://127.0.0.1:$port/metrics" -o "$metrics" 2>/dev/null &&
        grep -Eq '^libvirt_up 1(\.0)?$' "$metrics"; do
        if ! kill -0 "$EXPORTER_PID" 2>/dev/null || ((SECONDS >= deadline)); then
            tail -n 20 "$root.log" >&2
            fail "no libvirt_up 1 from the image's exporter within ${SCRAPE_TIMEOUT_SECONDS}s"
        fi
        sleep 0.5
    done
    grep -q '^libvirt_exporter_build_info{' "$metrics" || fail "no libvirt_exporter_build_info in the scrape"
    log "ok: the entry point as uid ${UID_GID%%:*} with /run/libvirt read-only serves:"
    grep -E '^(libvirt_up|libvirt_exporter_build_info|libvirt_host_info|libvirt_domains)[ {]' "$metrics" >&2
    kill "$EXPORTER_PID"
    wait "$EXPORTER_PID" || true
    EXPORTER_PID=""
    rm -f "$metrics" "$root.log"
    exec {lock_fd}>&-
}

main() {
    ((EUID == 0)) || fail "run as root (debootstrap, chroot and mounts need it)"
    ensure_tools
    podman image exists "$BASE_IMAGE" || make_base_image
    build_image
    check_config
    local root
    root=$(mktemp -d /var/tmp/libvirt-exporter-image.XXXXXX)
    chmod 755 "$root" # the image's user must reach its own filesystem
    SCRATCH+=("$root" "$root.metrics" "$root.log")
    export_rootfs "$root"
    check_no_build_tools "$root"
    read_image_command "$root"
    local version
    version=$("${IN_IMAGE[@]}" "${IMAGE_COMMAND[0]}" --version) || fail "the entry point's --version failed"
    log "ok: the entry point as uid ${UID_GID%%:*} says: $version"
    check_scrape "$root"
    log "image $IMAGE built and checked"
}

main "$@"
