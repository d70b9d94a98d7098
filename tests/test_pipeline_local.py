"""The whole Kubeflow pipeline on this machine (kfp.local.SubprocessRunner, use_venv=False).

Each run starts one Python process per task, so these tests take up to a minute or two
each: they are marked slow (they still run in CI).
"""

# No `from __future__ import annotations`: kfp reads the component annotations as types.
import json

import numpy as np
import pytest
from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from dpsynth import runner
from dpsynth.config import load_config
from dpsynth.data.store import EmbeddingSet
from dpsynth_kfp.declarations import Declared
from dpsynth_kfp.local import run_pipeline_locally

SEEDED = pytest.mark.filterwarnings("ignore:noise_seed is set:UserWarning")
pytestmark = pytest.mark.slow


def _config(tmp_path, name: str, *extra: str):
    return load_config("configs/digits-quick.yaml", [
        f"encoder.cache_dir={tmp_path / 'cache'}", "encoder.shard_rows=300",
        "privacy.noise_seed=11", "synthesize.n=2000", "evaluate.steps=40",
        f"data.dataset_id=digits-{name}", "privacy.budget.epsilon=100",
        f"tracking.uri=sqlite:///{tmp_path / (name + '.db')}", *extra])


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@SEEDED
def test_pipeline_run_matches_the_in_process_run(tmp_path):
    config = _config(tmp_path, "match", "synthesize.shard_rows=600")
    local = run_pipeline_locally(config, tmp_path / "kfp", encode_parts=2, synthesize_parts=2)
    in_process = runner.run(config.model_copy(update={"tracking": config.tracking.model_copy(
        update={"uri": f"sqlite:///{tmp_path / 'inproc.db'}"})}), tmp_path / "out",
        progress=False, echo=lambda _: None)
    run_dir = local["run_dir"]
    # The training set was encoded by two parallel tasks (5 shards of 300 rows: 3 + 2).
    parts = sorted(run_dir.glob("for-loop-*-iteration-*/encode/embeddings"))
    assert [EmbeddingSet.open(p).count for p in parts] == [900, 537]
    a = _arrays(run_dir / "fit-gmm" / "mixture" / "arrays.npz")
    b = _arrays(tmp_path / "out" / "mixture" / "arrays.npz")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Synthesized by two parallel tasks (4 shards of 600 rows: 2 + 2), then joined: the
    # same set, bit for bit, as the in-process run's single call.
    parts = sorted(run_dir.glob("for-loop-*-iteration-*/synthesize/synthetic"))
    assert [EmbeddingSet.open(p).count for p in parts] == [1200, 800]
    Xa, ya = EmbeddingSet.open(run_dir / "join-synthetic" / "synthetic").load()
    Xb, yb = EmbeddingSet.open(tmp_path / "out" / "synthetic").load()
    np.testing.assert_array_equal(Xa, Xb)
    np.testing.assert_array_equal(ya, yb)
    for key in ("accuracy", "nonprivate_accuracy", "epsilon", "delta", "confusion_matrix"):
        assert local["metrics"][key] == in_process.metrics[key], key
    assert json.loads((run_dir / "plan" / "privacy_plan").read_text()) == \
        json.loads((tmp_path / "out" / "privacy_plan.json").read_text())
    # The optional decode branch ran (pixels has a decoder) and the UI artifacts exist.
    assert (run_dir / "decode" / "decoded" / "grid.png").is_file()
    assert "base64" in (run_dir / "evaluate" / "report").read_text()
    assert "accuracy" in (run_dir / "evaluate" / "summary").read_text()


@dsl.component(base_image="unused-in-local-runs")
def flipped_pixels_encode(config: Input[Artifact], split: str, part: int, parts: int,
                          embeddings: Output[Dataset]):
    """A third-party encoder component: mirror images, flatten. It honours the artifact
    contract (an EmbeddingSet whose key names its part) and nothing else of dpsynth's."""
    import numpy as np

    from dpsynth.config import load_config
    from dpsynth.data.sources import make_source
    from dpsynth.data.store import write_embedding_set

    source = make_source(load_config(config.path).data, split)
    rows = np.array_split(np.arange(len(source)), parts)[part]
    images, labels = source.read(int(rows[0]), int(rows[-1]) + 1)
    X = images[:, :, ::-1].reshape(len(images), -1).astype(np.float32) / (255.0 * 8)
    write_embedding_set(embeddings.path, X, labels, encoder="flipped-pixels",
                        normalized=False, classes=source.classes,
                        class_names=source.class_names, dataset_id=source.dataset_id,
                        key={"encoder": "flipped-pixels", "part": [part, parts]})


@dsl.component(base_image="unused-in-local-runs")
def balanced_synthesize(mixture: Input[Model], config: Input[Artifact],
                        synthetic: Output[Dataset]):
    """Another team's synthesize: the same format, but balanced classes and its own seed,
    whatever the configuration says."""
    from dpsynth import steps
    from dpsynth.config import load_config

    steps.synthesize(mixture.path, synthetic.path, n=load_config(config.path).synthesize.n,
                     class_balance="balanced", random_state=7)


@SEEDED
def test_custom_components_replace_the_built_ins(tmp_path):
    """encode swapped by a component object (it reads private data: declared, with no
    release of its own); synthesize by a spec file compiled outside the package (as
    another team would ship it)."""
    spec = tmp_path / "their-components" / "synthesize.yaml"
    spec.parent.mkdir()
    compiler.Compiler().compile(balanced_synthesize, str(spec))
    config = _config(tmp_path, "swap", "evaluate.image_level=false")  # no decoder for it
    result = run_pipeline_locally(config, tmp_path / "kfp", encode_parts=2,
                                  components={"encode": Declared(flipped_pixels_encode, []),
                                              "synthesize": spec})
    synthetic = EmbeddingSet.open(result["run_dir"] / "synthesize" / "synthetic")
    assert synthetic.encoder == "flipped-pixels"
    assert synthetic.manifest["key"]["class_balance"] == "balanced"
    assert synthetic.manifest["key"]["random_state"] == 7
    _, y = synthetic.load()
    assert np.ptp(np.bincount(y)) <= 1 and len(y) == 2000
    assert result["metrics"]["encoder"] == "flipped-pixels"
    assert result["metrics"]["accuracy"] > 0.2  # twice chance: it learnt from mirrored digits
    # No decoder inverts the custom encoder: the decode step says so instead of failing.
    assert "no decoder" in (result["run_dir"] / "decode" / "preview").read_text()


def test_the_plan_step_refuses_an_exhausted_budget_before_any_encode(tmp_path):
    """Through the CLI: `dpsynth pipeline run-local` fails with a clear error, and no
    encode task ever ran."""
    from typer.testing import CliRunner

    from dpsynth.cli import app

    result = CliRunner().invoke(app, [
        "pipeline", "run-local", "--config", "configs/digits-quick.yaml",
        "--pipeline-root", str(tmp_path / "kfp"), "--encode-parts", "2",
        "--set", f"encoder.cache_dir={tmp_path / 'cache'}",
        "--set", "privacy.budget.epsilon=1", "--set", "data.dataset_id=digits-refuse"])
    assert result.exit_code == 2
    assert "error:" in result.output and "Inner task failed" in result.output
    run_dirs = [p for p in (tmp_path / "kfp").iterdir() if p.is_dir()]
    assert run_dirs
    tasks = {p.name for d in run_dirs for p in d.iterdir()}
    assert "plan" in tasks
    assert not any(name.startswith(("encode", "for-loop")) for name in tasks), tasks


def test_plan_refuses_unreachable_data_and_charges_nothing(tmp_path):
    """plan runs the pre-flight before the charge: an image folder that is not there (a
    data PVC not mounted) fails plan, no encode task starts, and the ledger holds nothing
    for the dataset."""
    from dpsynth.privacy.ledger_store import open_ledger

    config = _config(tmp_path, "unreachable", "data.source=image-folder",
                     f"data.train_dir={tmp_path / 'not-mounted' / 'train'}",
                     f"data.test_dir={tmp_path / 'not-mounted' / 'test'}",
                     "data.image_size=8", "data.dataset_id=unreachable")
    with pytest.raises(RuntimeError):
        run_pipeline_locally(config, tmp_path / "kfp", encode_parts=2)
    (run_dir,) = [p for p in (tmp_path / "kfp").iterdir() if p.is_dir()]
    tasks = {p.name for p in run_dir.iterdir()}
    assert not any(name.startswith(("encode", "for-loop")) for name in tasks), tasks
    with open_ledger() as ledger:
        assert ledger.entries("unreachable") == []


@dsl.component(base_image="unused-in-local-runs")
def failing_fit_gmm(embeddings: Input[list[Dataset]], clusters: Input[Model],
                    privacy_plan: Input[Artifact], mixture: Output[Model]):
    """A fit_gmm that fails (as an out-of-memory pod would)."""
    raise RuntimeError("fit_gmm failed on purpose")


@SEEDED
def test_a_failed_step_ends_the_mlflow_run_failed_and_deletes_the_embeddings(tmp_path):
    """kfp.local (2.17.3) runs dsl.ExitHandler exit tasks after a failure: the exit task
    marks the MLflow run FAILED, tags the failed step and deletes every private
    embeddings artifact of the run from the pipeline root."""
    from mlflow.tracking import MlflowClient

    from dpsynth_kfp.exit_task import FAILED_STEP_TAG

    config = _config(tmp_path, "fails")
    with pytest.raises(RuntimeError):
        run_pipeline_locally(config, tmp_path / "kfp", encode_parts=2,
                             components={"fit_gmm": Declared(failing_fit_gmm, [])})
    (run_dir,) = [p for p in (tmp_path / "kfp").iterdir() if p.is_dir()]
    # encode ran (and wrote embeddings), then the exit handler deleted them.
    assert list(run_dir.glob("**/encode*")) or list(run_dir.glob("**/for-loop-*"))
    assert not list(run_dir.rglob("embeddings")), list(run_dir.rglob("embeddings"))
    assert "failed step: fit_gmm" in (run_dir / "finalize" / "cleanup").read_text()
    client = MlflowClient(config.tracking.uri)
    (run,) = [r for e in client.search_experiments()
              for r in client.search_runs([e.experiment_id])]
    assert run.info.status == "FAILED"
    assert run.data.tags[FAILED_STEP_TAG] == "fit_gmm"
