"""A swapped private step brings its releases into the plan (issue 24, item 1): each
component that reads private data declares its DP releases (``releases.yaml``); the plan
step composes the declared releases of the components wired in and charges them; a
private step's replacement with no declaration cannot be compiled."""

# No `from __future__ import annotations`: kfp reads the component annotations as types.
import json
from pathlib import Path

import pytest
import yaml
from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output
from typer.testing import CliRunner

from dpsynth import steps
from dpsynth.cli import app
from dpsynth.config import load_config
from dpsynth.privacy.plan import PrivacyPlan, ReleaseSpec
from dpsynth_kfp.cli import declared_in_package
from dpsynth_kfp.compile import compile_pipeline
from dpsynth_kfp.components import COMPONENTS_DIR, spec_path
from dpsynth_kfp.declarations import (
    SIDECAR,
    DeclarationError,
    Declared,
    from_json,
    read_declaration,
    to_json,
)
from dpsynth_kfp.pipeline import declared_releases

EXTRA = {"name": "records_far_out", "sensitivity": 1.0, "weight": 4.0, "repetitions": 1,
         "scope": "global", "description": "noisy count of records of norm above 0.5"}


@dsl.component(base_image="unused-in-local-runs")
def fit_gmm_counting_far_records(embeddings: Input[list[Dataset]], clusters: Input[Model],
                                 privacy_plan: Input[Artifact], mixture: Output[Model]):
    """Another team's fit_gmm: dpsynth's, plus one release of its own (a noisy count of
    records far from the origin), its sigma read from the plan entry that names it."""
    import json
    from pathlib import Path

    import numpy as np

    from dpsynth import steps
    from dpsynth.data.store import EmbeddingSet
    from dpsynth.privacy.plan import PrivacyPlan

    steps.fit_gmm([e.path for e in embeddings], clusters.path, privacy_plan.path,
                  mixture.path)
    plan = PrivacyPlan.from_dict(json.loads(Path(privacy_plan.path).read_text()))
    release = plan.release("records_far_out")  # sensitivity 1: one record moves it by 1
    far = sum(int((np.linalg.norm(EmbeddingSet.open(e.path).load()[0], axis=1) > 0.5).sum())
              for e in embeddings)
    noisy = far + np.random.default_rng().normal(0.0, release.sigma)
    Path(mixture.path, "records_far_out.json").write_text(json.dumps(
        {"noisy_count": noisy, "sigma": release.sigma}))


def replacement(tmp_path: Path, declaration: dict | None) -> Path:
    """The component compiled to a spec as another team ships it, with or without its
    releases.yaml."""
    spec = tmp_path / "their-fit-gmm" / "component.yaml"
    spec.parent.mkdir(parents=True)
    compiler.Compiler().compile(fit_gmm_counting_far_records, str(spec))
    if declaration is not None:
        (spec.parent / SIDECAR).write_text(yaml.safe_dump(declaration))
    return spec


def plan_constant(package: Path) -> tuple[ReleaseSpec, ...]:
    return declared_in_package(next(yaml.safe_load_all(package.read_text())))


def test_the_built_in_private_steps_declare_no_release_of_their_own():
    assert declared_releases() == ()
    for step in ("encode", "dp_cluster", "fit_gmm", "evaluate"):
        assert read_declaration(spec_path(step).parent / SIDECAR, step, spec_path(step)) == ()
    for step in ("plan", "synthesize", "decode"):  # read no private data
        assert not (COMPONENTS_DIR / step / SIDECAR).exists()


def test_a_swapped_private_step_with_no_declaration_cannot_be_compiled(tmp_path):
    spec = replacement(tmp_path, None)
    with pytest.raises(DeclarationError, match="declares no releases: write releases.yaml"):
        compile_pipeline(tmp_path / "p.yaml", components={"fit_gmm": spec})
    assert not (tmp_path / "p.yaml").exists()
    result = CliRunner().invoke(app, ["pipeline", "compile", "-o", str(tmp_path / "q.yaml"),
                                      "--component", f"fit_gmm={spec}"])
    assert result.exit_code == 2 and "declares no releases" in result.output
    assert not (tmp_path / "q.yaml").exists()
    # A component object too, unless wrapped with its declaration.
    with pytest.raises(DeclarationError, match="Declared"):
        compile_pipeline(tmp_path / "p.yaml",
                         components={"fit_gmm": fit_gmm_counting_far_records})
    # A step that reads no private data needs none (synthesize is post-processing).
    synthesize = tmp_path / "synth" / "component.yaml"
    synthesize.parent.mkdir()
    compiler.Compiler().compile(steps_free_synthesize, str(synthesize))
    compile_pipeline(tmp_path / "ok.yaml", components={"synthesize": synthesize})


@dsl.component(base_image="unused-in-local-runs")
def steps_free_synthesize(mixture: Input[Model], config: Input[Artifact],
                          synthetic: Output[Dataset]):
    """synthesize, whole (post-processing)."""
    from dpsynth import steps
    from dpsynth.config import load_config

    steps.synthesize(mixture.path, synthetic.path, n=load_config(config.path).synthesize.n)


def test_a_declared_release_reaches_the_plan_task(tmp_path):
    spec = replacement(tmp_path, {"releases": [EXTRA]})
    package = compile_pipeline(tmp_path / "p.yaml", components={"fit_gmm": spec})
    (declared,) = plan_constant(package)
    assert declared == ReleaseSpec(**EXTRA, declared_by="fit_gmm")
    # The same for a component object with its declaration.
    other = compile_pipeline(tmp_path / "o.yaml", components={"fit_gmm": Declared(
        fit_gmm_counting_far_records, [ReleaseSpec(**EXTRA)])})
    assert plan_constant(other) == (declared,)


def test_the_plan_composes_and_charges_a_declared_release(tmp_path):
    """The extra release shares the run's epsilon: the plan calibrated with it adds more
    noise to dpsynth's own releases, records it (declared_by) and composes to the target;
    the ledger is charged that plan."""
    config = load_config("configs/digits-quick.yaml", ["data.dataset_id=declared"])
    (declared,) = from_json(to_json([ReleaseSpec(**EXTRA, declared_by="fit_gmm")]))
    own, with_extra = steps.make_plan(config), steps.make_plan(config, [declared])
    assert with_extra.epsilon_pld == pytest.approx(own.epsilon_pld, rel=0.01)
    extra = with_extra.release("records_far_out")
    assert extra.declared_by == "fit_gmm" and extra.scope == "global"
    assert with_extra.release("class_sums").sigma > own.release("class_sums").sigma
    # Written and read back like any plan; the built-in steps accept it (the declared
    # release is another step's) and draw their noise from it.
    data = json.loads(json.dumps(with_extra.to_dict()))
    assert PrivacyPlan.from_dict(data).release("records_far_out").declared_by == "fit_gmm"
    assert "declared_by" not in json.dumps(own.to_dict())  # dpsynth's plans unchanged
    from dpsynth.ledger_charge import charge_run

    charged = charge_run(config.model_copy(update={"tracking": config.tracking.model_copy(
        update={"uri": f"sqlite:///{tmp_path / 'm.db'}"})}), tmp_path / "out",
        echo=lambda _: None, declared=[declared])
    recorded = json.loads(charged.plan_path.read_text())
    assert [r["name"] for r in recorded["releases"]][-1] == "records_far_out"
    from dpsynth.privacy.ledger_store import open_ledger

    with open_ledger() as ledger:
        (entry,) = ledger.entries("declared")
    assert len(entry.releases) == len(with_extra.releases)
    assert entry.releases[-1] == (extra.noise_multiplier, 1)
    assert entry.epsilon == pytest.approx(with_extra.epsilon_pld, rel=1e-9)


def test_a_declared_release_may_not_take_a_built_in_name(tmp_path):
    config = load_config("configs/digits-quick.yaml")
    clash = ReleaseSpec("class_sums", 1.0, declared_by="fit_gmm")
    with pytest.raises(ValueError, match="have the names of releases dpsynth's own plan"):
        steps.make_plan(config, [clash])


def test_a_declaration_bound_to_another_spec_is_refused(tmp_path):
    """A spec replaced in place cannot keep the built-in's declaration (its sha256)."""
    root = tmp_path / "components"
    import shutil

    shutil.copytree(COMPONENTS_DIR, root)
    compiler.Compiler().compile(fit_gmm_counting_far_records, str(root / "fit_gmm" /
                                                                 "component.yaml"))
    with pytest.raises(DeclarationError, match="declares the releases of another component"):
        declared_releases(root=root)
    assert declared_releases(root=COMPONENTS_DIR) == ()


@pytest.mark.parametrize("text, message", [
    ("{}", "releases: Field required"),
    ("releases: [{name: x}]", "sensitivity: Field required"),
    ("releases: [{name: x, sensitivity: 0}]", "greater than 0"),
    ("releases: [{name: x, sensitivity: 1, scope: everywhere}]", "scope"),
    ("releases: [{name: x, sensitivity: 1, sigma: 3}]", "sigma: Extra inputs"),
    ("releases: [{name: x, sensitivity: 1}, {name: x, sensitivity: 2}]", "already made"),
    ("releases: [", "not valid YAML"),
])
def test_a_bad_declaration_is_refused_naming_the_field(tmp_path, text, message):
    spec = replacement(tmp_path, None)
    (spec.parent / SIDECAR).write_text(text)
    with pytest.raises(DeclarationError, match=message):
        compile_pipeline(tmp_path / "p.yaml", components={"fit_gmm": spec})


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:noise_seed is set:UserWarning")
def test_a_pipeline_with_a_declaring_replacement_runs_and_charges_its_release(tmp_path):
    """The whole pipeline on kfp's local runner with the replacement fit_gmm: its release
    is in the plan file, the ledger is charged that plan, and the replacement drew its
    noise with the plan's sigma."""
    from dpsynth.privacy.ledger_store import open_ledger
    from dpsynth_kfp.local import run_pipeline_locally

    spec = replacement(tmp_path, {"releases": [EXTRA]})
    config = load_config("configs/digits-quick.yaml", [
        f"encoder.cache_dir={tmp_path / 'cache'}", "privacy.noise_seed=5",
        "synthesize.n=1000", "evaluate.steps=20", "data.dataset_id=digits-declared",
        "privacy.budget.epsilon=100", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"])
    result = run_pipeline_locally(config, tmp_path / "kfp", encode_parts=1,
                                  synthesize_parts=1, components={"fit_gmm": spec})
    plan = PrivacyPlan.from_dict(json.loads(
        (result["run_dir"] / "plan" / "privacy_plan").read_text()))
    assert plan.release("records_far_out").declared_by == "fit_gmm"
    drawn = json.loads((result["run_dir"] / "fit-gmm" / "mixture" /
                        "records_far_out.json").read_text())
    assert drawn["sigma"] == plan.release("records_far_out").sigma
    with open_ledger() as ledger:
        (entry,) = ledger.entries("digits-declared")
    assert entry.epsilon == pytest.approx(plan.epsilon_pld, rel=1e-9)
    assert result["metrics"]["accuracy"] > 0.2
