#!/usr/bin/env bash
# Local STAND-INS for the base images that deploy/Dockerfile and docker-compose.yml name, for
# machines where no image registry answers (CI and the developer machines of this project).
# On a machine that can pull, it pulls them and builds nothing.
#
#   deploy/images/build-standins.sh            pull or build each missing image
#   deploy/images/build-standins.sh --check    only say which images are present (exit 3 if not all)
#
# For each image: present locally -> kept as it is (a stand-in stays a stand-in: `docker rmi` it
# to pull the real one); `docker pull` works -> the real image; otherwise a stand-in is built from
# Debian bookworm packages and tagged with the SAME NAME, so the project's real Dockerfile and
# compose file are what is built and run:
#   python:3.11-slim                               this machine's CPython >= 3.11.4, stdlib only
#   rabbitmq:3.13-management                       Debian's rabbitmq-server 3.10 + management
#   mcr.microsoft.com/azure-storage/azurite:3.35.0 Debian's Node.js + azurite@3.35.0 from npm
# Their base is `debootstrap --variant=minbase bookworm` imported as tunebus-standin/debian:bookworm.
# Each stand-in carries this machine's CA bundle (TUNEBUS_CA_BUNDLE, default Debian's
# /etc/ssl/certs/ca-certificates.crt), so builds FROM it reach PyPI through a TLS-inspecting
# proxy as this machine does; they are for this machine only: never push them.
#
# Environment: TUNEBUS_DEBIAN_MIRROR (default: the bookworm mirror apt uses here),
# TUNEBUS_CA_BUNDLE, TUNEBUS_STANDIN_PYTHON (a CPython 3.11.4+ to copy; default: pyenv's
# 3.11.x, else python3.11 on PATH); HTTP(S)_PROXY/NO_PROXY pass through to the builds when set.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/lib/common.sh
source "$REPO_ROOT/deploy/lib/common.sh"
log() { printf '[build-standins] %s\n' "$*" >&2; }

STANDIN_DIR="$REPO_ROOT/deploy/images/standin"
BASE_IMAGE=tunebus-standin/debian:bookworm
PYTHON_IMAGE=python:3.11-slim
RABBITMQ_IMAGE=rabbitmq:3.13-management
AZURITE_VERSION=3.35.0
AZURITE_IMAGE="mcr.microsoft.com/azure-storage/azurite:$AZURITE_VERSION"
CA_BUNDLE="${TUNEBUS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

image_present() { docker image inspect "$1" >/dev/null 2>&1; }

is_standin() {
    [[ -n "$(docker image inspect -f '{{index .Config.Labels "org.tunebus.standin"}}' "$1" 2>/dev/null)" ]]
}

# debian_mirror: the bookworm (not -security, not -updates) mirror in apt's sources here.
debian_mirror() {
    if [[ -n "${TUNEBUS_DEBIAN_MIRROR:-}" ]]; then printf '%s' "$TUNEBUS_DEBIAN_MIRROR"; return; fi
    local found
    found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { if ($(i+1) == "bookworm") { print $i; exit } } }')"
    if [[ -z "$found" ]]; then
        # deb822 .sources files: a stanza whose Suites has bookworm itself.
        found="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
            /^$/ { if (suite && uri) { print uri; exit } uri = ""; suite = 0; next }
            /^URIs:/ { uri = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
            END { if (suite && uri) print uri }' | head -n 1)"
    fi
    printf '%s' "${found:-http://deb.debian.org/debian}"
}

# standin_python_prefix: the install prefix of a CPython 3.11 >= 3.11.4 on this machine (Debian's
# 3.11.2 lacks tarfile's extraction filters), built with a shared libpython or a static one.
standin_python_prefix() {
    local candidate
    for candidate in ${TUNEBUS_STANDIN_PYTHON:-} /root/.pyenv/versions/3.11.*/bin/python3.11 \
            "$(command -v python3.11 || true)"; do
        [[ -x "$candidate" ]] || continue
        if "$candidate" -c 'import sys, tarfile; assert (3, 11, 4) <= sys.version_info[:3] < (3, 12); tarfile.data_filter' \
                2>/dev/null; then
            "$candidate" -c 'import sys; print(sys.base_prefix)'
            return 0
        fi
    done
    die "no CPython 3.11.4+ found for the python:3.11-slim stand-in; set TUNEBUS_STANDIN_PYTHON"
}

# copy_python PREFIX DEST: the interpreter, libpython, headers and standard library (no
# site-packages, no test suite) of PREFIX, laid out as under /usr/local.
copy_python() {
    local prefix="$1" dest="$2"
    mkdir -p "$dest"
    (cd "$prefix" && tar -c --exclude='lib/python3.11/site-packages' --exclude='lib/python3.11/test' \
        --exclude='lib/python3.11/idlelib' --exclude='lib/python3.11/tkinter' \
        bin/python3.11 $(ls -d lib/libpython3.11.so* lib/libpython3.so 2>/dev/null) include/python3.11 lib/python3.11) \
        | tar -C "$dest" -x
}

# proxy_build_args: --build-arg for each proxy variable set here (Docker's predefined args).
proxy_build_args() {
    local name
    for name in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
        [[ -n "${!name:-}" ]] && printf -- '--build-arg\n%s\n' "$name"
    done
    return 0
}

build_base() {
    image_present "$BASE_IMAGE" && return 0
    command -v debootstrap >/dev/null || apt_install debootstrap
    local mirror rootfs started=$SECONDS
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d /tmp/tunebus-standin-rootfs.XXXXXX)"
    log "debootstrap --variant=minbase bookworm from $mirror"
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        tail -n 20 "$rootfs.log" >&2
        rm -rf "$rootfs" "$rootfs.log"
        die "debootstrap failed (log above)"
    fi
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs" "$rootfs.log"
    log "base $BASE_IMAGE imported in $(( SECONDS - started ))s"
}

# build_standin IMAGE DOCKERFILE [BUILD-ARG...]
build_standin() {
    local image="$1" dockerfile="$2"; shift 2
    local context started=$SECONDS args=()
    build_base
    [[ -r "$CA_BUNDLE" ]] || die "CA bundle $CA_BUNDLE not readable (set TUNEBUS_CA_BUNDLE)"
    context="$(mktemp -d /tmp/tunebus-standin-context.XXXXXX)"
    cp "$CA_BUNDLE" "$context/ca-certificates.crt"
    if [[ "$dockerfile" == python.Dockerfile ]]; then
        local prefix
        prefix="$(standin_python_prefix)"
        log "the python stand-in's interpreter: $prefix ($("$prefix/bin/python3.11" -V))"
        copy_python "$prefix" "$context/cpython"
    fi
    mapfile -t args < <(proxy_build_args)
    for arg in "$@"; do args+=(--build-arg "$arg"); done
    log "building STAND-IN $image from $dockerfile"
    if ! docker build -q -f "$STANDIN_DIR/$dockerfile" -t "$image" "${args[@]}" "$context" >/dev/null; then
        rm -rf "$context"
        die "building the stand-in $image failed"
    fi
    rm -rf "$context"
    log "STAND-IN $image built in $(( SECONDS - started ))s"
}

# ensure IMAGE DOCKERFILE [BUILD-ARG...]: present, pulled, or built as a stand-in.
ensure() {
    local image="$1"
    if image_present "$image"; then
        if is_standin "$image"; then log "present: $image (a STAND-IN built earlier)"
        else log "present: $image"; fi
        return 0
    fi
    if docker pull -q "$image" >/dev/null 2>&1; then
        log "pulled: $image"
        return 0
    fi
    log "cannot pull $image: no registry answers; building a stand-in"
    build_standin "$@"
    BUILT+=("$image")
}

banner() {
    local line='!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!'
    {
        printf '%s\n' "$line"
        printf '!!! %s\n' "STAND-IN IMAGES, NOT THE OFFICIAL ONES: built here from Debian packages because" \
            "no image registry answers. Tagged with the official names so the project's" \
            "Dockerfile and docker-compose.yml run unchanged; for this machine only, never push:" "$@"
        printf '%s\n' "$line"
    } >&2
}

main() {
    command -v docker >/dev/null || die "docker CLI not found"
    docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd first)"
    local image missing=0
    if [[ "${1:-}" == --check ]]; then
        for image in "$PYTHON_IMAGE" "$RABBITMQ_IMAGE" "$AZURITE_IMAGE"; do
            if ! image_present "$image"; then log "missing: $image"; missing=1
            elif is_standin "$image"; then log "present: $image (STAND-IN)"
            else log "present: $image"; fi
        done
        return $(( missing ? 3 : 0 ))
    fi
    [[ $# -eq 0 ]] || die "unknown argument: $1 (see the header of $0)"
    BUILT=()
    ensure "$PYTHON_IMAGE" python.Dockerfile
    ensure "$RABBITMQ_IMAGE" rabbitmq.Dockerfile
    ensure "$AZURITE_IMAGE" azurite.Dockerfile "AZURITE_VERSION=$AZURITE_VERSION"
    local standins=()
    for image in "$PYTHON_IMAGE" "$RABBITMQ_IMAGE" "$AZURITE_IMAGE"; do
        is_standin "$image" && standins+=("    $image")
    done
    if (( ${#standins[@]} )); then banner "${standins[@]}"; fi
    return 0
}

main "$@"
