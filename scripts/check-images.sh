#!/usr/bin/env bash
# Runs the default pipeline's CPU steps (plan, dp_cluster, fit_gmm, synthesize, evaluate)
# on configs/digits-quick.yaml inside the built CPU image, each with its component spec's
# command and an executor input built by kfp's local-runner code, and checks that the
# CUDA image imports torch, timm, open_clip, diffusers and sentence_transformers (no GPU
# needed: importing is what is checked). Results: benchmarks/results/images.json ("check"),
# next to scripts/build-images.sh's build times and sizes.
#
#   scripts/build-images.sh && scripts/check-images.sh [--config ...] [--work DIR]
#
# Not part of .ci/run: building the torch-sized images takes far longer than CI's budget.
# Run it after changing a Dockerfile, a lock or a step's component, and commit its result.
# Needs buildah (steps run with `buildah run --isolation chroot`: no daemon) and .venv
# (kfp builds the executor inputs on the host). Images: as scripts/build-images.sh names
# them ($DPSYNTH_IMAGE_REGISTRY, $DPSYNTH_IMAGE_TAG), or --cpu-image/--cuda-image.
#
# To build and check a commit rather than a working tree others are editing: run both
# scripts in a `git worktree` of it, with PYTHON=<a checkout>/.venv/bin/python. The check
# puts its own tree's src/ first on the path, so the specs, the parameter names and the
# sources in the image all come from the same tree.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-.venv/bin/python}" scripts/check_images.py "$@"
