"""What a component that reads private data releases: its ``releases.yaml``.

Every step that touches private records (the step graph's ``private`` steps: encode,
dp_cluster, fit_gmm, evaluate) has a declaration beside its spec,
``components/<step>/releases.yaml``. dpsynth's own releases are planned from the run's
configuration (:meth:`dpsynth.synthesizer.DPSynthesizer.make_plan`), so the built-ins
declare none of their own. A replacement component declares the releases it makes beyond
those, in the plan's own terms (:class:`dpsynth.privacy.plan.ReleaseSpec`: name, L2
sensitivity, relative noise weight, repetitions, scope); the pipeline hands them to the
plan step, which calibrates them with the rest, writes them into ``privacy_plan.json``
(``declared_by``: the step) and charges the whole to the ledger. The replacement reads its
sigma from that plan entry by name. A private step's replacement without a declaration is
refused when the pipeline is compiled, before any run can charge anything::

    # releases.yaml, beside the replacement's component.yaml
    releases:            # [] when it makes no release beyond dpsynth's own
      - name: component_radius
        sensitivity: 1.0
        weight: 2.0
        repetitions: 1
        scope: per_class
        description: noisy count of records beyond the radius

A declaration may name the sha256 of the spec it was written for (``component_sha256``;
the built-ins' do): one that no longer matches its spec is refused, so a spec edited or
replaced in place cannot keep an older component's declaration.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from dpsynth.privacy.plan import SCOPES, ReleaseSpec
from dpsynth_kfp.yaml_file import read_yaml_model

#: The declaration's file name, beside the component spec.
SIDECAR = "releases.yaml"


class DeclarationError(ValueError):
    """A private step's component whose releases are not declared, or declared badly."""


class _DeclaredRelease(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    sensitivity: float = Field(gt=0, allow_inf_nan=False)
    weight: float = Field(1.0, gt=0, allow_inf_nan=False)
    repetitions: int = Field(1, ge=1)
    scope: Literal[SCOPES] = "per_class"  # type: ignore[valid-type]
    description: str = ""
    mechanism: str = ""


class _Declaration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    releases: list[_DeclaredRelease]
    component_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


def sidecar_of(spec: str | Path) -> Path:
    """Where the declaration of the spec ``spec`` lives."""
    return Path(spec).parent / SIDECAR


def spec_sha256(spec: str | Path) -> str:
    return hashlib.sha256(Path(spec).read_bytes()).hexdigest()


def read_declaration(path: str | Path, step: str,
                     spec: str | Path | None = None) -> tuple[ReleaseSpec, ...]:
    """The releases a ``releases.yaml`` declares for ``step`` (checked against ``spec``'s
    sha256 when the file names one)."""
    path = Path(path)
    declared = read_yaml_model(path, _Declaration, DeclarationError, "release declarations")
    if declared.component_sha256 and spec is not None \
            and declared.component_sha256 != spec_sha256(spec):
        raise DeclarationError(
            f"{path} declares the releases of another component: its component_sha256 is "
            f"not {Path(spec).name}'s. The spec was changed or replaced; review what it "
            "releases and update the declaration (docs/formats.md, 'Release declarations')")
    return tuple(ReleaseSpec(**r.model_dump(), declared_by=step) for r in declared.releases)


def write_builtin_declaration(step: str, spec: str | Path) -> Path:
    """``releases.yaml`` of a built-in component: no release of its own (its releases are
    planned from the configuration), bound to its spec by sha256."""
    path = sidecar_of(spec)
    path.write_text(
        f"# The DP releases of dpsynth's own {step} component beyond those the privacy plan\n"
        "# makes for the run's configuration: none. A component that replaces it declares\n"
        "# its own here (src/dpsynth_kfp/declarations.py; docs/formats.md, 'Release\n"
        "# declarations'). Written by `dpsynth pipeline compile-components`.\n"
        + yaml.safe_dump({"releases": [], "component_sha256": spec_sha256(spec)},
                         sort_keys=False))
    return path


def undeclared_message(step: str, where: str) -> str:
    return (f"the replacement for step {step!r} ({where}) reads private data but declares "
            f"no releases: write {SIDECAR} beside its spec listing every DP release it makes "
            "(name, sensitivity, weight, repetitions, scope), or 'releases: []' if it "
            "releases nothing beyond dpsynth's own plan (docs/formats.md, 'Release "
            "declarations'). Without it the plan and the ledger could not charge what it "
            "releases.")


def check_unique(declared: Iterable[ReleaseSpec], builtin: Sequence[str] = ()) -> None:
    """No two declared releases, nor a declared and a built-in one, share a name."""
    seen: dict[str, str] = {name: "dpsynth's plan" for name in builtin}
    for spec in declared:
        if spec.name in seen:
            raise DeclarationError(f"release {spec.name!r} declared by {spec.declared_by} is "
                                   f"already made by {seen[spec.name]}: give it its own name")
        seen[spec.name] = spec.declared_by


def to_json(specs: Iterable[ReleaseSpec]) -> str:
    """The declared releases as the plan task's ``declared_releases`` input."""
    return json.dumps([{k: getattr(s, k) for k in (
        "name", "sensitivity", "weight", "repetitions", "scope", "description", "mechanism",
        "declared_by")} for s in specs], sort_keys=True)


def from_json(text: str) -> tuple[ReleaseSpec, ...]:
    """Inverse of :func:`to_json` (an empty text: none)."""
    if not text or not text.strip():
        return ()
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeclarationError(f"declared_releases is not JSON: {exc}") from None
    if not isinstance(items, list):
        raise DeclarationError("declared_releases must be a JSON list of releases")
    try:
        specs = tuple(ReleaseSpec(**item) for item in items)
    except (TypeError, ValueError) as exc:
        raise DeclarationError(f"declared_releases: {exc}") from None
    if missing := [s.name for s in specs if not s.declared_by]:
        raise DeclarationError(f"declared_releases {missing} do not say which step declared "
                               "them (declared_by)")
    check_unique(specs)
    return specs


class Declared:
    """A replacement component given as an object (not a spec file), with the releases it
    declares: ``components={"fit_gmm": Declared(my_fit, [ReleaseSpec(...)])}``."""

    def __init__(self, component, releases: Iterable[ReleaseSpec] = ()) -> None:
        self.component = component
        self.releases = tuple(releases)
