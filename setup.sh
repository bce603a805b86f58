#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with the CPU builds of PyTorch and TensorFlow,
# Prefect, DVC and the dev tools. GPU machines: RNN_GPU=1 ./setup.sh (CUDA builds, no CPU pins).
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv

if [ "${RNN_GPU:-0}" = 1 ]; then
  extras='.[torch,tf,orchestrate,dev]'; constraints=()
else
  extras='.[all-cpu]'; constraints=(-c constraints/cpu.txt)
fi
# Some machines' pip configs point at local mirrors that print one warning per package; hide those.
.venv/bin/python -m pip install -q "${constraints[@]}" -e "$extras" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
[ "${PIPESTATUS[0]}" = 0 ]

# Offline machines: seed the checksummed download cache from a local copy of the book's file.
shared=${RNN_SHARED:-../shared}
if [ -f "$shared/corpora/timemachine.txt" ]; then
  .venv/bin/rnn fetch --from-file "$shared/corpora/timemachine.txt" >/dev/null
fi
echo "ready: source .venv/bin/activate (or call .venv/bin/rnn, .venv/bin/pytest)"
