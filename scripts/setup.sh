#!/usr/bin/env bash
# Installs what building and testing flashsigmoid needs, skipping whatever is already there
# (safe to run again). Meant for a fresh Debian/Ubuntu machine as root (or with sudo):
#   apt: cmake ninja-build g++ libgtest-dev libbenchmark-dev (+ python3-dev python3-pip if missing),
#        fortunes jargon-text (English text for the parity study, studies/parity)
#   pip: numpy pytest nanobind scikit-build-core ninja matplotlib scikit-learn, and torch when it
#        cannot be imported
#   CUTLASS/CuTe headers (scripts/fetch_cutlass.sh) when nvcc exists.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export DEBIAN_FRONTEND=noninteractive
log() { echo "[setup] $*"; }

# ---- system packages -----------------------------------------------------------------
missing=()
for pkg in cmake ninja-build g++ libgtest-dev libbenchmark-dev fortunes jargon-text; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ! command -v python3 >/dev/null 2>&1; then
  missing+=(python3 python3-dev python3-pip)
else
  python3 -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' \
    || missing+=(python3-dev)
  python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
fi
if ((${#missing[@]})); then
  sudo=()
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || { echo "[setup] need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo -n)
  fi
  log "apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -q
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "system packages present"
fi

# ---- Python packages -----------------------------------------------------------------
pip_flags=(--quiet)
# Debian's system Python refuses pip installs (PEP 668) unless told otherwise.
if [[ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]]; then
  pip_flags+=(--break-system-packages)
fi
# One interpreter start to see which modules are missing (module name -> pip name).
read -r -a need <<<"$(python3 - <<'PY'
import importlib.util
mods = {"numpy": "numpy", "pytest": "pytest", "nanobind": "nanobind",
        "scikit_build_core": "scikit-build-core", "ninja": "ninja",
        "matplotlib": "matplotlib", "sklearn": "scikit-learn"}
print(" ".join(pip for mod, pip in mods.items() if importlib.util.find_spec(mod) is None))
PY
)"
if ((${#need[@]})); then
  log "pip install ${need[*]}"
  python3 -m pip install "${pip_flags[@]}" "${need[@]}"
else
  log "Python build/test packages present"
fi
# torch: the import itself is the test (a broken install counts as missing).
if torch_version="$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null)"; then
  log "torch present ($torch_version)"
else
  log "pip install torch (large download)"
  python3 -m pip install "${pip_flags[@]}" torch
fi

# ---- CUTLASS / CuTe headers for the CUDA backend ---------------------------------------
if [[ -x /usr/local/cuda/bin/nvcc && ":$PATH:" != *":/usr/local/cuda/bin:"* ]]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi
if command -v nvcc >/dev/null 2>&1 && [[ "${FLASHSIGMOID_CUDA:-AUTO}" != "OFF" ]]; then
  bash "$root/scripts/fetch_cutlass.sh"
  log "CUTLASS headers in $root/.deps/cutlass"
fi
log "done"
