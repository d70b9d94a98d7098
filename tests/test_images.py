"""The component images, checked statically (no Docker engine needed): each Dockerfile's
base (a BASE_IMAGE build argument, public by default) and its CUDA against the pinned torch
build, the locked dependency sets (requirements/*.lock: hashes on every line, consistent
with pyproject.toml, installed with --require-hashes), the packages every step imports
installed in its family's image, non-root, dependencies before sources, no ``latest``.

That the images build and the CPU steps run inside them is checked by
scripts/check-images.sh (minutes, torch-sized: not in CI); its last result is
benchmarks/results/images.json."""

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
LOCKS = {family: ROOT / "requirements" / f"{family}.lock" for family in FAMILIES}
#: The bases users build from unless they pass --build-arg BASE_IMAGE.
PUBLIC_BASES = {"cpu": r"python:3\.11\.\d+-slim-bookworm",
                "cuda": r"nvidia/cuda:\d+\.\d+\.\d+-runtime-ubuntu\d+\.\d+"}
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


def global_args(path: Path) -> dict[str, str | None]:
    """The ARGs declared before the first FROM (the ones FROM may use), with defaults."""
    out = {}
    for word, args in instructions(path):
        if word == "FROM":
            break
        if word == "ARG":
            name, eq, default = args.partition("=")
            out[name] = default if eq else None
    return out


def bases(path: Path) -> list[str]:
    """Each stage's base as a build without --build-arg resolves it."""
    defaults = global_args(path)
    refs = []
    for word, args in instructions(path):
        if word == "FROM":
            ref = args.split()[0]
            for name, value in defaults.items():
                ref = ref.replace("${" + name + "}", value or "")
            refs.append(ref)
    return refs


def lock(family: str) -> dict[str, tuple[str, list[str]]]:
    """requirements/<family>.lock: {name: (pinned requirement, [hashes])}."""
    entries, pending = {}, ""
    for line in LOCKS[family].read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        words, pending = (pending + line).split(), ""
        hashes = [w.removeprefix("--hash=") for w in words if w.startswith("--hash=")]
        requirement = " ".join(w for w in words if not w.startswith("--hash="))
        name = canonicalize_name(Requirement(requirement).name)
        assert name not in entries, f"{family}.lock: {name} twice"
        entries[name] = (requirement, hashes)
    return entries


def locked_version(family: str, name: str) -> str:
    requirement, _ = lock(family)[canonicalize_name(name)]
    (spec,) = Requirement(requirement).specifier
    return spec.version


def direct_in_lock(family: str) -> set[str]:
    """The lock's entries that pip-compile annotates as required by the .in file itself."""
    direct, current = set(), None
    for line in LOCKS[family].read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = canonicalize_name(Requirement(line.rstrip(" \\").split()[0]).name)
        elif current and f"-r requirements/{family}.in" in line:
            direct.add(current)
    return direct


def pinned(name: str) -> str:
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        if canonicalize_name(req.name) == name:
            (spec,) = req.specifier
            assert spec.operator == "==", dep
            return spec.version
    raise AssertionError(f"{name} not pinned in pyproject.toml")


def installed(family: str) -> set[str]:
    """The distributions the family's image installs: its lock's entries (the whole set;
    pip install --require-hashes refuses anything outside it)."""
    return set(lock(family))


def declared(family: str) -> list[Requirement]:
    """pyproject.toml's dependencies the family's image must hold (the CPU image's without
    the GPU-only ones), and the build backend its source install uses."""
    deps = [Requirement(d) for d in PYPROJECT["project"]["dependencies"]]
    if family == "cpu":
        deps = [r for r in deps if canonicalize_name(r.name) not in GPU_ONLY]
    return deps + [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]


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
    for ref in bases(DOCKERFILES[family]):
        assert ":" in ref or "@" in ref, f"{family}: unpinned base {ref}"
        assert not ref.endswith(":latest"), f"{family}: {ref}"
    assert "latest" not in DOCKERFILES[family].read_text().lower()
    for img in DEFAULT_IMAGES.values():
        assert not img.endswith("latest")


@pytest.mark.parametrize("family", FAMILIES)
def test_the_base_is_a_build_argument_with_the_public_default(family):
    """BASE_IMAGE lets a machine without a registry build from its own base
    (scripts/build-images.sh BASE=debootstrap); a plain build uses the public one."""
    path = DOCKERFILES[family]
    assert re.fullmatch(PUBLIC_BASES[family], global_args(path).get("BASE_IMAGE") or ""), \
        global_args(path)
    (final,) = [a for w, a in final_stage(path) if w == "FROM"]
    assert final.split()[0] == "${BASE_IMAGE}", final
    for ref in bases(path):
        assert not ref.startswith(("localhost", "127.", "dpsynth-base")), ref
    if family == "cuda":  # the Fashion-MNIST stage's Debian base, likewise
        assert re.fullmatch(r"debian:\d+\.\d+-slim", global_args(path)["DEBIAN_IMAGE"])
        assert "FROM ${DEBIAN_IMAGE} AS fashion-mnist" in path.read_text()


@pytest.mark.parametrize("family", FAMILIES)
def test_pip_sources_default_to_the_public_index(family):
    """The pip sources are build arguments (never ENV, never a path of the machine that
    built the lock); the default is PyPI."""
    ins = final_stage(DOCKERFILES[family])
    args = {a.partition("=")[0]: a.partition("=")[2] for w, a in ins if w == "ARG"}
    assert args.get("PIP_INDEX_URL") == "https://pypi.org/simple", args
    assert not [a for a in args.values() if a and a != "https://pypi.org/simple"], args
    text = " ".join(a for _, a in instructions(DOCKERFILES[family]))
    for local in ("file://", "/opt/wheels", "/opt/pypi", "127.0.0.1", "localhost", "/wheelhouse"):
        assert local not in text, local
    envs = " ".join(a for w, a in ins if w == "ENV")
    assert "PIP_INDEX_URL" not in envs and "PIP_FIND_LINKS" not in envs
    for name in ("cpu", "cuda"):
        body = LOCKS[name].read_text()
        assert "--index-url" not in body and "--find-links" not in body and "file://" not in body


@pytest.mark.parametrize("family", FAMILIES)
def test_the_image_installs_its_lock_with_hashes(family):
    ins = final_stage(DOCKERFILES[family])
    copy_lock = [i for i, (w, a) in enumerate(ins)
                 if w == "COPY" and a.split()[0] == f"requirements/{family}.lock"]
    assert copy_lock, f"{family}: the lock is not copied in"
    installs = [(i, a) for i, (w, a) in enumerate(ins) if w == "RUN" and "pip install" in a]
    locked = [i for i, a in installs
              if re.search(r"pip install --require-hashes -r /tmp/requirements\.lock", a)]
    assert len(locked) == 1 and copy_lock[0] < locked[0], installs
    # Every other install is dpsynth itself: no dependency resolved outside the lock, no
    # build backend fetched.
    for i, a in installs:
        if i != locked[0]:
            assert "--no-deps" in a and "--no-build-isolation" in a, a


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lock_pins_every_line_with_hashes(family):
    entries = lock(family)
    assert len(entries) > 50, f"{family}.lock: {len(entries)} entries"
    for name, (requirement, hashes) in entries.items():
        (spec,) = Requirement(requirement).specifier
        assert spec.operator == "==", requirement
        assert hashes, f"{family}.lock: {name} has no hash"
        for h in hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", h), (name, h)
    assert locked_version(family, "torch") == pinned("torch") == "2.14.1"
    assert locked_version(family, "torchvision") == pinned("torchvision") == "0.29.1"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_lock_satisfies_pyproject(family):
    """Every dependency pyproject.toml declares (and the build backend) is in the lock at a
    version it allows, with its extras' packages: a dependency changed without re-running
    scripts/lock-requirements.sh fails here."""
    entries = lock(family)
    for req in declared(family):
        name = canonicalize_name(req.name)
        assert name in entries, f"{family}.lock lacks {req} (scripts/lock-requirements.sh)"
        version = locked_version(family, name)
        assert req.specifier.contains(version, prereleases=True), \
            f"{family}.lock: {name}=={version} does not satisfy {req}"
        for extra in req.extras:  # e.g. psycopg[binary]: psycopg-binary
            for r in md.requires(req.name) or []:
                r = Requirement(r)
                if r.marker and r.marker.evaluate({"extra": extra}) and \
                        not r.marker.evaluate({"extra": ""}):
                    assert canonicalize_name(r.name) in entries, (req, r)


def test_the_two_locks_agree():
    """The CPU set is resolved inside the CUDA lock: one version of each package."""
    cpu, cuda = lock("cpu"), lock("cuda")
    assert set(cpu) <= set(cuda), set(cpu) - set(cuda)
    for name in cpu:
        assert cpu[name] == cuda[name], (cpu[name][0], cuda[name][0])


def test_cuda_base_matches_the_pinned_torch_build():
    torch = pytest.importorskip("torch")
    base = global_args(DOCKERFILES["cuda"])["BASE_IMAGE"]
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-[a-z-]+-ubuntu\d+\.\d+", base)
    assert m, base
    base_cuda = f"{m[1]}.{m[2]}"
    # The CUDA runtime the lock installs with torch (its nvidia-* wheels).
    runtime = locked_version("cuda", "nvidia-cuda-runtime")
    assert ".".join(runtime.split(".")[:2]) == base_cuda, (runtime, base)
    # The torch that pyproject.toml pins, as installed here from PyPI's default build,
    # against the same nvidia-cuda-runtime.
    assert torch.__version__.split("+")[0] == pinned("torch")
    assert torch.version.cuda == base_cuda, (torch.version.cuda, base)
    assert md.version("nvidia-cuda-runtime") == runtime


def test_the_cuda_image_requires_cuda():
    """DPSYNTH_REQUIRE_CUDA=1: encode/decode refuse to fall back to CPU in the CUDA image
    (a GPU step on a node without a working GPU fails instead of running for hours)."""
    def env(family):
        return " ".join(a for w, a in final_stage(DOCKERFILES[family]) if w == "ENV").split()
    assert "DPSYNTH_REQUIRE_CUDA=1" in env("cuda")
    assert not [e for e in env("cpu") if e.startswith("DPSYNTH_REQUIRE_CUDA")]


def test_cpu_image_leaves_out_the_gpu_only_packages():
    text = DOCKERFILES["cpu"].read_text()
    assert "nvidia/cuda" not in text
    # Not asked for by the CPU image: open_clip and diffusers absent; transformers only as
    # sentence-transformers' dependency.
    assert direct_in_lock("cpu").isdisjoint(GPU_ONLY), direct_in_lock("cpu") & GPU_ONLY
    assert installed("cpu").isdisjoint({"open-clip-torch", "diffusers"})
    assert direct_in_lock("cuda") >= GPU_ONLY
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
    copy_deps = next(i for i, (w, a) in enumerate(ins) if w == "COPY" and ".lock" in a)
    deps_run = next(i for i, (w, a) in enumerate(ins)
                    if w == "RUN" and "-r /tmp/requirements.lock" in a)
    assert copy_deps < deps_run < copy_src
    # Nothing after the sources resolves dependencies again.
    for w, a in ins[copy_src:]:
        if w == "RUN" and "pip install" in a:
            assert "--no-deps" in a, a
    # Neither the sources nor pyproject.toml before the dependencies: a source change, or
    # a pyproject.toml change that leaves the lock alone, never reinstalls torch.
    assert not [a for w, a in ins[:deps_run]
                if w == "COPY" and ({"src", ".", "pyproject.toml"} & set(a.split()[:-1]))]


@pytest.mark.parametrize("family", FAMILIES)
def test_fashion_mnist_is_in_the_image(family):
    text = DOCKERFILES[family].read_text()
    assert "dataset-fashion-mnist" in text
    if family == "cuda":  # Ubuntu has no such package: from the Debian stage
        assert "COPY --from=fashion-mnist /usr/share/datasets/fashion-mnist" in text


def test_every_import_of_the_package_is_installed_in_the_cuda_image():
    have = installed("cuda")
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


@pytest.mark.parametrize("family", FAMILIES)
def test_the_image_keeps_the_wheel_it_installed_for_the_registered_model(family):
    """promote logs this wheel with every registered model (dpsynth.promote.dpsynth_wheel
    reads $DPSYNTH_WHEEL), so the image must build it, install it, and say where it is."""
    ins = final_stage(DOCKERFILES[family])
    runs = " ".join(args for word, args in ins if word == "RUN")
    assert "pip wheel --no-deps --no-build-isolation --wheel-dir /opt/dpsynth/dist ." in runs
    assert "pip install --no-deps /opt/dpsynth/dist/dpsynth-*.whl" in runs
    env = " ".join(args for word, args in ins if word == "ENV")
    assert "DPSYNTH_WHEEL=/opt/dpsynth/dist" in env


def test_the_wheel_variable_takes_the_wheel_or_its_folder(tmp_path, monkeypatch):
    from dpsynth.promote import ReleaseError, dpsynth_wheel

    wheel = tmp_path / "dpsynth-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    for value in (wheel, tmp_path):
        monkeypatch.setenv("DPSYNTH_WHEEL", str(value))
        assert dpsynth_wheel() == wheel
    monkeypatch.setenv("DPSYNTH_WHEEL", str(tmp_path / "missing"))
    with pytest.raises(ReleaseError, match="not one dpsynth wheel"):
        dpsynth_wheel()
