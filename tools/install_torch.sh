#!/usr/bin/env bash
# Install PyTorch into the current Python before the project itself, so that pip never
# resolves `torch>=2.4` on its own to a multi-GB CUDA build where a CPU build is wanted.
#   1. torch already importable            -> nothing to do;
#   2. TORCH_INDEX_URL set                  -> take torch from that index
#      (e.g. https://download.pytorch.org/whl/cpu for a CPU-only machine with network);
#   3. a torch wheel on local disk (pip's find-links, e.g. an offline wheelhouse)
#                                           -> install it without touching any index;
#   4. otherwise                            -> the normal `pip install torch>=2.4`.
set -eo pipefail
PY=${1:-python3}
SPEC='torch>=2.4'
if "$PY" -c 'import torch' 2>/dev/null; then
    echo "install_torch: torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
    exit 0
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    exec "$PY" -m pip install "$SPEC" --index-url "$TORCH_INDEX_URL"
fi
if "$PY" -m pip install --no-index --no-deps "$SPEC" 2>/dev/null; then
    # torch's own requirements (sympy, filelock, ...) come from the index as usual
    version=$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')
    "$PY" -m pip install "torch==$version"
    echo "install_torch: installed torch $version from a local wheel"
    exit 0
fi
exec "$PY" -m pip install "$SPEC"
