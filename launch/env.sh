# Sourced by the launch scripts and scripts/run.sh: the Python environment to run from, and where
# DeepSpeed keeps the C++ op it builds (about 40 s, once per environment).
#   PYTHON      the interpreter to use; otherwise the active virtualenv's, else this checkout's
#               ${VENV:-.venv}, else python3 on PATH
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        PYTHON="$VIRTUAL_ENV/bin/python"
    elif venv="${VENV:-.venv}" && case "$venv" in /*) ;; *) venv="$root/$venv";; esac && [ -x "$venv/bin/python" ]; then
        PYTHON="$venv/bin/python"
    else
        PYTHON=python3
    fi
fi
env_dir="$("$PYTHON" -c 'import sys; print(sys.prefix)')"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$env_dir/torch_extensions}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # several processes share the CPU cores
