#!/usr/bin/env bash
# The NaN canary's speed: `lode gate run` with only the built-in `nan` gate on
# a generated fp16 checkpoint, against reading the same file with `cat`
# (the disk, or the page cache when warm) and `sha256sum`. Medians of R runs,
# printed as a markdown table.
#
#   bash benches/nan.sh [--size-mib N] [--runs R] [--no-build]
#
# The file is written just before, so reads come from the page cache: the
# comparison is against cat's speed on the same (warm) bytes. The gate run
# includes lode's start, reading the commit's gates file and pointers, the
# note and the audit entry.
set -euo pipefail

SIZE_MIB=1024
RUNS=5
BUILD=1
while (($#)); do
    case "$1" in
        --size-mib) SIZE_MIB=${2:?}; shift 2 ;;
        --runs) RUNS=${2:?}; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "nan.sh: unknown argument '$1'" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
((BUILD)) && (cd "$ROOT" && cargo build --release -q)
export PATH="$ROOT/target/release:$PATH"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lode-nan.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export HOME="$WORK/home" GIT_CONFIG_NOSYSTEM=1
mkdir -p "$HOME"
git config --global user.name bench && git config --global user.email bench@lode.invalid
git config --global init.defaultBranch main

cd "$WORK" && mkdir repo && cd repo
lode init -q && lode track -q '*.safetensors'
mkdir -p .lode
printf '[[gate]]\nname = "no-nans"\npaths = ["*.safetensors"]\ncheck = "nan"\n' > .lode/gates.toml
python3 "$ROOT/benches/gen_model.py" --size-mib "$SIZE_MIB" --out model.safetensors 2>/dev/null
lode add -q model.safetensors && git add .lode && git commit -qm model

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A T
for ((r = 1; r <= RUNS; r++)); do
    t0=$(now); cat model.safetensors > /dev/null; t1=$(now)
    T[cat]+="$(echo "$t1 - $t0" | bc) "
    t0=$(now); sha256sum model.safetensors > /dev/null; t1=$(now)
    T[sha]+="$(echo "$t1 - $t0" | bc) "
    # A fresh gate each run (a new name), so nothing is reused.
    sed -i "s/^name = .*/name = \"no-nans-$r\"/" .lode/gates.toml && git commit -qam "run $r"
    t0=$(now); lode gate run -q > /dev/null 2>&1; t1=$(now)
    T[nan]+="$(echo "$t1 - $t0" | bc) "
done
mib=$(stat -c %s model.safetensors | awk '{print $1 / 1048576}')
row() { local m; m=$(tr ' ' '\n' <<< "${T[$1]}" | grep . | median); printf '| %s | %.3f s | %.0f MiB/s |\n' "$2" "$m" "$(echo "$mib / $m" | bc -l)"; }
echo "| $(nproc) cores, $SIZE_MIB MiB fp16, median of $RUNS | time | throughput |"
echo "|---|---|---|"
row cat "cat (warm page cache)"
row sha "sha256sum"
row nan "lode gate run (nan check)"
