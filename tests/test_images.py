"""The component images, checked statically (no Docker engine needed): each Dockerfile's
base CUDA against the pinned torch build, the packages every step imports installed in its
family's image, non-root, dependencies before sources, no ``latest``."""

import ast
import functools
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from dpsynth.step_graph import STEPS
from dpsynth_kfp.components import COMPONENTS, DEFAULT_IMAGES, FAMILIES, image, spec_path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = {family: ROOT / "components" / f"Dockerfile.{family}" for family in FAMILIES}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
#: What the CPU-slim image leaves out: imported lazily, by encode/decode only.
GPU_ONLY = {"open-clip-torch", "diffusers", "transformers"}
FAMILY = {s.name: s.device for s in STEPS}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments out."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        text = (pending + line).strip()
        pending = ""
        word, _, rest = text.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    ins = instructions(path)
    start = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[start:]


def pinned(name: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == name:
            (spec,) = req.specifier
            assert spec.operator == "==", dep
            return spec.version
    raise AssertionError(f"{name} not pinned in pyproject.toml")


def installed(family: str) -> set[str]:
    """The distributions the family's Dockerfile installs directly: pyproject.toml's
    dependencies (minus the CPU image's GPU-only ones), as the Dockerfile reads them."""
    text = DOCKERFILES[family].read_text()
    deps = {canonicalize_name(Requirement(d).name) for d in PYPROJECT["project"]["dependencies"]}
    if family == "cpu":
        (skip,) = re.findall(r'DPSYNTH_GPU_ONLY="([^"]*)"', text)
        deps -= {canonicalize_name(s) for s in skip.split()}
    return deps


def closure(names: set[str]) -> set[str]:
    """The distributions ``names`` pull in (their requirements, recursively, as installed
    in this environment; extras not followed)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for r in requires:
            req = Requirement(r)
            if req.marker and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(canonicalize_name(req.name))
    return seen


def third_party_imports(source: str, *, module_level_only: bool = False) -> set[str]:
    """Top-level names of the absolute imports in ``source`` other than dpsynth's and the
    standard library's."""
    tree = ast.parse(source)
    nodes = tree.body if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names
            and n not in ("dpsynth", "dpsynth_kfp", "__future__")}


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    # A scan of every installed distribution's files: seconds each, and asked per import.
    return md.packages_distributions()


def distribution(module: str) -> set[str]:
    return {canonicalize_name(d) for d in _packages_distributions().get(module, [])}


# ------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("family", FAMILIES)
def test_no_latest_and_every_base_pinned(family):
    for word, args in instructions(DOCKERFILES[family]):
        if word == "FROM":
            ref = args.split()[0]
            assert ":" in ref or "@" in ref, f"{family}: unpinned base {ref}"
            assert not ref.endswith(":latest"), f"{family}: {ref}"
    assert "latest" not in DOCKERFILES[family].read_text().lower()
    for img in DEFAULT_IMAGES.values():
        assert not img.endswith("latest")


def test_cuda_base_matches_the_pinned_torch_build():
    torch = pytest.importorskip("torch")
    (base,) = [a.split()[0] for w, a in final_stage(DOCKERFILES["cuda"]) if w == "FROM"]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z-]+-ubuntu\d+\.\d+", base)
    assert m, base
    base_cuda = f"{m[1]}.{m[2]}"
    text = DOCKERFILES["cuda"].read_text()
    (index,) = re.findall(r"download\.pytorch\.org/whl/(cu\d+)", text)
    assert index == "cu" + base_cuda.replace(".", ""), (index, base)
    # The torch that pyproject.toml pins, as installed here from PyPI's default build.
    assert torch.__version__.split("+")[0] == pinned("torch")
    assert torch.version.cuda == base_cuda, (torch.version.cuda, base)
    assert f"torch=={pinned('torch')}" in text and f"torchvision=={pinned('torchvision')}" in text


def test_cpu_image_is_cpu_torch_without_gpu_only_packages():
    text = DOCKERFILES["cpu"].read_text()
    assert "download.pytorch.org/whl/cpu" in text
    assert not re.search(r"whl/cu\d+", text) and "nvidia/cuda" not in text
    assert f"torch=={pinned('torch')}" in text and f"torchvision=={pinned('torchvision')}" in text
    assert installed("cpu").isdisjoint(GPU_ONLY)
    assert installed("cuda") >= GPU_ONLY


@pytest.mark.parametrize("family", FAMILIES)
def test_non_root_user(family):
    users = [a for w, a in final_stage(DOCKERFILES[family]) if w == "USER"]
    assert users, f"{family}: no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    last = max(i for i, (w, _) in enumerate(final_stage(DOCKERFILES[family])) if w == "USER")
    assert not [w for w, _ in final_stage(DOCKERFILES[family])[last:] if w == "RUN"]


@pytest.mark.parametrize("family", FAMILIES)
def test_dependencies_are_installed_before_the_sources_are_copied(family):
    ins = final_stage(DOCKERFILES[family])
    copy_src = next(i for i, (w, a) in enumerate(ins) if w == "COPY" and a.split()[0] == "src")
    copy_deps = next(i for i, (w, a) in enumerate(ins) if w == "COPY" and "pyproject.toml" in a)
    deps_run = next(i for i, (w, a) in enumerate(ins)
                    if w == "RUN" and "-r /tmp/requirements.txt" in a)
    assert copy_deps < deps_run < copy_src
    # Nothing after the sources resolves dependencies again.
    for w, a in ins[copy_src:]:
        if w == "RUN" and "pip install" in a:
            assert "--no-deps" in a, a
    assert not [a for w, a in ins[:copy_src] if w == "COPY" and a.split()[0] in ("src", ".")]


@pytest.mark.parametrize("family", FAMILIES)
def test_fashion_mnist_is_in_the_image(family):
    text = DOCKERFILES[family].read_text()
    assert "dataset-fashion-mnist" in text
    if family == "cuda":  # Ubuntu has no such package: from the Debian stage
        assert "COPY --from=fashion-mnist /usr/share/datasets/fashion-mnist" in text


def test_every_import_of_the_package_is_installed_in_the_cuda_image():
    have = closure(installed("cuda"))
    missing = {}
    for path in (ROOT / "src").rglob("*.py"):
        for module in third_party_imports(path.read_text()):
            dists = distribution(module)
            if not dists or dists.isdisjoint(have):
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert not missing, missing


def test_the_gpu_only_packages_are_imported_lazily():
    """The CPU image lacks them: no module imports them at module level."""
    for path in (ROOT / "src").rglob("*.py"):
        for module in third_party_imports(path.read_text(), module_level_only=True):
            assert distribution(module).isdisjoint(GPU_ONLY), (path, module)


@pytest.mark.parametrize("step", [s.name for s in STEPS])
def test_each_component_names_its_family_image_and_ships_no_kfp_install(step):
    doc = yaml.safe_load(spec_path(step).read_text())
    (executor,) = doc["deploymentSpec"]["executors"].values()
    container = executor["container"]
    assert container["image"] == DEFAULT_IMAGES[FAMILY[step]]
    assert "pip install" not in " ".join(container["command"]), step


def test_cpu_steps_import_without_the_gpu_only_packages(tmp_path):
    """Each CPU step's shipped code imports with open_clip, diffusers and transformers
    unavailable, as in the CPU-slim image."""
    blocked = sorted({m for d in GPU_ONLY for m in _modules_of(d)})
    modules = set()
    for step in COMPONENTS:
        if FAMILY[step] != "cpu":
            continue
        doc = yaml.safe_load(spec_path(step).read_text())
        (executor,) = doc["deploymentSpec"]["executors"].values()
        source = executor["container"]["command"][-1]
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] in ("dpsynth", "dpsynth_kfp"):
                modules.add(node.module)
    modules |= {"dpsynth.preflight", "dpsynth.encoders", "dpsynth.decoders", "kfp"}
    script = (
        "import sys, importlib\n"
        f"BLOCKED = {blocked!r}\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'{name} is not in the CPU image')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {sorted(modules)!r}:\n"
        "    importlib.import_module(m)\n"
        "from dpsynth.encoders import get_encoder\n"
        "print('ok')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def _modules_of(dist: str) -> set[str]:
    return {m for m, ds in _packages_distributions().items()
            if any(canonicalize_name(d) == dist for d in ds)}


def test_images_by_registry_tag_or_digest(monkeypatch):
    for var in ("DPSYNTH_IMAGE_REGISTRY", "DPSYNTH_IMAGE_TAG", "DPSYNTH_IMAGE_DIGEST_CPU",
                "DPSYNTH_IMAGE_DIGEST_CUDA"):
        monkeypatch.delenv(var, raising=False)
    assert image("cpu") == "ghcr.io/dpsynth/dpsynth:0.1.0-cpu"
    monkeypatch.setenv("DPSYNTH_IMAGE_REGISTRY", "reg.example/ml/")
    monkeypatch.setenv("DPSYNTH_IMAGE_TAG", "1.2.3")
    digest = "sha256:" + "ab" * 32
    monkeypatch.setenv("DPSYNTH_IMAGE_DIGEST_CUDA", digest)
    assert image("cpu") == "reg.example/ml/dpsynth:1.2.3-cpu"
    assert image("cuda") == f"reg.example/ml/dpsynth@{digest}"
    monkeypatch.setenv("DPSYNTH_IMAGE_DIGEST_CUDA", "sha256:nothex")
    with pytest.raises(ValueError, match="digest"):
        image("cuda")
    with pytest.raises(ValueError, match="latest"):
        image("cpu", tag="latest")
