#!/usr/bin/env bash
# Builds the component images, components/Dockerfile.{cpu,cuda}, from the locked dependency
# sets (requirements/*.lock), named as the compiled pipeline names them.
#
#   scripts/build-images.sh [cpu] [cuda]          # both when none is named
#   BASE=debootstrap scripts/build-images.sh base # the debootstrap base only
#
# The defaults are what a user with a registry and PyPI wants: the Dockerfiles' public
# bases and PyPI. Machines that reach neither (no container registry, local package
# indexes) set BASE=debootstrap and WHEELHOUSE; nothing of such a machine becomes a default.
#
# Environment:
#   DPSYNTH_IMAGE_REGISTRY, DPSYNTH_IMAGE_TAG
#              the images' names: $REGISTRY/dpsynth:$TAG-{cpu,cuda} (ghcr.io/dpsynth, 0.1.0
#              by default, as src/dpsynth_kfp/components.py names them)
#   BUILDER    docker or buildah (default: docker if on PATH, else buildah). buildah builds
#              with --isolation chroot: no daemon and no user namespaces needed.
#   BASE       public (default): the Dockerfiles' BASE_IMAGE defaults. debootstrap: a Debian
#              bookworm base with python3.11 made here by debootstrap from Debian's mirror
#              ($DEBIAN_MIRROR), imported once as $DEBOOTSTRAP_IMAGE (REBASE=1 remakes it);
#              it serves both images (and the CUDA image's Fashion-MNIST stage).
#   WHEELHOUSE a folder: the locked files are first downloaded into it by this machine's own
#              pip (its pip.conf and indexes; hash-checked), then the build installs from it
#              alone (PIP_NO_INDEX=1), mounted read-only (buildah only: docker build has no
#              build-time mounts). Unset: PIP_INDEX_URL / PIP_EXTRA_INDEX_URL are passed on
#              when set, else the image's pip uses PyPI.
#   RESULTS    the JSON file the build times and image sizes are merged into
#              (default benchmarks/results/images.json; empty: none): "build.<family>"
#              for a full build, "rebuild.<family>" when the dependency layer was cached
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${DPSYNTH_IMAGE_REGISTRY:-ghcr.io/dpsynth}
REGISTRY=${REGISTRY%/}
TAG=${DPSYNTH_IMAGE_TAG:-0.1.0}
BASE=${BASE:-public}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBOOTSTRAP_IMAGE=${DEBOOTSTRAP_IMAGE:-localhost/dpsynth-base:bookworm}
RESULTS=${RESULTS-benchmarks/results/images.json}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
if [ -z "${BUILDER:-}" ]; then
  if command -v docker >/dev/null; then BUILDER=docker; else BUILDER=buildah; fi
fi
families=("$@")
[ ${#families[@]} -gt 0 ] || families=(cpu cuda)

record() {  # <dotted.key> <json value>: merged into $RESULTS
  [ -n "$RESULTS" ] || return 0
  "$PY" - "$RESULTS" "$1" "$2" <<'PY'
import json, sys
from pathlib import Path
path, key, value = Path(sys.argv[1]), sys.argv[2].split("."), json.loads(sys.argv[3])
doc = json.loads(path.read_text()) if path.exists() else {}
node = doc
for k in key[:-1]:
    node = node.setdefault(k, {})
node[key[-1]] = value
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
PY
}

image_bytes() {  # <image>
  if [ "$BUILDER" = docker ]; then
    docker image inspect -f '{{.Size}}' "$1"
  else
    # The layers' uncompressed tar sizes (buildah images prints a rounded "176 MB").
    buildah inspect --type image "$1" | "$PY" -c \
      'import json, sys; m = json.loads(json.load(sys.stdin)["Manifest"]); print(sum(layer["size"] for layer in m["layers"]))'
  fi
}

image_exists() {
  if [ "$BUILDER" = docker ]; then docker image inspect "$1" >/dev/null 2>&1
  else buildah inspect --type image "$1" >/dev/null 2>&1; fi
}

make_debootstrap_base() {
  if image_exists "$DEBOOTSTRAP_IMAGE" && [ -z "${REBASE:-}" ]; then
    echo ">> base: $DEBOOTSTRAP_IMAGE (exists)"
    return
  fi
  echo ">> base: debootstrap Debian bookworm from $DEBIAN_MIRROR -> $DEBOOTSTRAP_IMAGE"
  local root start
  start=$(date +%s)
  root=$(mktemp -d /var/tmp/dpsynth-rootfs.XXXXXX)
  # minbase plus what both Dockerfiles need from a base: Python 3.11 with venv/ensurepip
  # (python3-distutils spelled out: debootstrap does not follow the virtual package that
  # python3.11-venv depends on) and CA certificates for pip over HTTPS.
  debootstrap --variant=minbase \
    --include=python3.11,python3-venv,python3-distutils,ca-certificates \
    bookworm "$root" "$DEBIAN_MIRROR"
  # As Debian's own images: updates and security alongside main, no package caches.
  cat > "$root/etc/apt/sources.list" <<SOURCES
deb $DEBIAN_MIRROR bookworm main
deb $DEBIAN_MIRROR bookworm-updates main
deb ${DEBIAN_MIRROR%/debian}/debian-security bookworm-security main
SOURCES
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  if [ "$BUILDER" = docker ]; then
    tar -C "$root" -c . | docker import -c 'CMD ["bash"]' - "$DEBOOTSTRAP_IMAGE"
  else
    local ctr mnt
    ctr=$(buildah from scratch)
    mnt=$(buildah mount "$ctr")
    tar -C "$root" -c . | tar -C "$mnt" -x
    buildah umount "$ctr" >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env LANG=C.UTF-8 --cmd bash "$ctr"
    buildah commit --rm "$ctr" "$DEBOOTSTRAP_IMAGE" >/dev/null
  fi
  rm -rf "$root"
  record "build.base" "{\"image\": \"$DEBOOTSTRAP_IMAGE\", \"made_by\": \"debootstrap bookworm\", \
\"seconds\": $(( $(date +%s) - start )), \"bytes\": $(image_bytes "$DEBOOTSTRAP_IMAGE")}"
}

base_args=()
if [ "$BASE" = debootstrap ]; then
  make_debootstrap_base
  base_args=(--build-arg "BASE_IMAGE=$DEBOOTSTRAP_IMAGE" --build-arg "DEBIAN_IMAGE=$DEBOOTSTRAP_IMAGE")
elif [ "$BASE" != public ]; then
  echo "BASE must be public or debootstrap, not $BASE" >&2; exit 2
fi

for family in "${families[@]}"; do
  [ "$family" != base ] || continue
  [ -f "components/Dockerfile.$family" ] || { echo "no components/Dockerfile.$family" >&2; exit 2; }
  name="$REGISTRY/dpsynth:$TAG-$family"
  pip_args=()
  wheelhouse_seconds=null
  if [ -n "${WHEELHOUSE:-}" ]; then
    [ "$BUILDER" = buildah ] || { echo "WHEELHOUSE needs BUILDER=buildah" >&2; exit 2; }
    mkdir -p "$WHEELHOUSE"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
    # Skipped when this very lock was downloaded before: re-reading 3 GB to re-check it
    # costs about a minute, and the build's --require-hashes checks every file anyway.
    stamp="$WHEELHOUSE/.$family.lock.sha256"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(sha256sum < "requirements/$family.lock")" ]; then
      echo ">> $family: requirements/$family.lock already in $WHEELHOUSE"
    else
      echo ">> $family: downloading requirements/$family.lock into $WHEELHOUSE"
      start=$(date +%s)
      "$PY" -m pip download -q --require-hashes --no-deps -d "$WHEELHOUSE" \
        -r "requirements/$family.lock"
      wheelhouse_seconds=$(( $(date +%s) - start ))
      sha256sum < "requirements/$family.lock" > "$stamp"
    fi
    pip_args=(--build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse
              --volume "$WHEELHOUSE:/wheelhouse:ro")
  else
    [ -z "${PIP_INDEX_URL:-}" ] || pip_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
    [ -z "${PIP_EXTRA_INDEX_URL:-}" ] || pip_args+=(--build-arg "PIP_EXTRA_INDEX_URL=$PIP_EXTRA_INDEX_URL")
  fi
  echo ">> $family: building $name with $BUILDER (base: $BASE)"
  start=$(date +%s)
  log=$(mktemp)
  if [ "$BUILDER" = docker ]; then
    docker build --progress=plain -f "components/Dockerfile.$family" "${base_args[@]}" \
      "${pip_args[@]}" -t "$name" . 2>&1 | tee "$log"
  else
    buildah bud --isolation chroot --layers -f "components/Dockerfile.$family" \
      "${base_args[@]}" "${pip_args[@]}" -t "$name" . 2>&1 | tee "$log"
  fi
  seconds=$(( $(date +%s) - start ))
  # A build whose locked-dependency layer came from the cache (only the sources changed)
  # is recorded apart ("rebuild"), so it never replaces the full build's time.
  kind=build
  if grep -A1 -e "--require-hashes" "$log" | grep -q -e "Using cache" -e "CACHED"; then
    kind=rebuild
  fi
  rm -f "$log"
  bytes=$(image_bytes "$name")
  if [ "$BUILDER" = docker ]; then id=$(docker image inspect -f '{{.Id}}' "$name")
  else id=$(buildah inspect --type image --format '{{.FromImageID}}' "$name"); fi
  id=${id#sha256:}
  # What the image was built from: the sources are copied from the working tree.
  source=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  git diff --quiet HEAD -- src pyproject.toml "requirements/$family.lock" \
    "components/Dockerfile.$family" 2>/dev/null || source="$source+uncommitted"
  echo ">> $family: $name built in ${seconds}s ($kind), $(( bytes / 1000000 )) MB"
  record "$kind.$family" "{\"image\": \"$name\", \"builder\": \"$BUILDER\", \"base\": \"$BASE\", \"source\": \"$source\", \"id\": \"${id:0:12}\", \
\"seconds\": $seconds, \"bytes\": $bytes, \"wheelhouse_seconds\": $wheelhouse_seconds, \"at\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
done
