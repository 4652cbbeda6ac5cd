#!/usr/bin/env bash
# Profiles one launch of a kernel of the CUDA benchmark with ncu on the GPU machine: the full section
# set (details page) and, where this ncu has the source page, per-SASS-instruction stall samples, for
# reading where a kernel waits (e.g. around the forward's tile boundary).
#   usage: bash scripts/gpu_profile.sh OUTDIR NAME KERNEL_REGEX D:N:causal [benchmark flags, e.g. --backward]
#   e.g.   bash scripts/gpu_profile.sh logs f64_1k_causal fwd_kernel 64:1024:1
#          bash scripts/gpu_profile.sh logs b128_4k bwd_kernel 128:4096:0 --backward
#   env:   BENCH (default build-gpu/tests/gpu/flashsigmoid_cuda_fwd_bench: build it first, e.g. with
#          STAGES="tests" bash scripts/gpu_check.sh logs).
# Writes OUTDIR/ncu_NAME.txt (details), OUTDIR/ncu_NAME_sass.csv.gz (source page, SASS with stall
# samples) and OUTDIR/ncu_NAME.ncu-rep.gz (the report, for the Nsight Compute GUI).
set -uo pipefail
if (( $# < 4 )); then
  echo "usage: bash scripts/gpu_profile.sh OUTDIR NAME KERNEL_REGEX D:N:causal [benchmark flags]" >&2
  exit 2
fi
LOG="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2
name=$2 regex=$3 shape=$4
shift 4
cd "$(dirname "$0")/.."
BENCH="${BENCH:-build-gpu/tests/gpu/flashsigmoid_cuda_fwd_bench}"
if [[ ! -x "$BENCH" ]]; then
  echo "no benchmark binary at $BENCH: build it first (STAGES=tests bash scripts/gpu_check.sh OUTDIR)" >&2
  exit 2
fi
rep="$LOG/ncu_$name"
# Clocks left as the card sets them (--clock-control none), as the benchmarks run; 3 warm-up launches.
timeout 120 ncu --clock-control none --set full --import-source yes -k "regex:$regex" --launch-skip 3 \
  --launch-count 1 -f -o "$rep" "$BENCH" "$@" --reps 3 --shape "$shape" > "$LOG/ncu_${name}_run.txt" 2>&1
rc=$?
if [[ ! -f "$rep.ncu-rep" ]]; then
  echo "ncu wrote no report (rc $rc); its output:" >&2
  tail -20 "$LOG/ncu_${name}_run.txt" >&2
  exit 1
fi
ncu -i "$rep.ncu-rep" --page details > "$LOG/ncu_$name.txt" 2>&1
if ncu -i "$rep.ncu-rep" --page source --print-source sass --csv 2>/dev/null | gzip > "$LOG/ncu_${name}_sass.csv.gz"; then
  echo "ncu $name: details and SASS source page written"
else
  rm -f "$LOG/ncu_${name}_sass.csv.gz"
  echo "ncu $name: details written; this ncu has no SASS source page"
fi
gzip -f "$rep.ncu-rep"
rm -f "$LOG/ncu_${name}_run.txt"
