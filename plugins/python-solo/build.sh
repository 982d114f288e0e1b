#!/usr/bin/env bash
# Builds the Python solo plugin: app.py -> a WebAssembly component for the
# `consenter` world of ../../wit (fabric:consenter@0.2.1).
#
#   ./build.sh [OUT.wasm]        (default: build/pysolo.wasm)
#
# Needs componentize-py (pip install -r requirements.txt). Set PYTHON to
# choose the interpreter it is installed in (default python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/build/pysolo.wasm}"
case "$out" in /*) ;; *) out="$PWD/$out" ;; esac
py="${PYTHON:-python3}"

# componentize-py's entry point, run through the interpreter (no need for
# its console script to be on PATH, e.g. under pyenv before a rehash).
cpy() {
  "$py" -c 'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"
}

cd "$here"
mkdir -p build "$(dirname "$out")"
# Typed stubs of the world's imports and exports, for editors and type
# checkers only (componentize generates the real bindings itself; these
# must stay off its Python path).
rm -rf build/bindings
cpy -d ../../wit -w consenter bindings build/bindings
# The component: CPython, the app and its bindings, pre-initialized.
cpy -d ../../wit -w consenter componentize app -p . -o "$out"
echo "built $out ($(wc -c <"$out") bytes)"
