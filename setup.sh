#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv holding exactly constraints/cpu.lock (the CPU
# builds of PyTorch and TensorFlow, Prefect, DVC, the dev tools: every package at one version, with
# its hashes), installed by uv, and the project itself (editable). GPU machines: RNN_GPU=1 ./setup.sh
# (constraints/gpu.lock: CUDA builds). ./setup.sh --lock first recompiles both locks from
# pyproject.toml and constraints/*.txt (constraints/lock.py), then installs.
set -euo pipefail
cd "$(dirname "$0")"

refresh=0
case "${1:-}" in
  "") ;;
  --lock) refresh=1 ;;
  *) echo "usage: ./setup.sh [--lock]" >&2; exit 2 ;;
esac

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
if ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "the locks are for CPython 3.11 (constraints/lock.py): PYTHON=python3.11 ./setup.sh" >&2
  exit 1
fi

if [ "${RNN_GPU:-0}" = 1 ]; then
  kind=gpu; sources=()
else
  # torch 2.13.0+cpu: from a local wheel directory when there is one, else PyTorch's CPU index
  # (the lock's hashes decide which file is accepted either way).
  kind=cpu; wheels=${RNN_WHEELS:-/opt/wheels}
  if [ -d "$wheels" ]; then
    sources=(--find-links "$wheels")
  else
    sources=(--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match)
  fi
fi
lock=constraints/$kind.lock

# uv itself, at the lock's version and hashes, through the venv's pip. Some machines' pip configs
# point at local mirrors that print one warning per package; hide those.
uv_requirement=$(mktemp)
trap 'rm -f "$uv_requirement"' EXIT
.venv/bin/python constraints/lock.py --lock "$kind" --requirement uv >"$uv_requirement"
.venv/bin/python -m pip install -q --require-hashes --no-deps -r "$uv_requirement" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
[ "${PIPESTATUS[0]}" = 0 ]

if [ "$refresh" = 1 ]; then
  .venv/bin/python constraints/lock.py
fi
.venv/bin/python constraints/lock.py --check --lock "$kind"  # stale: stop, and say how to refresh

# Exactly the lock: sync adds, upgrades and removes until the venv holds its packages and no others
# (pip and setuptools, the venv's seed, stay), then the project with no dependencies of its own.
.venv/bin/uv pip sync -q --python .venv/bin/python --require-hashes "${sources[@]}" "$lock"
.venv/bin/uv pip install -q --python .venv/bin/python --no-deps --no-build-isolation -e .
echo "$lock" >.venv/rnn-lock

# The book's text (data/raw/timemachine.txt, tracked by DVC): from the DVC remote, else from a
# local copy beside the checkout (offline machines), else from its URL; each checked against the
# hash DVC recorded.
shared=${RNN_SHARED:-../shared}
from=()
[ -f "$shared/corpora/timemachine.txt" ] && from=(--from-file "$shared/corpora/timemachine.txt")
if ! .venv/bin/rnn fetch "${from[@]}" >/dev/null; then
  echo "warning: the corpus is not here yet; run \`.venv/bin/rnn fetch\` once the DVC remote or the network is reachable" >&2
fi
echo "ready: source .venv/bin/activate (or call .venv/bin/rnn, .venv/bin/pytest)"
