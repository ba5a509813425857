#!/usr/bin/env bash
# lode against its peers on a generated fp16 safetensors checkpoint: rows B1,
# B2, B3, B4 and B9 of shared/BENCHMARKS.md, medians of R runs, as a
# markdown table on stdout (progress and tool output go to stderr and a log).
#
#   bash benches/peer.sh [--size-mib N] [--runs R] [--tools LIST]
#                        [--no-build] [--no-install] [--keep]
#
#   --size-mib N   checkpoint size (default 1024)
#   --runs R       runs per measurement; the table shows medians (default 5)
#   --tools LIST   comma-separated subset of: lode (git add through the
#                  filter), lode-add (`lode add`), git-lfs, dvc, cp,
#                  sha256sum (default: all)
#   --no-build     use target/release/lode as it is
#   --no-install   do not install missing peers (fail instead)
#   --keep         keep the work directory (printed at the end)
#
# What it does: installs git-lfs (apt) and dvc, numpy, safetensors (pip) if
# missing; builds lode (cargo build --release) and puts target/release first
# on PATH so git's filter finds `lode`; generates v1 and a fine-tuned v2
# (every tenth tensor changed) with benches/gen_model.py; then, for each run
# and each tool, in a fresh repository: add + commit v1 (B1), add + commit v2
# on top (B2), bytes stored (B3), and a checkout of v2 from the local store
# after its file was replaced by its pointer (B4). B9 (chunk + hash on one
# core) comes from the criterion benchmark `benches/store.rs`.
#
# Caveats: the page cache is warm (the input was just copied), as it cannot
# be dropped reliably here; lode fsyncs its packs and the peers' timings
# include whatever fsync they do (cp does none: see the cp+fsync row). All
# work happens in one directory under ${TMPDIR:-/tmp}, removed at exit; its
# peak size is about 5 x the checkpoint (v1, v2, one repository with its
# store and working file), as each repository is removed after its run.
# HOME and XDG directories point into it, so no user or system git config
# leaks in (GIT_CONFIG_NOSYSTEM=1).
set -euo pipefail

SIZE_MIB=1024
RUNS=5
TOOLS="lode,lode-add,git-lfs,dvc,cp,sha256sum"
BUILD=1
INSTALL=1
KEEP=0

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while (($#)); do
    case "$1" in
        --size-mib) SIZE_MIB=${2:?--size-mib needs a number}; shift 2 ;;
        --runs) RUNS=${2:?--runs needs a number}; shift 2 ;;
        --tools) TOOLS=${2:?--tools needs a list}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --no-install) INSTALL=0; shift ;;
        --keep) KEEP=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "peer.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
[[ $SIZE_MIB =~ ^[1-9][0-9]*$ ]] || { echo "peer.sh: --size-mib must be a positive integer" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "peer.sh: --runs must be a positive integer" >&2; exit 2; }
for t in ${TOOLS//,/ }; do
    case "$t" in
        lode | lode-add | git-lfs | dvc | cp | sha256sum) ;;
        *) echo "peer.sh: unknown tool '$t' in --tools" >&2; exit 2 ;;
    esac
done
wants() { [[ ",$TOOLS," == *",$1,"* ]]; }

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
say() { echo "peer.sh: $*" >&2; }
die() { echo "peer.sh: error: $*" >&2; exit 1; }

# ---- peers -------------------------------------------------------------------

PY=$(command -v python3) || die "python3 is required (for benches/gen_model.py)"
as_root() { if ((EUID == 0)); then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root for: $*"; fi; }
pip_install() {
    say "pip install $*"
    "$PY" -m pip install --quiet "$@" >&2 || "$PY" -m pip install --quiet --break-system-packages "$@" >&2
}
if wants git-lfs && ! command -v git-lfs >/dev/null; then
    ((INSTALL)) || die "git-lfs is not installed (apt-get install git-lfs), or drop it from --tools"
    say "installing git-lfs"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq git-lfs >&2
fi
if ! "$PY" -c 'import numpy, safetensors' 2>/dev/null; then
    ((INSTALL)) || die "python packages numpy and safetensors are missing (pip install numpy safetensors)"
    pip_install numpy safetensors
fi
DVC=()
if wants dvc; then
    if command -v dvc >/dev/null; then
        DVC=("$(command -v dvc)")
    else
        ((INSTALL)) || die "dvc is not installed (pip install dvc), or drop it from --tools"
        "$PY" -c 'import dvc' 2>/dev/null || pip_install dvc
        DVC=("$PY" -m dvc)
    fi
fi

# ---- lode --------------------------------------------------------------------

if wants lode || wants lode-add; then
    if ((BUILD)); then
        say "building lode (cargo build --release)"
        (cd "$ROOT" && cargo build --release --quiet) >&2
    fi
    [[ -x $TARGET/release/lode ]] || die "$TARGET/release/lode is missing (run cargo build --release)"
    export PATH="$TARGET/release:$PATH"
    help=$(lode --help 2>&1 || true)
    for cmd in init track add checkout; do
        grep -qE "(^|[[:space:]])$cmd([[:space:]]|$)" <<<"$help" ||
            die "this lode has no '$cmd' command; build a newer one or run with --tools git-lfs,dvc,cp,sha256sum"
    done
fi

# ---- work directory and isolation -------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-peer.XXXXXX")
cleanup() {
    cd /
    if ((KEEP)); then
        say "kept $WORK"
    else
        chmod -R u+w "$WORK" 2>/dev/null || true
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

need=$((SIZE_MIB * 6 * 1024))                             # KiB: v1, v2, a repo, margin
avail=$(df -Pk "$WORK" | awk 'NR == 2 { print $4 }')
((avail > need)) || die "$WORK has $((avail / 1024)) MiB free; this run needs about $((need / 1024)) MiB"

LOG=$WORK/log
: >"$LOG"
export HOME=$WORK/home XDG_CONFIG_HOME=$WORK/home/.config XDG_CACHE_HOME=$WORK/home/.cache XDG_DATA_HOME=$WORK/home/.local/share
mkdir -p "$HOME" "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME" "$XDG_DATA_HOME"
export GIT_CONFIG_NOSYSTEM=1 GIT_TERMINAL_PROMPT=0
git config --global user.name "lode bench"
git config --global user.email "bench@lode.invalid"
git config --global init.defaultBranch main
git config --global advice.detachedHead false
export DVC_NO_ANALYTICS=1 DVC_SITE_CACHE_DIR=$WORK/dvc-site

V1=$WORK/v1.safetensors
V2=$WORK/v2.safetensors
say "generating a ${SIZE_MIB} MiB checkpoint and its fine-tune in $WORK"
"$PY" "$ROOT/benches/gen_model.py" --size-mib "$SIZE_MIB" --out "$V1"
"$PY" "$ROOT/benches/gen_model.py" --finetune "$V1" --out "$V2" 2>"$LOG.gen" || { cat "$LOG.gen" >&2; exit 1; }
cat "$LOG.gen" >&2
ONE=$(stat -c %s "$V1")

# ---- measuring ---------------------------------------------------------------

declare -A T=()       # "row|label" -> space-separated samples
record() { T["$1|$2"]+=" $3"; }

fail() {
    echo "peer.sh: error: '$*' failed in $PWD; the log ends (--keep keeps it):" >&2
    tail -n 20 "$LOG" >&2
    exit 1
}
# measure ROW LABEL CMD...: record the seconds CMD takes, its output going to
# the log. It runs in this shell (no subshell), so a failure stops the whole
# harness with the log's tail: a failed step has no time.
measure() {
    local row=$1 label=$2 t0 t1
    shift 2
    echo "+ $*" >>"$LOG"
    t0=$EPOCHREALTIME
    "$@" >>"$LOG" 2>&1 || fail "$@"
    t1=$EPOCHREALTIME
    record "$row" "$label" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
}
quiet() {
    echo "+ $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || fail "$@"
}
# measure_bytes LABEL DIR: B3, the bytes under DIR.
measure_bytes() {
    local bytes
    bytes=$(du -sb "$2" | cut -f1)
    record B3 "$1" "$bytes"
}

# The committed blob must be the tool's pointer, or the tool did not engage.
expect_pointer() {
    local head
    head=$(git cat-file -p "HEAD:model.safetensors" 2>/dev/null | head -c 64 | head -n 1 || true)
    [[ $head == "$1"* ]] || die "$2 committed model.safetensors as '${head:0:40}…', not as a pointer ($1)"
}
fresh_repo() {
    cd "$WORK"
    rm -rf "$WORK/repo"
    mkdir "$WORK/repo"
    cd "$WORK/repo"
    quiet git init -q
}
put() { rm -f model.safetensors && cp "$1" model.safetensors; } # untimed; warms the cache

git_add_commit() { git add model.safetensors && git commit -qm "$1"; }
# `lode add` stages the pointer itself. (No `git diff --cached` check here:
# with diff.lode.textconv set, git would smudge the model to a temp file and
# run textconv on it, which costs more than the add.)
lode_add_commit() { lode add model.safetensors && git commit -qm "$1"; }
dvc_add_commit() {
    "${DVC[@]}" add -q model.safetensors && git add model.safetensors.dvc .gitignore && git commit -qm "$1"
}
lfs_checkout() { git checkout -- model.safetensors; }
fresh_copy() { rm -f "$2" && cp "$1" "$2"; }
fresh_copy_sync() { rm -f "$2" && cp "$1" "$2" && sync "$2"; }

run_lode() { # lode through git's filter: lode init, lode track, git add
    fresh_repo
    quiet lode init
    quiet lode track '*.safetensors'
    quiet git add -A
    quiet git commit -q --allow-empty -m setup
    put "$V1"
    measure B1 lode git_add_commit v1
    expect_pointer "version lode/1" "git add through lode's filter"
    put "$V2"
    measure B2 lode git_add_commit v2
    expect_pointer "version lode/1" "git add through lode's filter"
    measure_bytes lode .git/lode
    rm model.safetensors
    git show HEAD:model.safetensors >model.safetensors
    measure B4 lode lode checkout model.safetensors
    cmp -s model.safetensors "$V2" || die "lode checkout did not restore v2's bytes"
}

run_lode_add() { # lode add, then git commit
    fresh_repo
    quiet lode init
    quiet git add -A
    quiet git commit -q --allow-empty -m setup
    put "$V1"
    measure B1 lode-add lode_add_commit v1
    expect_pointer "version lode/1" "lode add"
    put "$V2"
    measure B2 lode-add lode_add_commit v2
    expect_pointer "version lode/1" "lode add"
    measure_bytes lode-add .git/lode
}

run_lfs() {
    fresh_repo
    quiet git lfs install --local
    quiet git lfs track '*.safetensors'
    quiet git add .gitattributes
    quiet git commit -qm setup
    put "$V1"
    measure B1 git-lfs git_add_commit v1
    expect_pointer "version https://git-lfs.github.com/spec/v1" "git-lfs"
    put "$V2"
    measure B2 git-lfs git_add_commit v2
    measure_bytes git-lfs .git/lfs
    rm model.safetensors
    measure B4 git-lfs lfs_checkout
    cmp -s model.safetensors "$V2" || die "git checkout (git-lfs smudge) did not restore v2's bytes"
}

run_dvc() {
    fresh_repo
    quiet "${DVC[@]}" init -q
    quiet git commit -qm setup
    put "$V1"
    measure B1 dvc dvc_add_commit v1
    put "$V2"
    measure B2 dvc dvc_add_commit v2
    measure_bytes dvc .dvc/cache
    rm model.safetensors
    measure B4 dvc "${DVC[@]}" checkout -q model.safetensors.dvc
    cmp -s model.safetensors "$V2" || die "dvc checkout did not restore v2's bytes"
}

run_cp() {
    fresh_repo
    measure B1 cp fresh_copy "$V1" copy
    measure B1 cp+fsync fresh_copy_sync "$V1" copy
    measure B2 cp fresh_copy "$V2" copy
    measure B4 cp fresh_copy "$V2" copy
}

run_sha() {
    measure B1 sha256sum sha256sum "$V1"
    measure B2 sha256sum sha256sum "$V2"
}

for ((r = 1; r <= RUNS; r++)); do
    for tool in ${TOOLS//,/ }; do
        say "run $r/$RUNS: $tool"
        case "$tool" in
            lode) run_lode ;;
            lode-add) run_lode_add ;;
            git-lfs) run_lfs ;;
            dvc) run_dvc ;;
            cp) run_cp ;;
            sha256sum) run_sha ;;
        esac
        cd "$WORK"
        rm -rf "$WORK/repo"
    done
done

# ---- B9 from criterion -------------------------------------------------------

B9_JSON=$TARGET/criterion/chunk/gear_cuts_blake3_1thread/new
if [[ ! -f $B9_JSON/estimates.json ]] && ((BUILD)); then
    say "no criterion result for B9 yet: running that one benchmark"
    (cd "$ROOT" && cargo bench --quiet --bench store -- --noplot chunk/gear_cuts_blake3_1thread) >>"$LOG" 2>&1 ||
        say "criterion run failed (see the log); B9 left out"
fi
B9=n/a
if [[ -f $B9_JSON/estimates.json ]]; then
    # Median time per iteration (ns) over the bytes per iteration: GB/s.
    B9=$("$PY" - "$B9_JSON" <<'EOF'
import json, sys, os
d = sys.argv[1]
ns = json.load(open(os.path.join(d, "estimates.json")))["median"]["point_estimate"]
b = json.load(open(os.path.join(d, "benchmark.json")))["throughput"]["Bytes"]
print(f"{b / ns:.3f}")
EOF
)
fi

# ---- report ------------------------------------------------------------------

median() {
    local s=${T["$1|$2"]:-}
    [[ -n ${s// /} ]] || { echo n/a; return; }
    tr ' ' '\n' <<<"$s" | grep -v '^$' | sort -g |
        awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
samples() { local s=${T["$1|$2"]:-}; s=${s# }; echo "${s:-n/a}"; }
ratio() { # a / b, or n/a
    if [[ $1 == n/a || $2 == n/a ]]; then echo n/a; else awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; fi
}
verdict() { # value, op, goal
    [[ $1 == n/a ]] && { echo "n/a"; return; }
    awk -v v="$1" -v g="$3" -v op="$2" 'BEGIN { ok = (op == "<=") ? v <= g : v >= g; print ok ? "met" : "**missed**" }'
}
gib() { awk -v b="$1" 'BEGIN { printf "%.3f GB", b / 1e9 }'; }

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)
fs=$(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')
ver() { "$@" 2>/dev/null | head -n 1 || echo "n/a"; }

echo "## lode vs peers: ${SIZE_MIB} MiB fp16 safetensors, medians of $RUNS runs"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- machine: $(nproc) cores, ${cpu:-unknown CPU}, $mem memory, kernel $(uname -r); work dir on $fs"
echo "- versions: $(ver git --version); $(wants lode || wants lode-add && ver lode --version || echo "lode n/a"); $(wants git-lfs && ver git lfs version || echo 'git-lfs n/a'); dvc $( ((${#DVC[@]})) && ver "${DVC[@]}" --version || echo n/a)"
echo "- page cache warm (each input was just copied); times are wall-clock seconds of add + commit"
echo "- one version is $ONE bytes; v2 changes every tenth tensor ($(grep -o "[0-9.]* % of the bytes" "$LOG.gen" || echo "see gen_model.py"))"
echo
echo "| row | measurement | median | samples |"
echo "|---|---|---|---|"
row() { # unmeasured rows (tools left out with --tools) are left out
    local m
    m=$(median "$1" "$2")
    [[ $m == n/a ]] || echo "| $1 | $3 | $m s | $(samples "$1" "$2") |"
}
row B1 lode "lode: git add + commit (filter)"
row B1 lode-add "lode add + git commit"
row B1 git-lfs "git-lfs: git add + commit"
row B1 dvc "dvc add + git commit"
row B1 cp "cp"
row B1 cp+fsync "cp + fsync"
row B1 sha256sum "sha256sum"
row B2 lode "lode: git add + commit v2 (filter)"
row B2 lode-add "lode add + git commit v2"
row B2 git-lfs "git-lfs: git add + commit v2"
row B2 dvc "dvc add + git commit v2"
row B2 cp "cp v2"
row B2 sha256sum "sha256sum v2"
for tool in lode lode-add git-lfs dvc; do
    m=$(median B3 "$tool")
    [[ $m == n/a ]] && continue
    echo "| B3 | $tool: bytes stored after v1 + v2 | $(gib "$m") ($(ratio "$m" "$ONE") x one version) | $(samples B3 "$tool") |"
done
row B4 lode "lode checkout (local store)"
row B4 git-lfs "git checkout (git-lfs smudge, local)"
row B4 dvc "dvc checkout (local cache)"
row B4 cp "cp"
echo "| B9 | chunk + hash, one core (criterion median, \`cargo bench --bench store\`) | $B9$([[ $B9 == n/a ]] || echo " GB/s") | |"
echo
echo "| target | ratio | goal | |"
echo "|---|---|---|---|"
target() { local r; r=$(ratio "$2" "$3"); echo "| $1 | $r | $4 $5 | $(verdict "$r" "$4" "$5") |"; }
for v in lode lode-add; do
    l=$(median B1 "$v")
    target "B1 $v / git-lfs" "$l" "$(median B1 git-lfs)" "<=" 0.333
    target "B1 $v / dvc" "$l" "$(median B1 dvc)" "<=" 0.5
    target "B1 $v / cp" "$l" "$(median B1 cp)" "<=" 1.3
    target "B2 $v / git-lfs" "$(median B2 "$v")" "$(median B2 git-lfs)" "<=" 0.167
    target "B3 $v stored / one version" "$(median B3 "$v")" "$ONE" "<=" 1.15
done
target "B4 lode checkout / cp" "$(median B4 lode)" "$(median B4 cp)" "<=" 1.3
echo "| B9 chunk + hash GB/s per core | $B9 | >= 1 | $(verdict "$B9" ">=" 1) |"
