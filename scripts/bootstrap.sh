# Shared set-up for scripts/demo and scripts/test: uv, the locked environment, nothing else.
# Sourced, not run. Works on a fresh machine with Python 3.11+ and the package registries.
set -euo pipefail
export UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check uv || python3 -m pip install --quiet --user uv
    export PATH="$HOME/.local/bin:$PATH"
fi
# Byte-compile once: eight service processes and many test subprocesses import the same modules.
unset PYTHONDONTWRITEBYTECODE
uv sync --frozen --quiet --compile-bytecode
