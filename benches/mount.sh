#!/usr/bin/env bash
# Reading a checkpoint through `lode mount`: rows B6 (node cache warm, local
# data) and B7 (cold, data only on the remote) of shared/BENCHMARKS.md,
# against `cat` of the plain file and boto3's parallel ranged download,
# through a local S3-compatible server (Garage, one node on loopback).
# Medians of R runs and same-run ratios, as markdown tables on stdout
# (progress goes to stderr, tool output to a log).
#
#   bash benches/mount.sh [--size-mib N] [--runs R] [--no-build] [--keep]
#
#   --size-mib N   checkpoint size (default 1024)
#   --runs R       runs per measurement; the tables show medians (default 3)
#   --no-build     use target/release/lode as it is
#   --keep         keep the work directory (printed at the end)
#
# Each timed or set-up step is killed after LODE_BENCH_STEP_LIMIT seconds
# (default 600), failing the run; if a read through a mount is the step that
# hangs, the mount process's threads are dumped with gdb to
# /tmp/lode-mount-hang.PID.txt first.
#
# Set up once: a repository with the checkpoint added by `lode add` and
# committed, its remote s3://bench/mount in .lodeconfig, `lode push`, the
# commits in a bare repository (`git push --no-verify`); the same file
# uploaded once with boto3 for the baseline. Every read below is
# `cat FILE > /dev/null`, timed as a command. Each run:
#   B6 plain  cat of the repository's working file (read once untimed
#             first: the page cache is warm).
#   B6 store  `lode mount HEAD` in that repository, an empty --cache: the
#             first read (chunks from the local store, decompressed and
#             verified), then a second read on the same mount (the kernel's
#             page cache: lode opens files with FOPEN_KEEP_CACHE).
#   B7 cold   a data-less clone (`LODE_SKIP_SMUDGE=1 lode clone`), mounted
#             with an empty --cache: the first read fetches every chunk from
#             the remote (ranged reads, read-ahead), keeping it in the node
#             cache; then a second read on the same mount.
#   B6 node   that clone unmounted and mounted again with the same --cache:
#             the read is served chunk by chunk from the node cache.
#   B6 prefetch  a new empty --cache, `lode prefetch HEAD` (timed, context),
#             then a fresh mount and a read (node cache again).
#   B7 plain  boto3 download_file of the plain upload to a file
#             (TransferConfig max_concurrency=8, 16 MiB parts), timed inside
#             Python (interpreter start and imports not counted).
# Every mount is unmounted (and its process waited for) before the next
# case, so no case reads another's kernel page cache; each mount serves
# Prometheus counters, and their deltas show where each read's bytes came
# from (memory, node cache, local store, remote); a read served from the
# wrong place, an error counter above 0 or bytes that differ from the
# checkpoint fail the run instead of giving a fast, wrong number.
#
# Caveats: the page cache cannot be dropped here, so the plain file, the
# local packs, the node-cache files and Garage's blocks are all warm. Garage
# runs on the same cores as the clients, with block compression off. lode
# does not implement FUSE passthrough: a file whole in the node cache is
# still served chunk by chunk. All work happens in one directory under
# ${TMPDIR:-/tmp}, removed at exit (mounts unmounted and Garage stopped
# first); its peak size is about 7 x the checkpoint. HOME and the XDG
# directories point into it (git identity set there, GIT_CONFIG_NOSYSTEM=1).
set -euo pipefail

SIZE_MIB=1024
RUNS=3
BUILD=1
KEEP=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --size-mib) SIZE_MIB=${2:?--size-mib needs a number}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "mount.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for v in SIZE_MIB RUNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "mount.sh: --$(tr 'A-Z_' 'a-z-' <<<"$v") must be a positive integer" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
say() { echo "mount.sh: $*" >&2; }
die() { echo "mount.sh: error: $*" >&2; exit 1; }

# ---- tools -------------------------------------------------------------------

PY=$(command -v python3) || die "python3 is required"
"$PY" -c 'import numpy, safetensors' 2>/dev/null ||
    die "python packages numpy and safetensors are missing (pip install numpy safetensors), needed by benches/gen_model.py"
"$PY" -c 'import boto3' 2>/dev/null || die "boto3 is missing (pip install boto3): it is B7's plain baseline"
command -v curl >/dev/null || die "curl is missing: it reads the mounts' counters"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: lode mount needs FUSE"
((EUID == 0)) || command -v fusermount3 >/dev/null || die "not root and no fusermount3 (package fuse3): lode mount cannot mount"
# shellcheck source=benches/garage.sh
source "$ROOT/benches/garage.sh" # garage_find, garage_start, garage_stop; KEY_ID, SECRET, BUCKET
garage_find

if ((BUILD)); then
    say "building lode (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet) >&2
fi
[[ -x $TARGET/release/lode ]] || die "$TARGET/release/lode is missing (run cargo build --release)"
help=$("$TARGET/release/lode" --help 2>&1 || true)
for cmd in init add remote push clone mount umount prefetch; do
    grep -qE "(^|[[:space:]])$cmd([[:space:]]|$)" <<<"$help" || die "this lode has no '$cmd' command; build a newer one"
done

# ---- work directory and isolation -------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-mount.XXXXXX")
MNT=$WORK/mnt
MOUNT_PID=
wipe() { [[ -e $1 ]] || return 0; chmod -R u+w "$1" 2>/dev/null || true; rm -rf "$1"; }
# The processes serving a mount on $MNT (ours: the path is this run's).
mount_pids() {
    local p line
    for p in /proc/[0-9]*; do
        line=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        [[ $line == *--foreground* && $line == *" $MNT "* ]] && echo "${p#/proc/}"
    done
    return 0
}
is_mounted() { awk -v d="$MNT" '$5 == d { f = 1 } END { exit !f }' /proc/self/mountinfo; }
cleanup() {
    local p
    if is_mounted; then
        lode umount --lazy "$MNT" >/dev/null 2>&1 || umount -l "$MNT" 2>/dev/null || true
    fi
    for p in $(mount_pids); do kill "$p" 2>/dev/null || true; done
    garage_stop
    cd /
    if ((KEEP)); then
        say "kept $WORK"
    else
        wipe "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=$((SIZE_MIB * 8 * 1024)) # KiB: model, working file + store, server (packs + plain), two node caches, download
avail=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
((avail > need)) || die "$WORK has $((avail / 1024)) MiB free; this run needs about $((need / 1024)) MiB"

# A copy of the binaries first on PATH (git's filter runs `lode
# filter-process`, and the mount process is `lode` again): a rebuild during
# the run does not change what is measured.
mkdir "$WORK/bin"
cp "$TARGET/release/lode" "$WORK/bin/"
[[ -x $TARGET/release/git-lode ]] && cp "$TARGET/release/git-lode" "$WORK/bin/"
export PATH="$WORK/bin:$PATH"

LOG=$WORK/log
: >"$LOG"
isolate_home() { # DIR: a HOME with only the bench's git identity
    mkdir -p "$1/.config" "$1/.cache" "$1/.local/share"
    HOME=$1 git config --global user.name "lode bench"
    HOME=$1 git config --global user.email "bench@lode.invalid"
    HOME=$1 git config --global init.defaultBranch main
    HOME=$1 git config --global advice.detachedHead false
}
export GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
isolate_home "$WORK/home"
export HOME=$WORK/home XDG_CONFIG_HOME=$WORK/home/.config XDG_CACHE_HOME=$WORK/home/.cache XDG_DATA_HOME=$WORK/home/.local/share
unset LODE_SKIP_SMUDGE LODE_TRANSFERS LODE_TEST_FAIL_REQUEST AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_REGION
GDIR=$WORK/garage # garage_start (benches/garage.sh) runs an empty server here

# ---- measuring ---------------------------------------------------------------

declare -A T=()   # "label" -> space-separated samples, one per run, in run order
declare -A SRC=() # "label" -> where the last run's read got its bytes (counter deltas)
record() { T["$1"]+=" $2"; }

STEP_LIMIT=${LODE_BENCH_STEP_LIMIT:-600}
step() { timeout -k 10 "$STEP_LIMIT" "$@"; }
# dump_mount: the mount processes' threads, to /tmp/lode-mount-hang.PID.txt
dump_mount() {
    local p out
    for p in $(mount_pids); do
        out=/tmp/lode-mount-hang.$p.txt
        if command -v gdb >/dev/null; then
            gdb -p "$p" -batch -ex 'thread apply all bt' >"$out" 2>&1 || true
        else
            cat "/proc/$p/task/"*/stack >"$out" 2>&1 || true
        fi
        echo "mount.sh: the mount process $p's threads are in $out" >&2
    done
}
fail() { # RC CMD...
    local rc=$1 how="failed (exit $1)"
    shift
    if ((rc == 124 || rc == 137)); then
        how="did not finish in $STEP_LIMIT s (LODE_BENCH_STEP_LIMIT) and was killed"
        is_mounted && dump_mount
    fi
    echo "mount.sh: error: '$*' $how in $PWD; the log ends (--keep keeps it):" >&2
    tail -n 20 "$LOG" >&2
    [[ -f ${MOUNT_LOG:-} ]] && { echo "mount.sh: the mount log ends:" >&2; tail -n 20 "$MOUNT_LOG" >&2; }
    exit 1
}
quiet() {
    echo "+ $*" >>"$LOG"
    step "$@" >>"$LOG" 2>&1 || fail $? "$@"
}
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
# read_file LABEL FILE: time `cat FILE > /dev/null`
read_file() {
    local t0 t1
    echo "+ cat $2 > /dev/null" >>"$LOG"
    t0=$EPOCHREALTIME
    step cat "$2" >/dev/null 2>>"$LOG" || fail $? cat "$2"
    t1=$EPOCHREALTIME
    record "$1" "$(secs "$t0" "$t1")"
}
# measure LABEL CMD...: time CMD, its output going to the log
measure() {
    local label=$1 t0 t1
    shift
    echo "+ $*" >>"$LOG"
    t0=$EPOCHREALTIME
    step "$@" >>"$LOG" 2>&1 || fail $? "$@"
    t1=$EPOCHREALTIME
    record "$label" "$(secs "$t0" "$t1")"
}

# ---- mounts and their counters ----------------------------------------------

METRICS=
# mount_at CACHE: mount HEAD of the repository in $PWD on $MNT with that node
# cache, serving counters on a free port; wait for it.
mount_at() {
    local port
    is_mounted && die "$MNT is still mounted"
    mkdir -p "$MNT"
    port=$(free_port)
    METRICS=http://127.0.0.1:$port/metrics
    MOUNT_LOG=$PWD/.git/lode/mount.log
    quiet lode mount HEAD "$MNT" --cache "$1" --metrics "127.0.0.1:$port"
    is_mounted || die "lode mount returned but $MNT is not mounted"
    MOUNT_PID=$(mount_pids | head -n 1)
    [[ -n $MOUNT_PID ]] || die "no mount process found for $MNT"
    for _ in $(seq 100); do curl -sf "$METRICS" >/dev/null && break; sleep 0.05; done
    curl -sf "$METRICS" >/dev/null || die "the mount's counters at $METRICS do not answer"
}
# unmount: lode umount, then wait for the mount process to end (it may still
# be writing the node cache), so that it does not share the CPU with the next
# case.
unmount() {
    quiet lode umount "$MNT"
    local i
    for ((i = 0; i < 300; i++)); do
        kill -0 "$MOUNT_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$MOUNT_PID" 2>/dev/null && { dump_mount; die "the mount process $MOUNT_PID did not exit 30 s after lode umount"; }
    MOUNT_PID=
    rmdir "$MNT"
}
# counters: the array C = (reads memory node-cache store remote-chunks
# remote-bytes errors remote-fetches remote-fetch-seconds), as the mount
# counts them now
C=()
counters() {
    local text
    text=$(curl -sf "$METRICS") || die "the mount's counters at $METRICS do not answer"
    read -ra C <<<"$(awk '
        /^lode_mount_reads_total /          { r = $2 }
        /^lode_mount_memory_hits_total /    { m = $2 }
        /^lode_mount_cache_hits_total /     { c = $2 }
        /^lode_mount_store_reads_total /    { s = $2 }
        /^lode_mount_remote_chunks_total /  { rc = $2 }
        /^lode_mount_remote_bytes_total /   { rb = $2 }
        /^lode_mount_errors_total /         { e = $2 }
        /^lode_mount_remote_fetches_total / { f = $2 }
        /^lode_mount_remote_fetch_seconds_total / { fs = $2 }
        END { printf "%d %d %d %d %d %d %d %d %d\n", r, m, c, s, rc, rb, e, f, fs }' <<<"$text")"
}
# timed_mount_read LABEL: time a read of the mounted checkpoint; where its
# bytes came from (counter deltas, as counters orders them) goes to
# SRC[LABEL] and to the array D.
D=()
timed_mount_read() {
    local -a a
    local i
    counters
    a=("${C[@]}")
    read_file "$1" "$MNT/model.safetensors"
    counters
    for i in 0 1 2 3 4 5 6 7 8; do D[i]=$((C[i] - a[i])); done
    SRC["$1"]="${D[*]}"
    ((D[6] == 0)) || die "$1: the mount answered ${D[6]} read(s) with an error (see $MOUNT_LOG)"
}
check_bytes() { # what the mount shows equals the checkpoint
    cmp -s "$MNT/model.safetensors" "$MODEL" || die "$1: the mounted file's bytes differ from the checkpoint"
}

# ---- set up ------------------------------------------------------------------

MODEL=$WORK/model.safetensors
PLAIN_PY=$WORK/plain.py
cat >"$PLAIN_PY" <<'EOF'
# boto3's managed transfer: "up SRC KEY" uploads, "down KEY DST" downloads and
# prints the seconds (client set up before the clock starts).
import os, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

mode, bucket, a, b = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="garage",
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
mib = 1024 * 1024
tc = TransferConfig(max_concurrency=8, multipart_chunksize=16 * mib, multipart_threshold=16 * mib)
t0 = time.perf_counter()
if mode == "up":
    s3.upload_file(a, bucket, b, Config=tc)
else:
    s3.download_file(bucket, a, b, Config=tc)
print(f"{time.perf_counter() - t0:.3f}")
EOF

say "generating a ${SIZE_MIB} MiB checkpoint in $WORK"
"$PY" "$ROOT/benches/gen_model.py" --size-mib "$SIZE_MIB" --out "$MODEL" 2>>"$LOG" || fail $? gen_model.py
ONE=$(stat -c %s "$MODEL")

say "starting Garage; committing and pushing the checkpoint"
garage_start
REPO=$WORK/repo
ORIGIN=$WORK/origin.git
mkdir "$REPO" && cd "$REPO"
quiet lode init
quiet lode remote set "s3://$BUCKET/mount"
cp "$MODEL" model.safetensors
quiet lode add model.safetensors
quiet git add .lodeconfig
quiet git commit -qm model
head=$(git cat-file -p HEAD:model.safetensors | head -n 1)
[[ $head == "version lode/1"* ]] || die "HEAD:model.safetensors is '${head:0:40}', not a lode pointer"
echo "+ lode push --json" >>"$LOG"
step lode push --json >"$WORK/push.json" 2>>"$LOG" || fail $? lode push --json
cat "$WORK/push.json" >>"$LOG"
PUSHED=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["bytes_uploaded"])' "$WORK/push.json")
quiet git init -q --bare "$ORIGIN"
quiet git push -q --no-verify "$ORIGIN" main
quiet "$PY" "$PLAIN_PY" up "$BUCKET" "$MODEL" plain/model.safetensors
sync # the set-up's writeback should not land in the first run's timings

# ---- runs --------------------------------------------------------------------

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= RUNS; r++)); do
    say "run $r/$RUNS: B6 plain file and local-store mount"
    cd "$REPO"
    cat model.safetensors >/dev/null # warm
    read_file plain "$REPO/model.safetensors"
    wipe "$WORK/cache-store"
    mount_at "$WORK/cache-store"
    timed_mount_read store-first
    ((D[3] > 0 && D[4] == 0)) || die "the local-store mount read ${D[3]} chunks from the store and ${D[4]} from the remote"
    timed_mount_read store-second
    check_bytes "local-store mount"
    unmount
    wipe "$WORK/cache-store"

    say "run $r/$RUNS: B7 data-less clone, cold mount"
    cd "$WORK"
    wipe "$WORK/clone"
    quiet env LODE_SKIP_SMUDGE=1 lode clone "$ORIGIN" "$WORK/clone"
    cd "$WORK/clone"
    [[ $(head -c 14 model.safetensors) == "version lode/1" ]] || die "the LODE_SKIP_SMUDGE=1 clone has data in its working file"
    stored=$(du -sb .git/lode | cut -f1)
    ((stored < ONE / 20)) || die "the LODE_SKIP_SMUDGE=1 clone holds $stored bytes under .git/lode"
    wipe "$WORK/cache-node"
    mount_at "$WORK/cache-node"
    timed_mount_read cold
    ((D[4] > 0 && D[3] == 0)) || die "the cold mount fetched ${D[4]} chunks from the remote and read ${D[3]} from a store"
    timed_mount_read cold-second
    check_bytes "cold mount"
    unmount

    say "run $r/$RUNS: B6 node cache warm (same --cache, fresh mount)"
    mount_at "$WORK/cache-node"
    timed_mount_read node
    ((D[2] > 0 && D[3] == 0 && D[4] == 0)) ||
        die "the warm-cache mount read ${D[2]} chunks from the node cache, ${D[3]} from a store, ${D[4]} from the remote"
    check_bytes "warm node-cache mount"
    unmount
    wipe "$WORK/cache-node"

    say "run $r/$RUNS: B6 lode prefetch, then a fresh mount"
    wipe "$WORK/cache-pre"
    measure prefetch lode prefetch HEAD --cache "$WORK/cache-pre"
    mount_at "$WORK/cache-pre"
    timed_mount_read prefetched
    ((D[2] > 0 && D[3] == 0 && D[4] == 0)) ||
        die "the prefetched mount read ${D[2]} chunks from the node cache, ${D[3]} from a store, ${D[4]} from the remote"
    check_bytes "prefetched mount"
    unmount
    wipe "$WORK/cache-pre"
    cd "$WORK"
    wipe "$WORK/clone"

    say "run $r/$RUNS: B7 plain (boto3 download_file)"
    wipe "$WORK/download"
    echo "+ python3 plain.py down" >>"$LOG"
    t=$(step "$PY" "$PLAIN_PY" down "$BUCKET" plain/model.safetensors "$WORK/download" 2>>"$LOG") ||
        fail $? python3 plain.py down
    echo "$t" >>"$LOG"
    record boto3 "$t"
    cmp -s "$WORK/download" "$MODEL" || die "boto3 download_file did not restore the checkpoint's bytes"
    wipe "$WORK/download"
done

# ---- report ------------------------------------------------------------------

median_of() { # numbers on stdin
    grep -v '^$' | sort -g |
        awk '{ a[NR] = $1 } END { if (!NR) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
median() { tr ' ' '\n' <<<"${T["$1"]:-}" | median_of; }
samples() { local s=${T["$1"]:-}; s=${s# }; echo "${s:-n/a}"; }
run_ratios() { # same-run ratios T[NUM] / T[DEN], one per run
    local -a a b
    read -ra a <<<"${T["$1"]:-}"
    read -ra b <<<"${T["$2"]:-}"
    local i
    for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
        awk -v x="${a[i]}" -v y="${b[i]}" 'BEGIN { printf "%.3f\n", x / y }'
    done
}
verdict() { # value, op, goal
    [[ $1 == n/a ]] && { echo "n/a"; return; }
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN { ok = (op == "<=") ? v <= g : (op == "<") ? v < g : v >= g; print ok ? "met" : "**missed**" }'
}
mbs() { awk -v b="$ONE" -v s="$1" 'BEGIN { if (s > 0) printf "%.0f MB/s", b / s / 1e6; else print "-" }'; }

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
fs=$(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')
ver() { "$@" 2>/dev/null | head -n 1 || echo "n/a"; }

echo "## lode mount: sequential reads of $ONE bytes, medians of $RUNS runs"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) cores, ${cpu:-unknown CPU}, $mem memory, kernel $(uname -r); work dir on $fs"
echo "- versions: $(ver lode --version); $(ver "$GARAGE" --version | cut -d' ' -f1-2); boto3 $("$PY" -c 'import boto3; print(boto3.__version__)' 2>/dev/null || echo n/a); $(ver cat --version)"
echo "- load average (1, 5, 15 min) before the runs: $LOAD0; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- the checkpoint is $ONE bytes; lode pushed $PUSHED bytes of packs (what a cold read fetches, at least)"
echo "- reads are \`cat FILE > /dev/null\` timed as a command; page cache warm (plain file, packs, node cache, Garage's blocks); Garage on the same cores, block compression off; wall-clock seconds"
echo

row() { # LABEL TEXT
    local m
    m=$(median "$1")
    [[ $m == n/a ]] && return
    echo "| $2 | $m s ($(mbs "$m")) | $(samples "$1") |"
}
echo "| read | median | samples |"
echo "|---|---|---|"
row plain "cat of the plain file (page cache warm)"
row store-first "mount, first read (local store)"
row store-second "mount, second read (kernel page cache)"
row node "fresh mount, node cache warm (after the cold read)"
row prefetch "(lode prefetch into an empty node cache)"
row prefetched "fresh mount after lode prefetch (node cache)"
row cold "data-less clone, empty node cache: first read (remote)"
row cold-second "data-less clone: second read (kernel page cache)"
row boto3 "boto3 download_file (8 parallel 16 MiB ranges)"
echo
echo "Where the last run's reads got their chunks (counter deltas of the mount's \`--metrics\`):"
echo
echo "| read | FUSE reads | chunks: memory | node cache | local store | remote | remote bytes | remote batches | their seconds, summed |"
echo "|---|---|---|---|---|---|---|---|---|"
for k in store-first store-second node prefetched cold cold-second; do
    read -ra d <<<"${SRC[$k]:-0 0 0 0 0 0 0 0 0}"
    echo "| $k | ${d[0]} | ${d[1]} | ${d[2]} | ${d[3]} | ${d[4]} | ${d[5]} | ${d[7]} | ${d[8]} |"
done
echo
read -ra d <<<"${SRC[cold]:-0 0 0 0 0 0 0 0 0}"
echo "The cold read downloaded $(awk -v a="${d[5]}" -v b="$PUSHED" 'BEGIN { printf "%.2f", a / b }') x the bytes lode pushed."
echo
target() { # TEXT NUM DEN OP GOAL: median of same-run NUM/DEN against GOAL
    local rs m
    rs=$(run_ratios "$2" "$3" | tr '\n' ' ')
    m=$(tr ' ' '\n' <<<"$rs" | median_of)
    echo "| $1 | $m | ${rs% } | $4 $5 | $(verdict "$m" "$4" "$5") |"
}
echo "| target (speed ratios, same run) | median | per run | goal | |"
echo "|---|---|---|---|---|"
target "B6 warm mount, first read (local store) / cat" plain store-first ">=" 0.6
target "B6 warm mount, second read (page cache) / cat" plain store-second ">=" 0.9
target "B6 node cache warm, chunk by chunk / cat" plain node ">=" 0.6
target "B6 node cache whole file (no passthrough: chunk-served) / cat" plain node ">=" 0.9
target "B6 after lode prefetch, chunk by chunk / cat" plain prefetched ">=" 0.6
target "B7 cold mount read / boto3 download_file" boto3 cold ">=" 0.8
