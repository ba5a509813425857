#!/usr/bin/env bash
# lode's remote transfers against a plain parallel S3 client and DVC, through
# a local S3-compatible server (Garage, one node on loopback): rows B5 and B8
# of shared/BENCHMARKS.md, medians of R runs and same-run ratios, as
# markdown tables on stdout (progress goes to stderr, tool output to a log).
#
#   bash benches/remote.sh [--size-mib N] [--files N] [--runs R]
#                          [--rows LIST] [--no-build] [--keep]
#
#   --size-mib N   B5 checkpoint size (default 1024)
#   --files N      B8 number of 4 KiB files (default 100000)
#   --runs R       runs per measurement; the tables show medians (default 3)
#   --rows LIST    comma-separated subset of B5, B8 (default: both)
#   --no-build     use target/release/lode as it is
#   --keep         keep the work directory (printed at the end)
#
# Each timed or set-up step is killed after LODE_BENCH_STEP_LIMIT seconds
# (default 1800), failing the run, so that a hang is reported, not waited on.
#
# B5 (push, then fetch into a fresh clone), each run, each tool against a
# freshly started, empty Garage:
#   lode   a repository with the checkpoint committed through lode's filter
#          (`lode track '*.safetensors'`, `git add`, `git commit`) and its
#          remote set to s3://bench/lode-rN: `lode push --json` is timed
#          (its request count is recorded); the commits then go to a bare
#          repository with `git push --no-verify` (untimed: the hook would
#          upload again); `lode clone BARE DIR` (git clone + fetch + parallel
#          checkout) is timed in a fresh HOME and the file compared with the
#          original; then `lode fetch --json` alone is timed in a clone made
#          with LODE_SKIP_SMUDGE=1 (pointers only).
#   plain  boto3's managed transfer of the same file: upload_file, then
#          download_file (TransferConfig max_concurrency=8, 16 MiB parts),
#          timed inside Python (interpreter start and imports not counted).
#   dvc    `dvc add` (timed, for context), `git commit`, `dvc push` timed;
#          then a git clone of that repository (empty DVC cache) and
#          `dvc pull` timed, the file compared with the original.
# B8 (100 000 files of 4 KiB random bytes, 1 000 per directory), each run:
#   lode   a fresh repository with its remote set: `lode add data`,
#          `git commit`, `lode status` twice (the first right after the
#          commit), `git status`, and `lode push --json` (requests recorded).
#   dvc    a fresh repository: `dvc add data`, `git commit`, `dvc status`.
#
# Caveats: the page cache is warm (every input was just written or copied),
# as it cannot be dropped reliably here. Garage runs on the same cores as the
# clients, with block compression off (compression_level = "none") so that
# it spends as little CPU as possible; it is restarted empty before each
# tool's B5 run so no tool gains from the server's block dedup of an earlier
# upload. All work happens in one directory under ${TMPDIR:-/tmp}, removed
# at exit (Garage stopped first); its peak size is about 7 x the checkpoint
# plus about 1.5 GB for B8's 100 000 files. HOME and the XDG directories
# point into it (git identity set there, GIT_CONFIG_NOSYSTEM=1).
set -euo pipefail

SIZE_MIB=1024
FILES=100000
RUNS=3
ROWS="B5,B8"
BUILD=1
KEEP=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --size-mib) SIZE_MIB=${2:?--size-mib needs a number}; shift 2 ;;
        --files) FILES=${2:?--files needs a number}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --rows) ROWS=${2:?--rows needs a list}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "remote.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for v in SIZE_MIB FILES RUNS; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "remote.sh: --$(tr 'A-Z_' 'a-z-' <<<"$v") must be a positive integer" >&2; exit 2; }
done
ROWS=${ROWS^^}
for r in ${ROWS//,/ }; do
    case "$r" in
        B5 | B8) ;;
        *) echo "remote.sh: unknown row '$r' in --rows (B5, B8)" >&2; exit 2 ;;
    esac
done
wants() { [[ ",$ROWS," == *",$1,"* ]]; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
say() { echo "remote.sh: $*" >&2; }
die() { echo "remote.sh: error: $*" >&2; exit 1; }

# ---- tools -------------------------------------------------------------------

PY=$(command -v python3) || die "python3 is required"
"$PY" -c 'import numpy, safetensors' 2>/dev/null || ! wants B5 ||
    die "python packages numpy and safetensors are missing (pip install numpy safetensors), needed by benches/gen_model.py"
"$PY" -c 'import boto3' 2>/dev/null || ! wants B5 || die "boto3 is missing (pip install boto3): it is B5's plain baseline"
# shellcheck source=benches/garage.sh
source "$ROOT/benches/garage.sh" # garage_find, garage_start, garage_stop; KEY_ID, SECRET, BUCKET
garage_find
if command -v dvc >/dev/null; then
    DVC=("$(command -v dvc)")
elif "$PY" -c 'import dvc, dvc_s3' 2>/dev/null; then
    DVC=("$PY" -m dvc)
else
    die "dvc with S3 support is missing (pip install 'dvc[s3]')"
fi

if ((BUILD)); then
    say "building lode (cargo build --release)"
    (cd "$ROOT" && cargo build --release --quiet) >&2
fi
[[ -x $TARGET/release/lode ]] || die "$TARGET/release/lode is missing (run cargo build --release)"
help=$("$TARGET/release/lode" --help 2>&1 || true)
for cmd in init track add status remote push fetch clone; do
    grep -qE "(^|[[:space:]])$cmd([[:space:]]|$)" <<<"$help" || die "this lode has no '$cmd' command; build a newer one"
done

# ---- work directory and isolation -------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-remote.XXXXXX")
wipe() { [[ -e $1 ]] || return 0; chmod -R u+w "$1" 2>/dev/null || true; rm -rf "$1"; }
cleanup() {
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

need=0                                                   # KiB
wants B5 && need=$((need + SIZE_MIB * 8 * 1024))          # model, repo + store, server, clone + store
wants B8 && need=$((need + FILES * 24))                   # source, copy, store, server, DVC cache
avail=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
((avail > need)) || die "$WORK has $((avail / 1024)) MiB free; this run needs about $((need / 1024)) MiB"

# A copy of the binaries first on PATH (git's filter runs `lode
# filter-process`): a rebuild during the run does not change what is measured.
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
export DVC_NO_ANALYTICS=1
unset LODE_SKIP_SMUDGE LODE_TRANSFERS LODE_TEST_FAIL_REQUEST AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_REGION

# ---- the server --------------------------------------------------------------

GDIR=$WORK/garage # garage_start (benches/garage.sh) runs an empty server here

# ---- measuring ---------------------------------------------------------------

declare -A T=()       # "row|label" -> space-separated samples, one per run, in run order
record() { T["$1|$2"]+=" $3"; }

# Every step runs under a time limit, so a hang fails the run instead of
# stalling it (LODE_BENCH_STEP_LIMIT seconds, default 1800).
STEP_LIMIT=${LODE_BENCH_STEP_LIMIT:-1800}
step() { timeout -k 10 "$STEP_LIMIT" "$@"; }
fail() { # RC CMD...
    local rc=$1 how="failed (exit $1)"
    shift
    ((rc == 124 || rc == 137)) && how="did not finish in $STEP_LIMIT s (LODE_BENCH_STEP_LIMIT) and was killed"
    echo "remote.sh: error: '$*' $how in $PWD; the log ends (--keep keeps it):" >&2
    tail -n 20 "$LOG" >&2
    exit 1
}
# measure ROW LABEL CMD...: record the seconds CMD takes, its output going to
# the log. A failure stops the whole harness with the log's tail.
measure() {
    local row=$1 label=$2 t0 t1
    shift 2
    echo "+ $*" >>"$LOG"
    t0=$EPOCHREALTIME
    step "$@" >>"$LOG" 2>&1 || fail $? "$@"
    t1=$EPOCHREALTIME
    record "$row" "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
}
# measure_out ROW LABEL FILE CMD...: the same, with CMD's stdout in FILE.
measure_out() {
    local row=$1 label=$2 out=$3 t0 t1 rc
    shift 3
    echo "+ $* >$out" >>"$LOG"
    t0=$EPOCHREALTIME
    step "$@" >"$out" 2>>"$LOG" || { rc=$?; cat "$out" >>"$LOG"; fail $rc "$@"; }
    t1=$EPOCHREALTIME
    cat "$out" >>"$LOG"
    record "$row" "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
}
quiet() {
    echo "+ $*" >>"$LOG"
    step "$@" >>"$LOG" 2>&1 || fail $? "$@"
}
json_field() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
expect_pointer() { # PATH: HEAD's blob of PATH is a lode pointer
    local head
    head=$(git cat-file -p "HEAD:$1" 2>/dev/null | head -n 1 || true)
    [[ $head == "version lode/1"* ]] || die "HEAD:$1 is '${head:0:40}', not a lode pointer: the filter did not engage"
}
fresh_dir() { cd "$WORK"; wipe "$WORK/$1"; mkdir -p "$WORK/$1"; cd "$WORK/$1"; }

# ---- B5 ----------------------------------------------------------------------

MODEL=$WORK/model.safetensors
PLAIN_PY=$WORK/plain.py
cat >"$PLAIN_PY" <<'EOF'
# boto3's managed transfer: upload SRC to s3://BUCKET/KEY, download it to DST;
# prints the seconds of each (client set up before the clock starts).
import os, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

bucket, key, src, dst = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="garage",
                  config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
mib = 1024 * 1024
tc = TransferConfig(max_concurrency=8, multipart_chunksize=16 * mib, multipart_threshold=16 * mib)
t0 = time.perf_counter()
s3.upload_file(src, bucket, key, Config=tc)
t1 = time.perf_counter()
s3.download_file(bucket, key, dst, Config=tc)
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
EOF

b5_lode() {
    local r=$1 cl
    garage_start
    fresh_dir b5
    mkdir repo && cd repo
    quiet lode init
    quiet lode track '*.safetensors'
    quiet lode remote set "s3://$BUCKET/lode-r$r"
    cp "$MODEL" model.safetensors
    quiet git add .gitattributes .lodeconfig model.safetensors
    quiet git commit -qm model
    expect_pointer model.safetensors
    measure_out B5 lode-push "$WORK/push.json" lode push --json
    record B5 lode-push-requests "$(json_field "$WORK/push.json" requests)"
    record B5 lode-push-bytes "$(json_field "$WORK/push.json" bytes_uploaded)"
    quiet git init -q --bare "$WORK/b5/origin.git"
    quiet git push -q --no-verify "$WORK/b5/origin.git" main
    cd "$WORK/b5"
    wipe repo
    cl=$WORK/b5/home-clone
    isolate_home "$cl"
    measure B5 lode-clone env HOME="$cl" XDG_CONFIG_HOME="$cl/.config" XDG_CACHE_HOME="$cl/.cache" \
        XDG_DATA_HOME="$cl/.local/share" lode clone "$WORK/b5/origin.git" clone
    cmp -s clone/model.safetensors "$MODEL" || die "lode clone did not restore the checkpoint's bytes"
    wipe clone
    quiet env LODE_SKIP_SMUDGE=1 lode clone "$WORK/b5/origin.git" pointers
    cd pointers
    measure_out B5 lode-fetch "$WORK/fetch.json" lode fetch --json
    record B5 lode-fetch-requests "$(json_field "$WORK/fetch.json" requests)"
    cd "$WORK"
    wipe "$WORK/b5"
    garage_stop
}

b5_plain() {
    local r=$1 t
    garage_start
    fresh_dir b5
    echo "+ python3 plain.py" >>"$LOG"
    t=$(step "$PY" "$PLAIN_PY" "$BUCKET" "plain-r$r/model.safetensors" "$MODEL" "$WORK/b5/download" 2>>"$LOG") ||
        fail $? python3 plain.py
    echo "$t" >>"$LOG"
    record B5 plain-up "${t% *}"
    record B5 plain-down "${t#* }"
    cmp -s download "$MODEL" || die "boto3 download_file did not restore the checkpoint's bytes"
    cd "$WORK"
    wipe "$WORK/b5"
    garage_stop
}

dvc_remote() { # in a dvc repository: the default remote at s3://$BUCKET/$1 on the running server
    quiet "${DVC[@]}" remote add -d s3 "s3://$BUCKET/$1"
    quiet "${DVC[@]}" remote modify s3 endpointurl "$AWS_ENDPOINT_URL"
    quiet "${DVC[@]}" remote modify s3 region garage
}

b5_dvc() {
    local r=$1
    garage_start
    export DVC_SITE_CACHE_DIR=$WORK/b5/dvc-site
    fresh_dir b5
    mkdir repo && cd repo
    quiet git init -q
    quiet "${DVC[@]}" init -q
    dvc_remote "dvc-r$r"
    quiet git add -A
    quiet git commit -qm setup
    cp "$MODEL" model.safetensors
    measure B5 dvc-add "${DVC[@]}" add -q model.safetensors
    quiet git add model.safetensors.dvc .gitignore
    quiet git commit -qm model
    measure B5 dvc-push "${DVC[@]}" push -q
    cd "$WORK/b5"
    quiet git clone -q repo clone
    cd clone
    [[ ! -e model.safetensors && ! -d .dvc/cache ]] || die "the DVC clone is not empty"
    measure B5 dvc-pull "${DVC[@]}" pull -q
    cmp -s model.safetensors "$MODEL" || die "dvc pull did not restore the checkpoint's bytes"
    cd "$WORK"
    wipe "$WORK/b5"
    garage_stop
}

# ---- B8 ----------------------------------------------------------------------

SRC8=$WORK/b8src
b8_lode() {
    local r=$1
    garage_start
    fresh_dir b8
    quiet lode init
    quiet lode remote set "s3://$BUCKET/b8-r$r"
    quiet git add .lodeconfig
    quiet git commit -qm setup
    cp -r "$SRC8/data" data
    measure B8 lode-add lode add data
    measure B8 lode-commit git commit -qm data
    expect_pointer data/d000/f00000.bin
    measure_out B8 lode-status "$WORK/status.out" lode status
    grep -qE 'modified|missing|deleted' "$WORK/status.out" && die "lode status after the commit is not clean: $(head -n 3 "$WORK/status.out")"
    measure B8 lode-status2 lode status
    measure_out B8 git-status "$WORK/status.out" git status --porcelain
    [[ ! -s $WORK/status.out ]] || die "git status after the commit is not clean: $(head -n 3 "$WORK/status.out")"
    measure_out B8 lode-push "$WORK/push.json" lode push --json
    record B8 lode-push-requests "$(json_field "$WORK/push.json" requests)"
    record B8 lode-push-packs "$(json_field "$WORK/push.json" packs_uploaded)"
    [[ $(json_field "$WORK/push.json" files) == "$FILES" ]] || die "lode push counted $(json_field "$WORK/push.json" files) files, not $FILES"
    cd "$WORK"
    wipe "$WORK/b8"
    garage_stop
}

b8_dvc() {
    local r=$1
    export DVC_SITE_CACHE_DIR=$WORK/b8/dvc-site
    fresh_dir b8
    mkdir repo && cd repo
    quiet git init -q
    quiet "${DVC[@]}" init -q
    quiet git commit -qm setup
    cp -r "$SRC8/data" data
    measure B8 dvc-add "${DVC[@]}" add -q data
    quiet git add data.dvc .gitignore
    measure B8 dvc-commit git commit -qm data
    measure B8 dvc-status "${DVC[@]}" status -q
    cd "$WORK"
    wipe "$WORK/b8"
}

# ---- runs --------------------------------------------------------------------

if wants B5; then
    say "generating a ${SIZE_MIB} MiB checkpoint in $WORK"
    "$PY" "$ROOT/benches/gen_model.py" --size-mib "$SIZE_MIB" --out "$MODEL" 2>>"$LOG" || fail $? gen_model.py
fi
ONE=$( [[ -f $MODEL ]] && stat -c %s "$MODEL" || echo 0)
if wants B8; then
    say "generating $FILES files of 4 KiB"
    "$PY" - "$SRC8/data" "$FILES" <<'EOF'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    d = os.path.join(root, f"d{i // 1000:03d}")
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(4096))
EOF
fi

sync # the inputs' writeback should not land in the first run's timings
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= RUNS; r++)); do
    if wants B5; then
        say "run $r/$RUNS: B5 lode"; b5_lode "$r"
        say "run $r/$RUNS: B5 plain (boto3)"; b5_plain "$r"
        say "run $r/$RUNS: B5 dvc"; b5_dvc "$r"
    fi
    if wants B8; then
        say "run $r/$RUNS: B8 lode"; b8_lode "$r"
        say "run $r/$RUNS: B8 dvc"; b8_dvc "$r"
    fi
done

# ---- report ------------------------------------------------------------------

median_of() { # numbers on stdin
    grep -v '^$' | sort -g |
        awk '{ a[NR] = $1 } END { if (!NR) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
median() { tr ' ' '\n' <<<"${T["$1|$2"]:-}" | median_of; }
samples() { local s=${T["$1|$2"]:-}; s=${s# }; echo "${s:-n/a}"; }
# same-run ratios NUM / DEN, one per run, then their median
run_ratios() {
    local -a a b
    read -ra a <<<"${T["$1|$2"]:-}"
    read -ra b <<<"${T["$1|$3"]:-}"
    local i
    for ((i = 0; i < ${#a[@]} && i < ${#b[@]}; i++)); do
        awk -v x="${a[i]}" -v y="${b[i]}" 'BEGIN { printf "%.3f\n", x / y }'
    done
}
verdict() { # value, op, goal
    [[ $1 == n/a ]] && { echo "n/a"; return; }
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN { ok = (op == "<=") ? v <= g : (op == "<") ? v < g : v >= g; print ok ? "met" : "**missed**" }'
}
mbs() { [[ $1 == n/a ]] && echo "" || awk -v b="$ONE" -v s="$1" 'BEGIN { printf "%.0f MB/s", b / s / 1e6 }'; }

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
fs=$(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')
ver() { "$@" 2>/dev/null | head -n 1 || echo "n/a"; }

echo "## lode remote transfers through Garage on loopback, medians of $RUNS runs"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) cores, ${cpu:-unknown CPU}, $mem memory, kernel $(uname -r); work dir on $fs"
echo "- versions: $(ver git --version); $(ver lode --version); $(ver "$GARAGE" --version | cut -d' ' -f1-2); dvc $(ver "${DVC[@]}" --version); boto3 $("$PY" -c 'import boto3; print(boto3.__version__)' 2>/dev/null || echo n/a)"
echo "- load average (1, 5, 15 min) before the runs: $LOAD0; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- server and clients share the cores; Garage block compression off; page cache warm; wall-clock seconds"
echo

row() { # ROW LABEL TEXT [unit]: a row of a measured label
    local m
    m=$(median "$1" "$2")
    [[ $m == n/a ]] && return
    case "${4:-s}" in
        s) echo "| $3 | $m s | $(samples "$1" "$2") |" ;;
        mbs) echo "| $3 | $m s ($(mbs "$m")) | $(samples "$1" "$2") |" ;;
        n) echo "| $3 | $m | $(samples "$1" "$2") |" ;;
    esac
}
target() { # TEXT ROW NUM DEN OP GOAL: median of same-run NUM/DEN against GOAL
    local rs m
    rs=$(run_ratios "$2" "$3" "$4" | tr '\n' ' ')
    m=$(tr ' ' '\n' <<<"$rs" | median_of)
    echo "| $1 | $m | ${rs% } | $5 $6 | $(verdict "$m" "$5" "$6") |"
}

if wants B5; then
    echo "### B5: push, then fetch into a fresh clone ($ONE bytes, fp16 safetensors)"
    echo
    echo "| measurement | median | samples |"
    echo "|---|---|---|"
    row B5 lode-push "lode push" mbs
    row B5 lode-push-requests "lode push: requests" n
    row B5 lode-push-bytes "lode push: bytes uploaded" n
    row B5 plain-up "boto3 upload_file (8 parallel 16 MiB parts)" mbs
    row B5 dvc-push "dvc push" mbs
    row B5 dvc-add "(dvc add, before dvc push)"
    row B5 lode-clone "lode clone (git clone + fetch + checkout, fresh HOME)" mbs
    row B5 lode-fetch "lode fetch (into a pointer-only clone)" mbs
    row B5 lode-fetch-requests "lode fetch: requests" n
    row B5 plain-down "boto3 download_file (8 parallel 16 MiB ranges)" mbs
    row B5 dvc-pull "dvc pull (fresh git clone, empty cache)" mbs
    echo
    echo "| target (same-run ratios) | median | per run | goal | |"
    echo "|---|---|---|---|---|"
    target "B5 push speed: lode / boto3 (boto3 s / lode s)" B5 plain-up lode-push ">=" 0.8
    target "B5 fetch speed: lode clone / boto3 download" B5 plain-down lode-clone ">=" 0.8
    target "B5 fetch speed: lode fetch / boto3 download" B5 plain-down lode-fetch ">=" 0.8
    target "B5 push: dvc push s / lode push s" B5 dvc-push lode-push ">=" 2
    target "B5 fetch: dvc pull s / lode clone s" B5 dvc-pull lode-clone ">=" 2
    target "B5 fetch: dvc pull s / lode fetch s" B5 dvc-pull lode-fetch ">=" 2
    echo
fi
if wants B8; then
    echo "### B8: $FILES files of 4 KiB (random bytes, 1 000 per directory)"
    echo
    echo "| measurement | median | samples |"
    echo "|---|---|---|"
    row B8 lode-add "lode add data"
    row B8 lode-commit "git commit (lode)"
    row B8 lode-status "lode status, no-op (first after the commit)"
    row B8 lode-status2 "lode status, no-op (again)"
    row B8 git-status "git status, no-op"
    row B8 lode-push "lode push"
    row B8 lode-push-requests "lode push: requests" n
    row B8 lode-push-packs "lode push: packs uploaded" n
    row B8 dvc-add "dvc add data"
    row B8 dvc-commit "git commit (dvc)"
    row B8 dvc-status "dvc status, no-op"
    echo
    echo "| target | median | per run | goal | |"
    echo "|---|---|---|---|---|"
    target "B8 add: lode add s / dvc add s" B8 lode-add dvc-add "<=" 0.2
    s=$(median B8 lode-status)
    echo "| B8 no-op lode status (first) | $s s | $(samples B8 lode-status) | < 1 s | $(verdict "$s" "<" 1) |"
    s=$(median B8 lode-push-requests)
    echo "| B8 push requests | $s | $(samples B8 lode-push-requests) | < 1000 | $(verdict "$s" "<" 1000) |"
fi
