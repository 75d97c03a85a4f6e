# shellcheck shell=bash
# Azurite's blob service on 127.0.0.1, data under the state dir. Installed from npm into a
# project-local prefix (TUNEBUS_AZURITE_DIR, default <state dir>/azurite) when not on PATH.

AZURITE_VERSION="${TUNEBUS_AZURITE_VERSION:-3.35.0}"   # newer releases need Node >= 22
AZURITE_DIR="${TUNEBUS_AZURITE_DIR:-$STATE_DIR/azurite}"
AZURITE_DATA="$STATE_DIR/azurite-data"

azurite_bin() {
    local found
    if [[ -x "$AZURITE_DIR/node_modules/.bin/azurite-blob" ]]; then
        printf '%s' "$AZURITE_DIR/node_modules/.bin/azurite-blob"
    elif found="$(command -v azurite-blob)"; then
        printf '%s' "$found"
    else
        return 1
    fi
}

azurite_install() {
    azurite_bin >/dev/null && return 0
    command -v npm >/dev/null || apt_install nodejs npm
    log "installing azurite@$AZURITE_VERSION into $AZURITE_DIR"
    mkdir -p "$AZURITE_DIR"
    npm install --prefix "$AZURITE_DIR" --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION" >&2 || die "npm install azurite@$AZURITE_VERSION failed"
}

azurite_up() {
    if is_running azurite; then
        wait_for "$UP_TIMEOUT" azurite port_open "$BLOB_PORT"
        return 0
    fi
    azurite_install
    require_free_port "$BLOB_PORT" "Azurite blob"
    mkdir -p "$AZURITE_DATA"
    log "starting Azurite blob service on 127.0.0.1:$BLOB_PORT"
    # TUNEBUS_AZURITE_IN_MEMORY=1: nothing on disk (lost when it stops). For benchmarks at scale:
    # on disk, Azurite rewrites its whole metadata database (every blob's entry) every 5 s while
    # anything changes, a cost that grows with the container and that Azure Blob does not have.
    local storage=(--location "$AZURITE_DATA")
    [[ "${TUNEBUS_AZURITE_IN_MEMORY:-}" == 1 ]] && storage=(--inMemoryPersistence)
    start_background azurite "$(azurite_bin)" \
        --blobHost 127.0.0.1 --blobPort "$BLOB_PORT" "${storage[@]}" \
        --skipApiVersionCheck --disableTelemetry
    wait_for "$UP_TIMEOUT" azurite port_open "$BLOB_PORT"
}

azurite_down() {
    is_running azurite && log "stopping Azurite"
    stop_background azurite 10
}
