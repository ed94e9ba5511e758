# Shared set-up for scripts/demo and scripts/test: uv, the locked environment, nothing else.
# Sourced, not run. Works on a fresh machine with Python 3.11+ and the package registries.
# Nothing is installed system-wide: the project's packages go to .venv/, and uv itself, when it
# is missing, to .tools/uv/ (a private virtual environment) — unless CCMSEC_INSTALL_TOOLS=1
# (CI), where pip installs it for the running Python.
set -euo pipefail
export UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v uv >/dev/null 2>&1 && [ -x "$ROOT/.tools/uv/bin/uv" ]; then
    export PATH="$ROOT/.tools/uv/bin:$PATH"
fi
if ! command -v uv >/dev/null 2>&1; then
    if [ "${CCMSEC_INSTALL_TOOLS:-0}" = 1 ]; then
        echo "CCMSEC_INSTALL_TOOLS=1: installing uv with pip" >&2
        python3 -m pip install --quiet --disable-pip-version-check uv
    else
        echo "uv not found: installing it into $ROOT/.tools/uv (a private virtual environment;" \
             "nothing system-wide)" >&2
        if ! python3 -m venv "$ROOT/.tools/uv" >/dev/null; then
            echo "cannot create a virtual environment with python3 -m venv (Debian/Ubuntu: install" \
                 "python3-venv), or install uv yourself: https://docs.astral.sh/uv/" >&2
            exit 1
        fi
        "$ROOT/.tools/uv/bin/python" -m pip install --quiet --disable-pip-version-check uv
        export PATH="$ROOT/.tools/uv/bin:$PATH"
    fi
fi
# Byte-compile once: eight service processes and many test subprocesses import the same modules.
unset PYTHONDONTWRITEBYTECODE
uv sync --frozen --quiet --compile-bytecode
