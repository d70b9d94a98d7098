"""`dpsynth pipeline submit | schedule | compile` against a loopback fake KFP v2beta1 API."""

from __future__ import annotations

import pytest
import yaml
from fake_kfp import FakeKfp
from mlflow_server import free_port
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth_kfp.compile import COMMITTED

cli = CliRunner()

#: A quick configuration for the scheduled run: digits, pixels encoder, eps 8 of 20.
DIGITS = ["--config", "configs/digits-quick.yaml", "--param", "dataset=digits",
          "--param", "encoder=pixels", "--param", "epsilon=8"]


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    """A fresh ledger as $DPSYNTH_LEDGER_URI, the one the budget runway is counted in."""
    from dpsynth.privacy.ledger_store import open_ledger

    uri = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    monkeypatch.setenv("DPSYNTH_LEDGER_URI", uri)
    with open_ledger(uri):  # it exists: schedule refuses a ledger path that does not
        pass
    return uri


def _spec() -> dict:
    """What the client must send: the committed package's pipeline and platform specs."""
    pipeline_spec, platform_spec = yaml.safe_load_all(COMMITTED.read_text())
    return {"pipeline_spec": pipeline_spec, "platform_spec": platform_spec}


def test_submit_sends_the_compiled_spec_and_the_parameters_as_given():
    with FakeKfp() as kfp:
        result = cli.invoke(app, [
            "pipeline", "submit", "--host", kfp.url, "--experiment", "nightly",
            "--run-name", "first", "--param", "epsilon=2", "--param", "dataset=digits",
            "--param", "decode=true", "--config", "configs/digits-quick.yaml"])
    assert result.exit_code == 0, result.output
    assert "submitted run run-1" in result.output
    assert [e["display_name"] for e in kfp.posted("/experiments")] == ["nightly"]
    (run,) = kfp.posted("/runs")
    assert run["display_name"] == "first"
    assert run["experiment_id"] == "exp-1"
    assert run["pipeline_spec"] == _spec()
    params = run["runtime_config"]["parameters"]
    assert params["epsilon"] == 2 and params["dataset"] == "digits" and params["decode"] is True
    with open("configs/digits-quick.yaml") as f:
        assert params["config_yaml"] == f.read()


def test_submit_with_a_config_keeps_its_values_where_no_param_is_given(tmp_path):
    """The plan task applies every parameter over config_yaml: a parameter left at the
    package's default (dataset=fashion-mnist, epsilon=1) would silently replace the
    config's own. Each one not given carries the config's value; --param still wins."""
    config = tmp_path / "c.yaml"
    config.write_text("data: {source: digits}\nencoder: {name: pixels}\n"
                      "privacy: {epsilon: 0.5, delta: 1.0e-6}\nsynthesize: {n: 1234}\n")
    with FakeKfp() as kfp:
        result = cli.invoke(app, ["pipeline", "submit", "--host", kfp.url,
                                  "--config", str(config), "--param", "n_samples=99"])
    assert result.exit_code == 0, result.output
    (run,) = kfp.posted("/runs")
    params = run["runtime_config"]["parameters"]
    assert (params["dataset"], params["encoder"]) == ("digits", "pixels")
    assert (params["epsilon"], params["delta"]) == (0.5, 1e-6)
    assert params["n_samples"] == 99  # given: wins over the config's 1234
    assert params["config_yaml"] == config.read_text()


def test_submit_refuses_an_invalid_config_before_contacting_kfp(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("privacy: {epsilon: -1}\n")
    with FakeKfp() as kfp:
        result = cli.invoke(app, ["pipeline", "submit", "--host", kfp.url,
                                  "--config", str(config)])
        assert not kfp.posted("/runs")
    assert result.exit_code != 0
    assert "privacy" in result.output and "epsilon" in result.output


def test_schedule_embeds_the_spec_on_request_with_the_six_field_cron():
    with FakeKfp() as kfp:
        result = cli.invoke(app, [
            "pipeline", "schedule", "--host", kfp.url, "--cron", "0 0 3 * * *",
            "--name", "refresh", "--max-concurrency", "1", "--embed-spec", "--no-budget-check",
            "--param", "n_samples=1000"])
    assert result.exit_code == 0, result.output
    (job,) = kfp.posted("/recurringruns")
    assert job["display_name"] == "refresh"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(job["max_concurrency"]) == 1
    assert job["no_catchup"] is True
    assert job["pipeline_spec"] == _spec()
    assert job["runtime_config"]["parameters"]["n_samples"] == 1000
    assert not kfp.posted("/upload_version")


def test_five_field_cron_and_unknown_parameters_are_refused_before_any_request():
    with FakeKfp() as kfp:
        five = cli.invoke(app, ["pipeline", "schedule", "--host", kfp.url,
                                "--cron", "0 3 * * *"])
        unknown = cli.invoke(app, ["pipeline", "submit", "--host", kfp.url,
                                   "--param", "epsilonn=2"])
    assert five.exit_code == 2 and "6 fields" in five.output
    assert unknown.exit_code == 2 and "unknown pipeline parameters ['epsilonn']" in unknown.output
    assert kfp.requests == []


def test_server_errors_become_clear_cli_errors():
    with FakeKfp() as kfp:
        kfp.fail_with = (400, "pipeline spec is invalid: bad executor")
        result = cli.invoke(app, ["pipeline", "submit", "--host", kfp.url])
    assert result.exit_code == 2
    assert "submitting the run failed" in result.output
    assert "HTTP 400" in result.output and "pipeline spec is invalid" in result.output


def test_unreachable_host_is_a_clear_error():
    result = cli.invoke(app, ["pipeline", "submit", "--host",
                              f"http://127.0.0.1:{free_port()}"])
    assert result.exit_code == 2
    assert "error:" in result.output and "127.0.0.1" in result.output


def test_compile_writes_a_package_with_the_configured_images(tmp_path, monkeypatch):
    monkeypatch.setenv("DPSYNTH_IMAGE_REGISTRY", "registry.example.org/ml")
    monkeypatch.setenv("DPSYNTH_IMAGE_TAG", "2.0")
    out = tmp_path / "p.yaml"
    result = cli.invoke(app, ["pipeline", "compile", "--output", str(out),
                              "--encode-parts", "3"])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "registry.example.org/ml/dpsynth:2.0-cuda" in text
    assert "registry.example.org/ml/dpsynth:2.0-cpu" in text
    assert "ghcr.io" not in text
    assert '[0, 1, 2]' in text


def test_compile_swaps_a_component_by_spec_and_refuses_one_that_does_not_fit(tmp_path):
    """`--component step=spec.yaml`: the spec replaces the step's component; a spec whose
    inputs or outputs differ is a one-line error naming them."""
    specs = tmp_path / "specs"
    result = cli.invoke(app, ["pipeline", "compile-components", "--output", str(specs)])
    assert result.exit_code == 0, result.output
    assert sorted(p.parent.name for p in specs.glob("*/component.yaml")) == sorted(
        ["plan", "encode", "dp_cluster", "fit_gmm", "synthesize", "decode", "evaluate"])
    text = (specs / "synthesize" / "component.yaml").read_text()
    theirs = tmp_path / "theirs.yaml"
    theirs.write_text(text.replace("ghcr.io/dpsynth/dpsynth:0.1.0-cpu", "example.org/synth:9"))
    out = tmp_path / "p.yaml"
    result = cli.invoke(app, ["pipeline", "compile", "-o", str(out),
                              "--component", f"synthesize={theirs}"])
    assert result.exit_code == 0, result.output
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    assert executors["exec-synthesize"]["container"]["image"] == "example.org/synth:9"
    misfit = cli.invoke(app, ["pipeline", "compile", "-o", str(out), "--component",
                              f"synthesize={specs / 'decode' / 'component.yaml'}"])
    assert misfit.exit_code == 2
    assert "the replacement for step 'synthesize' does not fit" in misfit.output
    unknown = cli.invoke(app, ["pipeline", "compile", "-o", str(out),
                               "--component", f"synthesise={theirs}"])
    assert unknown.exit_code == 2 and "unknown steps ['synthesise']" in unknown.output


# --------------------------------------------------------------------------- schedule
def _schedule(kfp, *extra, name="nightly", runway=True):
    """``runway=False``: --no-budget-check, for the tests that are not about the budget
    (counting the runway takes seconds of PLD accounting)."""
    check = [] if runway else ["--no-budget-check"]
    return cli.invoke(app, ["pipeline", "schedule", "--host", kfp.url, "--cron", "0 0 3 * * *",
                            "--name", name, *DIGITS, *check, *extra])


def test_schedule_uploads_the_package_as_a_version_and_schedules_it_without_catchup(ledger):
    with FakeKfp() as kfp:
        result = _schedule(kfp, "--version-name", "abc123")
    assert result.exit_code == 0, result.output
    (pipeline,) = kfp.pipelines.values()
    assert pipeline["display_name"] == "dpsynth"
    (version,) = kfp.versions.values()
    assert version["display_name"] == "abc123"
    assert kfp.uploads[version["pipeline_version_id"]] == COMMITTED.read_bytes()
    (job,) = kfp.posted("/recurringruns")
    assert job["no_catchup"] is True
    assert job["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"]}
    assert job.get("pipeline_spec") is None
    assert job["runtime_config"]["parameters"]["epsilon"] == 8
    assert "uploaded" in result.output and "'abc123'" in result.output


def test_schedule_upserts_by_name():
    """Two schedules with the same name leave one recurring run; the same package is the
    same version; another version name uploads a new version into the same pipeline."""
    with FakeKfp() as kfp:
        first = _schedule(kfp, runway=False)
        again = _schedule(kfp, runway=False)
        newer = _schedule(kfp, "--version-name", "v2", "--cron", "0 0 4 * * *", runway=False)
        other = _schedule(kfp, name="weekly", runway=False)
    for result in (first, again, newer, other):
        assert result.exit_code == 0, result.output
    assert "scheduled 'nightly'" in first.output and "replaced 'nightly'" in again.output
    assert "reusing it" in again.output
    assert len(kfp.pipelines) == 1
    assert sorted(v["display_name"] for v in kfp.versions.values())[1] == "v2"
    assert len(kfp.versions) == 2
    runs = sorted(kfp.recurring_runs.values(), key=lambda r: r["display_name"])
    assert [r["display_name"] for r in runs] == ["nightly", "weekly"]
    assert runs[0]["trigger"]["cron_schedule"]["cron"] == "0 0 4 * * *"
    assert len(kfp.posted("/recurringruns")) == 4


def test_pause_and_resume_by_name_and_a_replaced_schedule_stays_paused():
    with FakeKfp() as kfp:
        assert _schedule(kfp, runway=False).exit_code == 0
        paused = cli.invoke(app, ["pipeline", "pause", "--host", kfp.url, "--name", "nightly"])
        assert paused.exit_code == 0, paused.output
        assert [r["status"] for r in kfp.recurring_runs.values()] == ["DISABLED"]
        replaced = _schedule(kfp, runway=False)
        assert replaced.exit_code == 0, replaced.output
        assert "paused" in replaced.output
        (run,) = kfp.recurring_runs.values()
        assert run["status"] == "DISABLED" and run["mode"] == "DISABLE"
        resumed = cli.invoke(app, ["pipeline", "resume", "--host", kfp.url,
                                   "--name", "nightly"])
        assert resumed.exit_code == 0, resumed.output
        assert [r["status"] for r in kfp.recurring_runs.values()] == ["ENABLED"]
        missing = cli.invoke(app, ["pipeline", "pause", "--host", kfp.url,
                                   "--name", "nope"])
    assert missing.exit_code == 2 and "no recurring run named 'nope'" in missing.output


def _scheduled_config():
    from dpsynth.config import load_config

    return load_config("configs/digits-quick.yaml", ["data.source=digits",
                                                     "encoder.name=pixels",
                                                     "privacy.epsilon=8"])


def test_schedule_prints_the_runway_and_refuses_once_the_budget_is_spent(ledger):
    from dpsynth import steps
    from dpsynth.privacy.ledger import LedgerEntry, composed_epsilon
    from dpsynth.privacy.ledger_store import open_ledger

    cfg = _scheduled_config()
    entry = LedgerEntry.from_plan(steps.make_plan(cfg), cfg.data.ledger_id())
    budget = cfg.privacy.budget
    with FakeKfp() as kfp:
        result = _schedule(kfp)
    assert result.exit_code == 0, result.output
    runway = int(result.output.split("budget runway: ")[1].split()[0])
    # The plan step's own check: `runway` runs fit, one more does not.
    assert composed_epsilon([entry] * runway, budget.delta) <= budget.epsilon
    assert composed_epsilon([entry] * (runway + 1), budget.delta) > budget.epsilon
    assert f"eps {budget.epsilon:.3g} at delta {budget.delta:g}" in result.output

    with open_ledger(ledger) as store:
        for _ in range(runway):
            assert store.charge(entry, budget.epsilon, budget.delta).ok
    with FakeKfp() as kfp:
        refused = _schedule(kfp)
    assert refused.exit_code == 2
    assert "Refusing to schedule" in refused.output and "limit eps = 20" in refused.output
    assert kfp.requests == []


def test_schedule_of_a_dataset_marked_non_private_has_no_limit(ledger):
    from dpsynth import steps
    from dpsynth.privacy.ledger import LedgerEntry
    from dpsynth.privacy.ledger_store import open_ledger

    cfg = _scheduled_config()
    entry = LedgerEntry.from_plan(steps.make_plan(cfg), cfg.data.ledger_id())
    with open_ledger(ledger) as store:  # the owner's marking: budget epsilon = inf
        assert store.charge(entry, float("inf"), 1e-4).nonprivate is not None
    with FakeKfp() as kfp:
        result = _schedule(kfp)
    assert result.exit_code == 0, result.output
    assert "budget runway: no limit" in result.output and "non-private" in result.output


def test_schedule_without_a_ledger_is_refused_unless_the_check_is_skipped(monkeypatch):
    monkeypatch.delenv("DPSYNTH_LEDGER_URI", raising=False)
    with FakeKfp() as kfp:
        refused = _schedule(kfp)
        skipped = _schedule(kfp, "--no-budget-check")
    assert refused.exit_code == 2 and "--ledger-uri" in refused.output
    assert skipped.exit_code == 0, skipped.output
    assert "not checked" in skipped.output
    assert len(kfp.recurring_runs) == 1


def test_namespace_and_token_reach_every_request(monkeypatch, tmp_path):
    monkeypatch.setenv("KFP_TOKEN", "s3cret-token")
    with FakeKfp() as kfp:
        result = _schedule(kfp, "--namespace", "team-a", runway=False)
    assert result.exit_code == 0, result.output
    assert kfp.headers and all(h.get("authorization") == "Bearer s3cret-token"
                               for h in kfp.headers)
    assert "s3cret-token" not in result.output
    assert [e["namespace"] for e in kfp.posted("/experiments")] == ["team-a"]
    assert [p["namespace"] for p in kfp.posted("/pipelines")] == ["team-a"]
    listed = [q for (m, p, _), q in zip(kfp.requests, kfp.queries, strict=True)
              if m == "GET" and p.endswith("/pipelines")]
    assert listed and all(q["namespace"] == ["team-a"] for q in listed)

    monkeypatch.delenv("KFP_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    with FakeKfp() as kfp:
        result = cli.invoke(app, ["pipeline", "pause", "--host", kfp.url, "--token-file",
                                  str(token_file)])
    assert result.exit_code == 2  # nothing to pause: the requests still carry the token
    assert kfp.headers and all(h.get("authorization") == "Bearer file-token"
                               for h in kfp.headers)
    both = cli.invoke(app, ["pipeline", "submit", "--host", "http://127.0.0.1:9", "--token",
                            "t", "--token-file", str(token_file)])
    assert both.exit_code == 2 and "not both" in both.output


@pytest.fixture
def tls_cert(tmp_path):
    """A self-signed certificate for 127.0.0.1: (certificate = CA bundle, key)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "ca.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def test_ca_bundle_verifies_a_private_tls_certificate(tls_cert):
    cert, key = tls_cert
    with FakeKfp(tls=(str(cert), str(key))) as kfp:
        assert kfp.url.startswith("https://")
        untrusted = cli.invoke(app, ["pipeline", "submit", "--host", kfp.url])
        trusted = cli.invoke(app, ["pipeline", "submit", "--host", kfp.url,
                                   "--ca-bundle", str(cert)])
    assert untrusted.exit_code == 2 and "CERTIFICATE_VERIFY_FAILED" in untrusted.output
    assert trusted.exit_code == 0, trusted.output
    assert "submitted run run-1" in trusted.output
    missing = cli.invoke(app, ["pipeline", "schedule", "--host", kfp.url, "--cron",
                               "0 0 3 * * *", "--no-budget-check", "--ca-bundle",
                               str(cert.with_name("none.pem"))])
    assert missing.exit_code == 2 and "--ca-bundle" in missing.output
