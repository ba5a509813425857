# shellcheck shell=bash
# Garage, one S3-compatible node on loopback, for the bench harnesses
# (remote.sh, mount.sh). Sourced, not run:
#
#   source "$ROOT/benches/garage.sh"
#   garage_find            # sets GARAGE (LODE_GARAGE, PATH, ~/.cargo/bin) or dies
#   garage_start           # an empty server: bucket $BUCKET, the bench's key
#   garage_stop            # (call it from the EXIT trap too)
#
# The caller defines die MESSAGE, wipe DIR, PY (python3), LOG (a file that
# collects the commands' output) and GDIR (the server's directory, wiped at
# each start). The server: free ports, replication_factor = 1, lmdb, block
# compression off (so that it spends as little as possible of the CPU it
# shares with the clients), set up as tests/cli/s3.rs does. Every client
# gets the key through AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_REGION=garage, AWS_ALLOW_HTTP=true, and AWS_ENDPOINT_URL (exported by
# garage_start).

KEY_ID=GK0123456789abcdef01234567
SECRET=00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
BUCKET=bench
export AWS_ACCESS_KEY_ID=$KEY_ID AWS_SECRET_ACCESS_KEY=$SECRET AWS_REGION=garage AWS_ALLOW_HTTP=true
GARAGE_PID=

garage_find() {
    GARAGE=${LODE_GARAGE:-$(command -v garage || echo "${CARGO_HOME:-$HOME/.cargo}/bin/garage")}
    [[ -x $GARAGE ]] || die "no garage binary (set LODE_GARAGE, or cargo install garage); tests/run.sh installs it"
}

garage_stop() {
    if [[ -n $GARAGE_PID ]]; then
        kill "$GARAGE_PID" 2>/dev/null || true
        wait "$GARAGE_PID" 2>/dev/null || true
        GARAGE_PID=
    fi
}

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
gcli() { "$GARAGE" -c "$GDIR/garage.toml" "$@" >>"$LOG" 2>&1 || die "garage $* failed (see $GDIR/server.log)"; }

# garage_start: stop any server, then start an empty one with bucket $BUCKET
# and the bench's key, and point AWS_ENDPOINT_URL at it.
garage_start() {
    garage_stop
    wipe "$GDIR"
    mkdir -p "$GDIR"
    local port rpc node t
    port=$(free_port)
    rpc=$(free_port)
    cat >"$GDIR/garage.toml" <<EOF
metadata_dir = "$GDIR/meta"
data_dir = "$GDIR/data"
db_engine = "lmdb"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$SECRET"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
EOF
    "$GARAGE" -c "$GDIR/garage.toml" server >"$GDIR/server.log" 2>&1 &
    GARAGE_PID=$!
    for ((t = 0; ; t++)); do
        if "$GARAGE" -c "$GDIR/garage.toml" status >/dev/null 2>&1 &&
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            break
        fi
        kill -0 "$GARAGE_PID" 2>/dev/null || { tail -n 20 "$GDIR/server.log" >&2; die "garage exited at start"; }
        ((t < 600)) || { tail -n 20 "$GDIR/server.log" >&2; die "garage did not answer in 60 s"; }
        sleep 0.1
    done
    node=$("$GARAGE" -c "$GDIR/garage.toml" node id -q 2>>"$LOG") || die "garage node id failed"
    node=${node%%@*}
    gcli layout assign -z dc1 -c 100G "$node"
    gcli layout apply --version 1
    gcli bucket create "$BUCKET"
    gcli key import "$KEY_ID" "$SECRET" -n lode --yes
    gcli bucket allow --read --write --owner "$BUCKET" --key "$KEY_ID"
    export AWS_ENDPOINT_URL=http://127.0.0.1:$port
}
