#!/usr/bin/env bash
# Run every lode test on a fresh machine: installs what the tests need
# (git, Python with numpy and safetensors, the Garage S3-compatible server
# the remote tests start on loopback), then runs the whole workspace's
# tests. Usage: bash tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v python3 >/dev/null || need_apt+=(python3 python3-pip)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "tests/run.sh: installing ${need_apt[*]}" >&2
  apt-get update -qq && apt-get install -y -qq "${need_apt[@]}"
fi
if ! python3 -c 'import numpy, safetensors' 2>/dev/null; then
  echo "tests/run.sh: installing numpy and safetensors for Python" >&2
  python3 -m pip install -q numpy safetensors 2>/dev/null \
    || python3 -m pip install -q --break-system-packages numpy safetensors
fi

# Garage: a real self-hosted S3-compatible store. The tests start their own
# single-node servers on free loopback ports and stop them afterwards.
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$cargo_bin:$PATH"
if ! command -v garage >/dev/null; then
  echo "tests/run.sh: installing garage 2.5.0 (S3-compatible server for the tests; about 10 minutes, once)" >&2
  cargo install garage --locked --version 2.5.0
fi

export RUST_BACKTRACE=1
cargo test --workspace "$@"
