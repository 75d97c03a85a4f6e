# shellcheck shell=bash
# Paths, settings and process helpers shared by deploy/local's components.
# Sourced by deploy/local; expects REPO_ROOT to be set.

STATE_DIR="${TUNEBUS_LOCAL_DIR:-$REPO_ROOT/.local}"
RUN_DIR="$STATE_DIR/run"
LOG_DIR="$STATE_DIR/logs"
AMQP_PORT="${TUNEBUS_AMQP_PORT:-5672}"
BLOB_PORT="${TUNEBUS_BLOB_PORT:-10000}"
STORAGE_CONTAINER="${TUNEBUS_STORAGE_CONTAINER:-tunebus}"
UP_TIMEOUT="${TUNEBUS_UP_TIMEOUT:-60}"
DASHBOARD_PORT="${TUNEBUS_DASHBOARD_PORT:-8080}"
# A health file older than this means the service stopped consuming (the services' contract).
HEALTH_MAX_AGE=15

# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT=devstoreaccount1
AZURITE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

# Generated broker passwords (one file per user, mode 600), never in the repository.
CREDENTIALS_DIR="$STATE_DIR/credentials"

# amqp_url [USER]: the broker URL of USER (default: the CLI's), with its generated password.
amqp_url() {
    local user="${1:-tunebus-cli}" file
    file="$CREDENTIALS_DIR/amqp-$user"
    [[ -r "$file" ]] || die "no broker password for $user in $CREDENTIALS_DIR (run 'deploy/local up' first)"
    printf 'amqp://%s:%s@127.0.0.1:%s/' "$user" "$(<"$file")" "$AMQP_PORT"
}

# amqp_url_masked: where the broker is, without any password (for log lines).
amqp_url_masked() { printf 'amqp://127.0.0.1:%s/' "$AMQP_PORT"; }

storage_connection_string() {
    printf 'DefaultEndpointsProtocol=http;AccountName=%s;AccountKey=%s;BlobEndpoint=http://127.0.0.1:%s/%s;' \
        "$AZURITE_ACCOUNT" "$AZURITE_KEY" "$BLOB_PORT" "$AZURITE_ACCOUNT"
}

log() { printf '[deploy/local] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# now_s: seconds since the epoch, without forking `date` in polling loops.
now_s() { printf '%(%s)T' -1; }

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# pid_alive PID: the process exists and is not a zombie (a killed process that nobody has
# reaped yet still answers `kill -0`).
pid_alive() {
    local pid="$1" stat
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"   # the fields after "(comm) ": the first is the state letter
    [[ "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}

# is_running NAME: the process recorded in NAME's pid file is alive.
is_running() {
    local file pid
    file="$(pid_file "$1")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    pid_alive "$pid"
}

# start_background NAME CMD...: runs CMD detached in its own session (so `down` can signal
# the whole process group), stdout+stderr appended to logs/NAME.log, pid in run/NAME.pid.
# The caller sets the environment. stdin and every inherited pipe are closed, so a caller
# that captures our output (pytest's subprocess.run) is not kept waiting by the child.
start_background() {
    local name="$1"; shift
    mkdir -p "$RUN_DIR" "$LOG_DIR"
    printf '\n==== %s start %(%F %T)T ====\n' "$name" -1 >>"$LOG_DIR/$name.log"
    setsid "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
    printf '%s\n' "$!" >"$(pid_file "$name")"
}

# stop_background NAME [GRACE_S]: SIGTERM to NAME's process group, SIGKILL after GRACE_S.
stop_background() {
    local name="$1" grace="${2:-10}" file pid deadline
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 0
    pid="$(<"$file")"
    if pid_alive "$pid"; then
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        deadline=$(( $(now_s) + grace ))
        while pid_alive "$pid" && (( $(now_s) < deadline )); do sleep 0.2; done
        if pid_alive "$pid"; then
            log "$name did not stop within ${grace}s; killing"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

# port_open PORT: something accepts TCP connections on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for TIMEOUT_S NAME CHECK...: polls CHECK until it succeeds; fails early if NAME's
# process died, and prints the end of its log either way it fails.
wait_for() {
    local timeout="$1" name="$2"; shift 2
    local deadline=$(( $(now_s) + timeout ))
    until "$@"; do
        if ! is_running "$name"; then
            show_log_tail "$name"
            die "$name exited during start-up (log: $LOG_DIR/$name.log)"
        fi
        if (( $(now_s) >= deadline )); then
            show_log_tail "$name"
            die "$name not ready after ${timeout}s (log: $LOG_DIR/$name.log)"
        fi
        sleep 0.2
    done
}

# show_log_tail NAME [LINES]: the end of NAME's log since its latest start, to stderr.
show_log_tail() {
    local file="$LOG_DIR/$1.log"
    [[ -f "$file" ]] || return 0
    log "last lines of $file:"
    awk -v marker="==== $1 start" 'index($0, marker) == 1 { buf = "" } { buf = buf $0 "\n" }
        END { printf "%s", buf }' "$file" | tail -n "${2:-30}" | sed 's/^/    /' >&2
}

# require_free_port PORT WHAT: refuse to start when someone else (a system rabbitmq-server,
# another stack) already listens there.
require_free_port() {
    if port_open "$1"; then
        die "port $1 ($2) is already in use by another process; pick another with the matching TUNEBUS_*_PORT variable"
    fi
}

# as_root CMD...: runs CMD as root (directly, or through sudo when available).
as_root() {
    if (( EUID == 0 )); then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root to run: $*"
    fi
}

# apt_install PACKAGE...: installs Debian packages without starting their system services
# (a policy-rc.d that denies starts, only while we install and only if none exists).
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* yourself"
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod 755 "$policy"
        own_policy=1
    fi
    local rc=0
    log "installing Debian packages: $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        || { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "$@"; } || rc=$?
    (( own_policy )) && as_root rm -f "$policy"
    (( rc == 0 )) || die "apt-get install $* failed"
}
