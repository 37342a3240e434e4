#!/bin/sh
# build-wheel.sh SOURCE_DIR OUT_DIR [PYTHON]: the edge-qc wheel, built on the controller.
# Builds from a scratch copy so nothing is written into the source tree, offline (no build isolation:
# setuptools comes from PYTHON), with fixed timestamps so the same sources give the same bytes and a
# re-run of site.yml pushes nothing. Prints the wheel's path.
set -eu
src=$1
out=$2
python=${3:-python3}
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp -R "$src/edge" "$src/pyproject.toml" "$src/README.md" "$scratch/"
find "$scratch" -name __pycache__ -prune -exec rm -rf {} +
mkdir -p "$out"
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$scratch/dist" "$scratch" >&2
wheel=$(ls "$scratch"/dist/edge_qc-*.whl)
cp "$wheel" "$out/"
echo "$out/$(basename "$wheel")"
