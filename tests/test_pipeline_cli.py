"""`dpsynth pipeline submit | schedule | compile` against a loopback fake KFP v2beta1 API."""

from __future__ import annotations

import yaml
from fake_kfp import FakeKfp
from mlflow_server import free_port
from typer.testing import CliRunner

from dpsynth.cli import app
from dpsynth_kfp.compile import COMMITTED

cli = CliRunner()


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


def test_schedule_creates_a_recurring_run_with_the_six_field_cron():
    with FakeKfp() as kfp:
        result = cli.invoke(app, [
            "pipeline", "schedule", "--host", kfp.url, "--cron", "0 0 3 * * *",
            "--name", "refresh", "--max-concurrency", "1", "--param", "n_samples=1000"])
    assert result.exit_code == 0, result.output
    (job,) = kfp.posted("/recurringruns")
    assert job["display_name"] == "refresh"
    assert job["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert int(job["max_concurrency"]) == 1
    assert job["pipeline_spec"] == _spec()
    assert job["runtime_config"]["parameters"] == {"n_samples": 1000}


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
