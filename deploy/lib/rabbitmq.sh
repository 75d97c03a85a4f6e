# shellcheck shell=bash
# A standalone RabbitMQ node private to the state dir: its own node name, data, logs,
# config, plugins and Erlang cookie, listening on 127.0.0.1 only. It never touches
# /var/lib/rabbitmq or a system rabbitmq-server service, and runs as the calling user (root too).

RABBIT_DIR="$STATE_DIR/rabbitmq"
RABBIT_NODE="tunebus-${AMQP_PORT}@localhost"
# Erlang distribution (used by rabbitmqctl) listens on AMQP port + 20000, RabbitMQ's own convention.
RABBIT_DIST_PORT=$(( AMQP_PORT + 20000 ))

# rabbit_bin TOOL: path of a RabbitMQ script. On Debian, /usr/sbin/rabbitmq* are wrappers that
# `su rabbitmq` and cd to /var/lib/rabbitmq; the real scripts in /usr/lib/rabbitmq/bin honour
# our environment, so prefer those.
rabbit_bin() {
    local tool="$1" found
    if [[ -x "/usr/lib/rabbitmq/bin/$tool" ]]; then
        printf '%s' "/usr/lib/rabbitmq/bin/$tool"
    elif found="$(command -v "$tool")"; then
        printf '%s' "$found"
    else
        return 1
    fi
}

rabbit_install() {
    rabbit_bin rabbitmq-server >/dev/null && return 0
    apt_install rabbitmq-server
    rabbit_bin rabbitmq-server >/dev/null || die "rabbitmq-server still missing after installing it"
}

# rabbit_env: exported settings for both the server and the CLI tools (cookie via HOME).
rabbit_env() {
    export HOME="$RABBIT_DIR/home"
    export RABBITMQ_NODENAME="$RABBIT_NODE"
    export RABBITMQ_USE_LONGNAME=false
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$AMQP_PORT"
    export RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
    export RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
    export RABBITMQ_PID_FILE="$RABBIT_DIR/beam.pid"
    export RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$REPO_ROOT/deploy/rabbitmq/rabbitmq.conf"
    export RABBITMQ_CONFIG_FILES="$RABBIT_DIR/conf.d"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
    export ERL_CRASH_DUMP="$RABBIT_DIR/log/erl_crash.dump"
    # Erlang distribution and epmd (if this node starts it) on loopback only, like AMQP.
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

rabbit_prepare() {
    mkdir -p "$RABBIT_DIR/home" "$RABBIT_DIR/mnesia" "$RABBIT_DIR/log" "$RABBIT_DIR/conf.d"
    : >"$RABBIT_DIR/rabbitmq-env.conf"   # keeps /etc/rabbitmq/rabbitmq-env.conf out
    cp "$REPO_ROOT/deploy/rabbitmq/enabled_plugins" "$RABBIT_DIR/enabled_plugins"
    local cookie="$RABBIT_DIR/home/.erlang.cookie"
    if [[ ! -s "$cookie" ]]; then
        (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$cookie")
    fi
    chmod 400 "$cookie"
}

# amqp_ready: the broker answers an AMQP 0-9-1 protocol header with a frame (connection.start),
# i.e. it has booted far enough to take connections, not only opened the port.
amqp_ready() {
    port_open "$AMQP_PORT" || return 1
    local first
    first="$(
        exec 3<>"/dev/tcp/127.0.0.1/$AMQP_PORT" || exit 1
        printf 'AMQP\x00\x00\x09\x01' >&3
        timeout 2 head -c 1 <&3 | od -An -tu1 | tr -d ' '
    )" 2>/dev/null || return 1
    [[ "$first" == 1 ]]
}

# rabbit_users: one user per service, the CLI's and the operators' (shared/broker_users.py),
# with generated passwords under $CREDENTIALS_DIR; guest deleted. Idempotent, two rabbitmqctl calls.
rabbit_users() {
    local python="${TUNEBUS_PYTHON:-$REPO_ROOT/.venv/bin/python}" defs
    [[ -x "$python" ]] || python="$(command -v python3)" || die "no python for shared/broker_users.py"
    defs="$RABBIT_DIR/users.json"
    (umask 077; cd "$REPO_ROOT" && "$python" -m shared.broker_users "$CREDENTIALS_DIR" >"$defs") \
        || die "could not generate the broker's users"
    rabbit_ctl import_definitions "$defs" >/dev/null || die "could not import the broker's users"
    rm -f "$defs"
    rabbit_ctl delete_user guest >/dev/null 2>&1 || true   # gone already
}

rabbit_up() {
    if is_running rabbitmq; then
        wait_for "$UP_TIMEOUT" rabbitmq amqp_ready
        rabbit_users
        return 0
    fi
    if rabbit_node_pid >/dev/null; then
        # Its wrapper is gone but the node runs on: stop it, so the node we start owns the port.
        log "RabbitMQ node $RABBIT_NODE runs without its wrapper; restarting it"
        rabbit_down
    fi
    rabbit_install
    require_free_port "$AMQP_PORT" "AMQP"
    require_free_port "$RABBIT_DIST_PORT" "Erlang distribution for RabbitMQ"
    rabbit_prepare
    log "starting RabbitMQ node $RABBIT_NODE on 127.0.0.1:$AMQP_PORT"
    (rabbit_env; cd "$RABBIT_DIR"; start_background rabbitmq "$(rabbit_bin rabbitmq-server)")
    wait_for "$UP_TIMEOUT" rabbitmq amqp_ready
    rabbit_users
}

# rabbit_ctl ARGS...: rabbitmqctl against this node (the `ctl` subcommand, tests' vhosts).
rabbit_ctl() {
    local ctl
    ctl="$(rabbit_bin rabbitmqctl)" || die "rabbitmqctl not found"
    (rabbit_env; "$ctl" -n "$RABBIT_NODE" "$@")
}

# rabbit_node_pid: the pid of this stack's Erlang VM (beam.smp) when it runs. It can outlive the
# process deploy/local started (a killed wrapper script), so it is tracked on its own.
rabbit_node_pid() {
    local file="$RABBIT_DIR/beam.pid" pid
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    pid_alive "$pid" && grep -q beam "/proc/$pid/cmdline" 2>/dev/null || return 1
    printf '%s' "$pid"
}

rabbit_down() {
    local node_pid deadline
    node_pid="$(rabbit_node_pid)" || node_pid=""
    if ! is_running rabbitmq && [[ -z "$node_pid" ]]; then
        rm -f "$(pid_file rabbitmq)" "$RABBIT_DIR/beam.pid"
        return 0
    fi
    log "stopping RabbitMQ node $RABBIT_NODE"
    (rabbit_env; timeout 30 "$(rabbit_bin rabbitmqctl)" -n "$RABBIT_NODE" stop >/dev/null 2>&1) \
        || log "rabbitmqctl stop failed; signalling the node"
    stop_background rabbitmq 20
    if [[ -n "$node_pid" ]] && pid_alive "$node_pid"; then
        kill -TERM "$node_pid" 2>/dev/null || true
        deadline=$(( $(now_s) + 15 ))
        while pid_alive "$node_pid" && (( $(now_s) < deadline )); do sleep 0.2; done
        pid_alive "$node_pid" && { log "RabbitMQ node $node_pid did not stop; killing it"; kill -KILL "$node_pid" 2>/dev/null || true; }
    fi
    rm -f "$RABBIT_DIR/beam.pid"
}
