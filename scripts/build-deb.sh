#!/usr/bin/env bash
# Build libvirt-exporter_<version>_<arch>.deb from this working tree into OUT_DIR
# (default: dist/). `make deb` runs it; tests/integration/test_deb.py too.
#
# The package holds a venv made with Debian's own python3 under /usr/lib/libvirt-exporter,
# with the exporter and its Python dependencies from PyPI (libvirt-python compiled against
# Debian's libvirt-dev), a /usr/bin link to its entry point, the systemd unit, the
# /etc/default file and maintainer scripts that create the system user. Nothing is
# written into the tree but OUT_DIR: the venv is staged in a temporary directory.
# Run as root (it installs missing build packages).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT_DIR=$(realpath -m "${1:-$REPO/dist}")
readonly REPO OUT_DIR
readonly PACKAGE=libvirt-exporter
readonly PREFIX=/usr/lib/$PACKAGE
# Debian's interpreter, never one on PATH: the repository's .venv may use a pyenv build.
readonly SYSTEM_PYTHON=/usr/bin/python3
readonly BUILD_PACKAGES=(python3-venv python3-dev libvirt-dev gcc pkg-config)

log() { echo "build-deb: $*" >&2; }

install_missing() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}"
}

project_version() {
    "$SYSTEM_PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
        "$REPO/pyproject.toml"
}

# The venv, built where it will not be installed: its scripts name $stage in their
# shebangs and pyvenv.cfg names it in `command`; both are pointed at $PREFIX after.
# pip builds the project from a copy in $src, so that no build output lands in the tree.
build_venv() {
    local stage=$1 src=$2 python=$3 venv=$1$PREFIX
    mkdir -p "$src"
    cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/libvirt_exporter" "$src/"
    find "$src" -name __pycache__ -type d -prune -exec rm -rf {} +
    "$python" -m venv "$venv"
    # No cache: a wheel that pip built before with another python (a pyenv one) would
    # carry that python's library path.
    "$venv/bin/pip" install --quiet --no-compile --no-cache-dir "$src"
    "$venv/bin/pip" uninstall --quiet --yes pip setuptools
    rm -rf "$venv"/bin/[aA]ctivate* "$venv"/lib/python3*/site-packages/libvirt_exporter-*.dist-info/direct_url.json
    sed -i "/^command = /d" "$venv/pyvenv.cfg"
    grep -rlF "$stage" "$venv/bin" | xargs --no-run-if-empty sed -i "s|$stage$PREFIX|$PREFIX|g"
    if grep -rlF "$stage" "$venv"; then
        log "the files above still name the staging directory $stage"
        exit 1
    fi
    # Byte-code now, naming the installed paths: the service cannot write it at run time.
    "$python" -m compileall -q -s "$stage" -p / "$venv/lib" >/dev/null
}

# The copyright file: the exporter's licence, then each bundled distribution's, as its
# metadata states it.
write_copyright() {
    local stage=$1 copyright=$1/usr/share/doc/$PACKAGE/copyright
    install -D -m 0644 "$REPO/packaging/debian/copyright.in" "$copyright"
    "$stage$PREFIX/bin/python" - >>"$copyright" <<'PYTHON'
from importlib.metadata import distributions

for dist in sorted(distributions(), key=lambda d: d.metadata["Name"].lower()):
    name, licence = dist.metadata["Name"], dist.metadata["License-Expression"] or dist.metadata["License"]
    if name != "libvirt-exporter":
        print(f" {name} {dist.version}: {licence}")
PYTHON
}

# Unit, defaults, docs and the /usr/bin link.
install_files() {
    local stage=$1
    install -D -m 0644 "$REPO/packaging/systemd/$PACKAGE.service" "$stage/lib/systemd/system/$PACKAGE.service"
    install -D -m 0644 "$REPO/packaging/systemd/$PACKAGE.default" "$stage/etc/default/$PACKAGE"
    install -D -m 0644 "$REPO/README.md" "$stage/usr/share/doc/$PACKAGE/README.md"
    mkdir -p "$stage/usr/bin"
    ln -s "../lib/$PACKAGE/bin/$PACKAGE" "$stage/usr/bin/$PACKAGE"
}

# DEBIAN/: control from the template, maintainer scripts, conffiles, md5sums.
write_control() {
    local stage=$1 version=$2 arch=$3 python_package=$4 libvirt_version
    libvirt_version=$(pkg-config --modversion libvirt)
    mkdir -p "$stage/DEBIAN"
    sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@PYTHON@|$python_package|" \
        -e "s|@LIBVIRT_VERSION@|$libvirt_version|" \
        -e "s|@INSTALLED_SIZE@|$(du -sk --exclude=DEBIAN "$stage" | cut -f1)|" \
        "$REPO/packaging/debian/control.in" >"$stage/DEBIAN/control"
    install -m 0755 "$REPO/packaging/debian/postinst" "$REPO/packaging/debian/prerm" \
        "$REPO/packaging/debian/postrm" "$stage/DEBIAN/"
    install -m 0644 "$REPO/packaging/debian/conffiles" "$stage/DEBIAN/"
    (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z |
        xargs -0 md5sum >DEBIAN/md5sums)
}

main() {
    if ((EUID != 0)); then
        log "must run as root"
        exit 1
    fi
    install_missing "${BUILD_PACKAGES[@]}"
    local version arch python_version stage deb
    version=$(project_version)
    arch=$(dpkg --print-architecture)
    python_version=$("$SYSTEM_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    WORK=$(mktemp -d)  # global: the EXIT trap runs after main has returned
    trap 'rm -rf "$WORK"' EXIT
    stage=$WORK/root
    mkdir -m 0755 "$stage"
    log "building the venv with /usr/bin/python$python_version"
    build_venv "$stage" "$WORK/src" "/usr/bin/python$python_version"
    install_files "$stage"
    write_copyright "$stage"
    write_control "$stage" "$version" "$arch" "python$python_version"
    mkdir -p "$OUT_DIR"
    deb="$OUT_DIR/${PACKAGE}_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    log "built $deb"
}

main "$@"
