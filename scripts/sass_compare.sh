#!/usr/bin/env bash
# Compares the SASS of every CUDA kernel of two builds, to show that a refactor is a pure move.
#   usage: bash scripts/sass_compare.sh BEFORE AFTER OUTDIR
#   BEFORE / AFTER: a configured build directory holding the library's CUDA objects, or a git revision
#   (built here in a temporary worktree: archs $SASS_ARCHS, default "80;90a"; head dims $SASS_HEAD_DIMS,
#   default "64;128"; only the library target). Needs cuobjdump (PATH, $CUDA_HOME/bin, or $CUOBJDUMP; the
#   nvidia-cuda-cuobjdump package on PyPI carries one).
# Each kernel's SASS (per architecture, machine code included, addresses and padding stripped) goes to
# OUTDIR/{before,after}/; OUTDIR/summary.md lists the kernels that are identical, changed, only in one
# build, or renamed with an identical body. Exit status 0 when every kernel is identical (renames
# included), 1 otherwise.
set -euo pipefail
if (( $# != 3 )); then
  echo "usage: bash scripts/sass_compare.sh BEFORE AFTER OUTDIR (each a build directory or a git revision)" >&2
  exit 2
fi
out="$(mkdir -p "$3" && cd "$3" && pwd)"
root="$(cd "$(dirname "$0")/.." && pwd)"
cuobjdump="${CUOBJDUMP:-$(command -v cuobjdump || echo "${CUDA_HOME:-/usr/local/cuda}/bin/cuobjdump")}"
[[ -x "$cuobjdump" ]] || { echo "no cuobjdump (PATH, \$CUDA_HOME/bin or \$CUOBJDUMP)" >&2; exit 2; }

# Prints a build directory for $1: $1 itself when it is one, else a fresh build of revision $1.
build_of() {
  if [[ -f "$1/CMakeCache.txt" ]]; then
    (cd "$1" && pwd)
    return
  fi
  local rev dir
  rev="$(git -C "$root" rev-parse --verify "$1^{commit}")" || { echo "'$1' is neither a build directory nor a revision" >&2; exit 2; }
  dir="$out/tree-${rev:0:12}"
  [[ -d "$dir" ]] || git -C "$root" worktree add --detach "$dir" "$rev" >&2
  echo "$dir" >> "$out/.worktrees"  # removed at exit (the SASS dumps stay)
  [[ -e "$dir/.deps" || ! -e "$root/.deps" ]] || ln -s "$(cd "$root/.deps" && pwd -P)" "$dir/.deps"
  cmake -S "$dir" -B "$dir/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DFLASHSIGMOID_CUDA=ON \
    -DFLASHSIGMOID_CUDA_ARCHS="${SASS_ARCHS:-80;90a}" -DFLASHSIGMOID_HEAD_DIMS="${SASS_HEAD_DIMS:-64;128}" \
    -DFLASHSIGMOID_BUILD_TESTS=OFF -DFLASHSIGMOID_BUILD_CLI=OFF -DFLASHSIGMOID_BUILD_BENCH=OFF >&2
  cmake --build "$dir/build" --target flashsigmoid >&2
  echo "$dir/build"
}

cleanup() {
  [[ -f "$out/.worktrees" ]] || return 0
  sort -u "$out/.worktrees" | while read -r tree; do git -C "$root" worktree remove --force "$tree" >&2 || true; done
  rm -f "$out/.worktrees"
}
trap cleanup EXIT
before="$(build_of "$1")"
after="$(build_of "$2")"
for side in before after; do
  dir="${!side}"
  rm -rf "${out:?}/$side" && mkdir -p "$out/$side"
  objs="$(find "$dir/CMakeFiles" -name '*.cu.o' | sort)"
  for obj in $objs; do
    "$cuobjdump" -sass "$obj" 2>/dev/null || true  # host-only objects have no device code
  done > "$out/$side.sass.txt"
  for obj in $objs; do
    "$cuobjdump" -res-usage "$obj" 2>/dev/null || true
  done > "$out/$side.res.txt"
done

python3 - "$out" "$before" "$after" <<'EOF'
import hashlib, re, subprocess, sys
from pathlib import Path

out, before_dir, after_dir = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

def kernels(text):
    """{(arch, function): SASS with the /*address*/ column stripped} from cuobjdump -sass output."""
    found, arch, name, body = {}, None, None, []
    def flush():
        if name is not None:
            found.setdefault((arch, name), set()).add("\n".join(body).strip())
    for line in text.splitlines():
        m = re.match(r"\s*code for (sm_\w+)", line)
        f = re.match(r"\s*Function : (\S+)", line)
        if m or f or line.startswith("Fatbin"):
            flush()
            name, body = None, []
            if m: arch = m.group(1)
            if f: name = f.group(1)
            continue
        if name is not None:
            # No address column; runs of blanks as one (cuobjdump pads by the longest name).
            body.append(" ".join(re.sub(r"/\*[0-9a-f]{4,}\*/", "", line).split()))
    flush()
    return {k: "\n====\n".join(sorted(v)) for k, v in found.items()}

def resources(text):
    """{(arch, function): "REG:n STACK:n LOCAL:n"} from cuobjdump -res-usage output."""
    found, arch, name = {}, None, None
    for line in text.splitlines():
        m = re.match(r"arch = (sm_\w+)", line)
        f = re.match(r"\s*Function (\S+):", line)
        if m: arch = m.group(1)
        elif f: name = f.group(1)
        elif name and "REG:" in line:
            fields = dict(kv.split(":", 1) for kv in line.split() if ":" in kv)
            found[(arch, name)] = " ".join(f"{k}:{fields.get(k, '?')}" for k in ("REG", "STACK", "LOCAL"))
            name = None
    return found

def demangle(names):
    try:
        r = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
        return dict(zip(names, r.stdout.splitlines()))
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}

sides = {s: kernels((out / f"{s}.sass.txt").read_text()) for s in ("before", "after")}
res = {s: resources((out / f"{s}.res.txt").read_text()) for s in ("before", "after")}
for s, ks in sides.items():
    for (arch, name), body in ks.items():
        h = hashlib.sha1(name.encode()).hexdigest()[:12]
        (out / s / f"{arch}_{h}.sass").write_text(f"// {name}\n{body}\n")

b, a = sides["before"], sides["after"]
same = sorted(k for k in b.keys() & a.keys() if b[k] == a[k])
changed = sorted(k for k in b.keys() & a.keys() if b[k] != a[k])
gone = sorted(b.keys() - a.keys())
new = sorted(a.keys() - b.keys())
# A kernel that only changed its name (or several merged into one) keeps its SASS body.
by_body = {}
for k in new:
    by_body.setdefault((k[0], a[k]), []).append(k)
renamed, only_before, matched = [], [], set()
for k in gone:
    match = by_body.get((k[0], b[k]))
    if match:
        renamed.append((k, match[0]))
        matched.update(match)
    else:
        only_before.append(k)
only_after = sorted(k for k in new if k not in matched)

names = demangle(sorted({k[1] for s in sides.values() for k in s}))
def usage(side, k):
    return res[side].get(k, "?")
lines = [f"# SASS comparison", "", f"before: `{before_dir}`  ", f"after: `{after_dir}`", "",
         f"- identical: {len(same)}", f"- renamed, identical SASS: {len(renamed)}",
         f"- changed: {len(changed)}", f"- only before: {len(only_before)}", f"- only after: {len(only_after)}", ""]
def section(title, items, fmt):
    if items:
        lines.extend([f"## {title}", ""] + [f"- {fmt(i)}" for i in items] + [""])
section("Renamed, identical SASS", renamed, lambda r: f"{r[0][0]} `{names[r[0][1]]}` -> `{names[r[1][1]]}`")
section("Changed (resources before -> after)", changed,
        lambda k: f"{k[0]} `{names[k[1]]}`: {usage('before', k)} -> {usage('after', k)}")
section("Only before", only_before, lambda k: f"{k[0]} `{names[k[1]]}` ({usage('before', k)})")
section("Only after", only_after, lambda k: f"{k[0]} `{names[k[1]]}` ({usage('after', k)})")
section("Identical", same, lambda k: f"{k[0]} `{names[k[1]]}`")
(out / "summary.md").write_text("\n".join(lines))
print("\n".join(lines))
sys.exit(0 if not (changed or only_before or only_after) else 1)
EOF
