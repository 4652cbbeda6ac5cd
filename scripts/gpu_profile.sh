#!/usr/bin/env bash
# Profiles one launch of a kernel of the CUDA benchmark with ncu on the GPU machine: the full section
# set (details page) and, where this ncu has the source page, per-SASS-instruction stall samples, for
# reading where a kernel waits (e.g. around the forward's tile boundary).
#   usage: bash scripts/gpu_profile.sh NAME KERNEL_REGEX D:N:causal [benchmark flags, e.g. --backward]
#   e.g.   bash scripts/gpu_profile.sh f64_1k_causal fwd_kernel 64:1024:1
#          bash scripts/gpu_profile.sh b128_4k bwd_kernel 128:4096:0 --backward
#   env:   BENCH (default build-gpu/tests/gpu/flashsigmoid_cuda_fwd_bench: build it first, e.g. with
#          STAGES="tests" bash scripts/gpu_check.sh), OUT (default ./gpu_check_logs).
# Writes $OUT/ncu_NAME.txt (details), $OUT/ncu_NAME_sass.csv.gz (source page, SASS with stall samples)
# and $OUT/ncu_NAME.ncu-rep.gz (the report, for the Nsight Compute GUI).
set -uo pipefail
cd "$(dirname "$0")/.."
if (( $# < 3 )); then
  echo "usage: bash scripts/gpu_profile.sh NAME KERNEL_REGEX D:N:causal [benchmark flags]" >&2
  exit 2
fi
name=$1 regex=$2 shape=$3
shift 3
LOG="${OUT:-$PWD/gpu_check_logs}"
BENCH="${BENCH:-build-gpu/tests/gpu/flashsigmoid_cuda_fwd_bench}"
mkdir -p "$LOG"
if [[ ! -x "$BENCH" ]]; then
  echo "no benchmark binary at $BENCH: build it first (STAGES=tests bash scripts/gpu_check.sh)" >&2
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
