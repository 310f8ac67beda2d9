#!/usr/bin/env bash
# The type checker over the product packages. The repository maps its top-level folders under one import package
# (pyproject's package-dir: api/ is kascade.api, ...), which mypy cannot read from an editable install; so this
# lays the same mapping out as symlinks under build/typecheck/ and checks the package `kascade` there.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/kascade
rm -rf "$tree" && mkdir -p "$tree"
for entry in kascade/*; do
  case "$(basename "$entry")" in __pycache__) continue ;; esac
  ln -s "../../../$entry" "$tree/"
done
for folder in api calibration runtime operator evaluation distillation; do
  ln -s "../../../$folder" "$tree/$folder"
done
cd build/typecheck
exec python -m mypy --config-file ../../pyproject.toml -p kascade "$@"
