#!/usr/bin/env bash
# Build the phys-bids Docker image on a machine with no container registry, then run
# it on the demo dataset with no network and check the outputs.
#
#   bash docker/build-local.sh [--no-run | --no-build]
#
# Needs: a running Docker daemon (Debian: apt-get install docker.io; dockerd &),
# debootstrap (Debian package) and PyPI access for the build. Steps:
#  1. base image: `debootstrap --variant=minbase bookworm` with python3 + venv,
#     `docker import`ed as phys-bids-base:bookworm (skipped when present);
#  2. the repository's Dockerfile, unchanged, with BASE_IMAGE=phys-bids-base:bookworm
#     (torch from the local wheel when pip has one, else the PyTorch CPU index);
#  3. `docker run --network none` on the demo dataset: participant + group levels, as
#     the image's non-root user; checks the derivatives (docker/check-outputs.py).
#     PARTICIPANTS (default 01) and SESSIONS (default: all three sites) choose what the
#     participant level processes; .ci/run passes SESSIONS=siteA (one scan) for time.
# Timings go to stdout; the last result is recorded in docs/installation.md.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${BASE:-phys-bids-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
VERSION=$(python3 -c "import re;print(re.search(r'__version__ = \"(.+?)\"', open('phys_bids/__init__.py').read())[1])")
WORK=${WORK:-$(mktemp -d /tmp/phys-bids-docker.XXXXXX)}
chmod 755 "$WORK"  # the image's user (uid 1000) must reach the mounted folders inside
t0=$(date +%s)
say() { echo "[build-local $(( $(date +%s) - t0 )) s] $*"; }

docker info >/dev/null 2>&1 || { echo "no Docker daemon: start one (dockerd &) first" >&2; exit 2; }

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { echo "debootstrap not found (apt-get install debootstrap)" >&2; exit 2; }
  say "making base image $BASE with debootstrap"
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - "$BASE" >/dev/null
  rm -rf "$rootfs"
fi

if [ "${1:-}" != "--no-build" ]; then
# a local torch wheel (pip's find-links on this machine) saves a large download; a
# TLS-intercepting proxy's CA bundle (pip's cert setting here) lets the build's pip in
find docker/local -mindepth 1 ! -name .keep -delete
for d in ${PIP_FIND_LINKS:-} /opt/wheels; do
  for w in "$d"/torch-*+cpu-*.whl; do [ -f "$w" ] && cp "$w" docker/local/ && break 2; done
done
cert=${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}
[ -n "$cert" ] && [ -f "$cert" ] && cp "$cert" docker/local/ca.crt
say "docker build (base $BASE)"
torch_index=https://download.pytorch.org/whl/cpu
ls docker/local/torch-*.whl >/dev/null 2>&1 && torch_index=""  # the local wheel, no index
docker build --network host \
  --build-arg BASE_IMAGE="$BASE" --build-arg TORCH_INDEX="$torch_index" \
  --build-arg VERSION="$VERSION" \
  --build-arg VCS_REF="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --build-arg BUILD_DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  -t "phys-bids:$VERSION" -t phys-bids:latest . | tee "$WORK/build.log" | grep -E '^Step|^Successfully|registration template|torch ' || true
docker image inspect phys-bids:latest >/dev/null
find docker/local -mindepth 1 ! -name .keep -delete
say "image built: $(docker image inspect -f '{{.Size}}' phys-bids:latest | awk '{printf "%.2f GB", $1/1e9}')"
fi
[ "${1:-}" = "--no-run" ] && exit 0

say "thread defaults follow the container's CPU quota (docker run --cpus 1)"
n=$(docker run --rm --network none --cpus 1 --entrypoint python phys-bids:latest \
  -c "from phys_bids.cli import available_cpus; print(available_cpus())")
[ "$n" = 1 ] || { echo "FAIL: $n CPUs seen under --cpus 1" >&2; exit 1; }
say "demo dataset"
# the image runs as its own user (uid 1000): give it folders it can write
mkdir -p "$WORK/demo" "$WORK/out" "$WORK/scratch"
chmod 777 "$WORK/demo" "$WORK/out" "$WORK/scratch"
docker run --rm --network none -v "$WORK":/w --entrypoint python phys-bids:latest \
  -m phys_bids.demo /w/demo >/dev/null
t1=$(date +%s)
say "participant level (docker run --network none, non-root)"
docker run --rm --network none -v "$WORK/demo":/data:ro -v "$WORK/out":/out \
  -v "$WORK/scratch":/scratch phys-bids:latest /data /out participant \
  --participant-label ${PARTICIPANTS:-01} ${SESSIONS:+--session-label $SESSIONS} \
  -w /scratch --seed 0 2>&1 | tail -n 3
say "group level"
docker run --rm --network none -v "$WORK/demo":/data:ro -v "$WORK/out":/out \
  -v "$WORK/scratch":/scratch phys-bids:latest /data /out group -w /scratch 2>&1 | tail -n 2
say "participant + group levels took $(( $(date +%s) - t1 )) s"
python3 docker/check-outputs.py "$WORK/out" --container docker
say "done: outputs in $WORK/out"
