#!/usr/bin/env bash
# Do two revisions of phys-bids write byte-identical outputs? (a refactor must)
#
#   bash bench/compare_revisions.sh REV_A REV_B [WORK]
#
# Each revision is checked out into a git worktree and run, from the current venv, on
# the same demo dataset (2 subjects x 3 sites, 2 mm, with the session qMRI images),
# participant level (--mc-samples 2, --seed 0, --device cpu, one thread) then group
# level, into the same output path; the sha256 of every output file except the logs is
# compared. Exit 0 when identical. About 10 minutes per revision on one core.
set -euo pipefail
a=$1; b=$2; work=${3:-/tmp/phys-bids-compare}
root=$(git rev-parse --show-toplevel)
rm -rf "$work"; mkdir -p "$work"
for rev in "$a" "$b"; do
  tree="$work/tree-$rev"
  git -C "$root" worktree add --detach -f "$tree" "$rev" >/dev/null
  base="$work/run"   # the same path for both: absolute paths appear in some outputs
  rm -rf "$base"; mkdir -p "$base"
  PYTHONPATH="$tree" python -m phys_bids.demo "$base/bids" --subjects 2 --voxel 2.0 --qmri >/dev/null
  PYTHONPATH="$tree" python -m phys_bids.cli "$base/bids" "$base/out" participant -w "$base/work" \
      --omp-nthreads 1 --nprocs 1 --mc-samples 2 --seed 0 --device cpu 2>"$work/$rev.log"
  PYTHONPATH="$tree" python -m phys_bids.cli "$base/bids" "$base/out" group 2>>"$work/$rev.log"
  (cd "$base/out" && find . -type f ! -path './logs/*' -print0 | sort -z | xargs -0 sha256sum) \
      > "$work/$rev.sha256"
  git -C "$root" worktree remove --force "$tree"
done
if diff "$work/$a.sha256" "$work/$b.sha256" >"$work/diff.txt"; then
  echo "identical: $(wc -l < "$work/$a.sha256") output files"
else
  echo "different: see $work/diff.txt"; exit 1
fi
