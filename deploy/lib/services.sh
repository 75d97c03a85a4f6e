# shellcheck shell=bash
# The tunebus services (and the dashboard) as background processes of the project's .venv.
# Each instance gets its own health file, log, pid file and (submitters) work dir.

SERVICE_PYTHON="${TUNEBUS_PYTHON:-$REPO_ROOT/.venv/bin/python}"
SINGLE_SERVICES=(metric_ingestor dashboard)

# service_instances N_SUBMITTERS [N_TUNERS [N_DISPATCHERS]]: instance names, one per line: the
# tuner and dispatcher replicas (tuner, tuner-2 .. tuner-N: the first keeps its plain name), the
# single services, aml_submitter-1 .. -N.
service_instances() {
    local i service count
    for service in tuner dispatcher; do
        if [[ "$service" == tuner ]]; then count="${2:-1}"; else count="${3:-1}"; fi
        printf '%s\n' "$service"
        for (( i = 2; i <= count; i++ )); do printf '%s-%s\n' "$service" "$i"; done
    done
    printf '%s\n' "${SINGLE_SERVICES[@]}"
    for (( i = 1; i <= $1; i++ )); do printf 'aml_submitter-%s\n' "$i"; done
}

# started_service_instances: instances with a pid file (whatever --submitters was used).
started_service_instances() {
    local file name
    for file in "$RUN_DIR"/*.pid; do
        [[ -e "$file" ]] || continue
        name="$(basename "$file" .pid)"
        [[ "$name" == rabbitmq || "$name" == azurite || "$name" == supervisor ]] || printf '%s\n' "$name"
    done
}

health_file() { printf '%s/%s.health' "$RUN_DIR" "$1"; }

# service_broker_user MODULE: the broker account of a service (shared/broker_users.py).
service_broker_user() {
    case "$1" in
        metric_ingestor) printf 'tunebus-ingestor' ;;
        aml_submitter) printf 'tunebus-submitter' ;;
        *) printf 'tunebus-%s' "$1" ;;
    esac
}

# ensure_trial_user: the unprivileged account local trials run as (root submitters switch to it).
TRIAL_USER="${TUNEBUS_TRIAL_USER:-tunebus-trial}"
ensure_trial_user() {
    (( EUID == 0 )) || return 0   # a non-root submitter runs trials as itself
    getent passwd "$TRIAL_USER" >/dev/null && return 0
    log "creating the unprivileged user $TRIAL_USER that local trials run as"
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$TRIAL_USER" \
        || die "could not create user $TRIAL_USER (trials never run as root)"
}

# health_age INSTANCE: seconds since the instance last touched its health file (fails if none).
health_age() {
    local file mtime
    file="$(health_file "$1")"
    [[ -f "$file" ]] || return 1
    mtime="$(stat -c %Y "$file")"
    printf '%s' $(( $(now_s) - mtime ))
}

service_healthy() {
    local age
    age="$(health_age "$1")" || return 1
    (( age < HEALTH_MAX_AGE ))
}

service_start() {
    local instance="$1" module="${1%%-*}"
    is_running "$instance" && return 0
    rm -f "$(health_file "$instance")"
    mkdir -p "$STATE_DIR/work/$instance"
    log "starting $instance (python -m services.$module)"
    (
        cd "$REPO_ROOT"
        export TUNEBUS_AMQP_URL; TUNEBUS_AMQP_URL="$(amqp_url "$(service_broker_user "$module")")"
        export TUNEBUS_STORAGE_CONNECTION_STRING; TUNEBUS_STORAGE_CONNECTION_STRING="$(storage_connection_string)"
        export TUNEBUS_STORAGE_CONTAINER="$STORAGE_CONTAINER"
        export TUNEBUS_HEALTH_FILE; TUNEBUS_HEALTH_FILE="$(health_file "$instance")"
        export TUNEBUS_WORK_DIR="$STATE_DIR/work/$instance"
        export TUNEBUS_LOG_LEVEL="${TUNEBUS_LOG_LEVEL:-INFO}"
        export PYTHONUNBUFFERED=1
        if [[ "$module" == dashboard ]]; then
            export TUNEBUS_DASHBOARD_PORT="$DASHBOARD_PORT"
            export TUNEBUS_DASHBOARD_TOKEN; TUNEBUS_DASHBOARD_TOKEN="$(dashboard_token)"
        fi
        start_background "$instance" "$SERVICE_PYTHON" -m "services.$module"
    )
}

services_up() {
    local submitters="$1" tuners="${2:-1}" dispatchers="${3:-1}" instance
    local -a instances
    [[ -x "$SERVICE_PYTHON" ]] || die "$SERVICE_PYTHON not found; run 'make venv' first"
    ensure_trial_user
    mapfile -t instances < <(service_instances "$submitters" "$tuners" "$dispatchers")
    # Bytecode for the services, the CLI and the trials' nni shim: nothing else writes it when
    # PYTHONDONTWRITEBYTECODE is set or the install is editable. Up-to-date files are skipped.
    "$SERVICE_PYTHON" -m compileall -q "$REPO_ROOT/shared" "$REPO_ROOT/services" "$REPO_ROOT/tunebus" \
        "$REPO_ROOT/aml_standin" \
        >/dev/null || log "could not write bytecode under $REPO_ROOT (start-ups compile in memory)"
    for instance in "${instances[@]}"; do service_start "$instance"; done
    services_wait_healthy "${instances[@]}"
}

# services_wait_healthy INSTANCE...: bounded wait until every instance reports healthy;
# fails at once (with its log) when one exits.
services_wait_healthy() {
    local deadline=$(( $(now_s) + UP_TIMEOUT )) instance
    local -a pending
    while true; do
        pending=()
        for instance in "$@"; do
            if ! is_running "$instance"; then
                show_log_tail "$instance" 40
                die "$instance exited during start-up (log: $LOG_DIR/$instance.log)"
            fi
            service_healthy "$instance" || pending+=("$instance")
        done
        (( ${#pending[@]} == 0 )) && return 0
        if (( $(now_s) >= deadline )); then
            for instance in "${pending[@]}"; do show_log_tail "$instance" 40; done
            die "not healthy after ${UP_TIMEOUT}s: ${pending[*]} (no fresh $RUN_DIR/<name>.health)"
        fi
        sleep 0.5
    done
}

services_down() {
    local instance
    while read -r instance; do
        log "stopping $instance"
        stop_background "$instance" 15 &
    done < <(started_service_instances)
    wait
}

# dashboard_token: the dashboard's token for its actions, generated once (mode 600) and kept with
# the broker passwords.
dashboard_token() {
    local file="$CREDENTIALS_DIR/dashboard-token"
    if [[ ! -s "$file" ]]; then
        mkdir -p "$CREDENTIALS_DIR" && chmod 700 "$CREDENTIALS_DIR"
        (umask 077; "$SERVICE_PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))' >"$file")
    fi
    printf '%s' "$(<"$file")"
}

# dashboard_url: the URL that opens the dashboard with its token (the token sets a cookie and
# leaves the address bar).
dashboard_url() { printf 'http://127.0.0.1:%s/?token=%s\n' "$DASHBOARD_PORT" "$(dashboard_token)"; }
