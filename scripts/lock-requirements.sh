#!/usr/bin/env bash
# Regenerates the images' locked dependency sets, requirements/{cpu,cuda}.lock, from
# pyproject.toml: every package pinned, with the sha256 of every file pip may install, so
# an image build installs exactly what was locked (pip install --require-hashes) or fails.
#
#   scripts/lock-requirements.sh
#
# pip-tools is not a dependency of dpsynth: it lives in its own venv ($LOCK_TOOLS, made
# on first use), so locking never changes .venv. pip-compile reads pip's own configuration
# (pip.conf, PIP_* variables), so it resolves against whatever indexes this machine uses,
# but --no-emit-index-url/--no-emit-find-links keep those out of the lock: the lock names
# packages and hashes only, and the image decides where to fetch them (the public index by
# default; scripts/build-images.sh). Resolved on linux x86_64 with CPython 3.11, the images'
# platform; run it there.
#
# requirements/<family>.in are written here too (pyproject.toml's dependencies, the CPU
# image's without the GPU-only ones, plus the build backend that `pip install
# --no-build-isolation` of dpsynth needs), so the diff of a re-lock shows what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCK_TOOLS=${LOCK_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dpsynth-lock-tools}
PY=${PYTHON:-python3.11}
if ! [ -x "$LOCK_TOOLS/bin/pip-compile" ]; then
  "$PY" -m venv "$LOCK_TOOLS"
  "$LOCK_TOOLS/bin/pip" install -q "pip-tools==7.7.0"
fi

# The CPU image leaves out what only encode/decode import, lazily (components/Dockerfile.cpu).
GPU_ONLY="open_clip_torch diffusers transformers"
GPU_ONLY="$GPU_ONLY" "$LOCK_TOOLS/bin/python" - <<'PY'
import os
import re
import tomllib

project = tomllib.load(open("pyproject.toml", "rb"))
deps = project["project"]["dependencies"]
build = project["build-system"]["requires"]
skip = {s.lower().replace("_", "-") for s in os.environ["GPU_ONLY"].split()}


def name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req)[0].lower().replace("_", "-")


header = ("# Generated from pyproject.toml by scripts/lock-requirements.sh: edit pyproject.toml,\n"
          "# then re-run the script.\n")
for family, wanted in (("cuda", deps), ("cpu", [d for d in deps if name(d) not in skip])):
    with open(f"requirements/{family}.in", "w") as f:
        f.write(header + "\n".join(wanted) + "\n# build backend (dpsynth is installed with"
                " --no-build-isolation)\n" + "\n".join(build) + "\n")
PY

compile() {  # <family> [pip-compile options]
  local family=$1; shift
  CUSTOM_COMPILE_COMMAND="scripts/lock-requirements.sh" \
    "$LOCK_TOOLS/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
      --no-emit-index-url --no-emit-find-links --no-emit-trusted-host "$@" \
      --output-file "requirements/$family.lock" "requirements/$family.in"
}
# The CUDA set first; the CPU set is then resolved inside it, so the two images share every
# version (a package the CPU image pulls in only transitively, e.g. transformers through
# sentence-transformers, is still the CUDA image's pinned one).
compile cuda
compile cpu --constraint requirements/cuda.lock
