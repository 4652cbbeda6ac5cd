#!/usr/bin/env bash
# Installs the CUTLASS / CuTe headers from the nvidia-cutlass package (Python package
# registry) into .deps/cutlass/include, a git-ignored folder that CMake finds.
# The package carries them under cutlass_library/source/include/{cute,cutlass}.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="${CUTLASS_PIP_VERSION:-4.2.0.0}"
dest="$root/.deps/cutlass"
if [[ -f "$dest/include/cute/tensor.hpp" && -f "$dest/include/cutlass/cutlass.h" && -f "$dest/VERSION" &&
      "$(cat "$dest/VERSION")" == "$version" ]]; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "nvidia-cutlass==$version"
python3 - "$tmp" "$dest" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("nvidia_cutlass-*.whl"))
prefix = "cutlass_library/source/include/"
shutil.rmtree(dest, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
    for n in names:
        out = dest / "include" / n[len(prefix):]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(z.read(n))
for must in ("cute/tensor.hpp", "cutlass/cutlass.h"):
    if not (dest / "include" / must).is_file():
        sys.exit(f"nvidia-cutlass wheel {wheel.name} does not carry include/{must}")
PY
echo "$version" > "$dest/VERSION"
echo "CUTLASS headers ($version) installed in $dest/include"
