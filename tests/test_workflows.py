"""The CI workflow that deploys the scheduled retraining (.github/workflows/retrain.yml) and
its GitLab example (ci/gitlab-ci.example.yml): valid for GitHub/GitLab (check-jsonschema's
bundled schemas), and consistent with this repository (the Dockerfiles they build, the
`dpsynth pipeline` options they pass, secrets by reference)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from dpsynth.cli import app

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "retrain.yml"
GITLAB = ROOT / "ci" / "gitlab-ci.example.yml"


def _workflow() -> dict:
    data = yaml.safe_load(WORKFLOW.read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def _steps(data: dict) -> list[dict]:
    return [step for job in data["jobs"].values() for step in job.get("steps", [])]


@pytest.mark.parametrize(("path", "schema"), [(WORKFLOW, "vendor.github-workflows"),
                                            (GITLAB, "vendor.gitlab-ci")])
def test_workflow_validates_against_the_ci_schema(path, schema):
    pytest.importorskip("check_jsonschema", reason="pip install -e '.[dev]'")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema, str(path)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_workflow_has_a_cron_and_a_manual_trigger_with_inputs():
    on = _workflow()["on"]
    (entry,) = on["schedule"]
    assert len(entry["cron"].split()) == 5  # GitHub's cron; the KFP cron is an input
    inputs = on["workflow_dispatch"]["inputs"]
    assert {"action", "kfp_cron", "recurring_run_name", "epsilon"} <= set(inputs)
    assert set(inputs["action"]["options"]) == {"schedule", "pause", "resume"}
    assert len(inputs["kfp_cron"]["default"].split()) == 6  # seconds first


def test_every_dockerfile_in_the_matrix_exists_and_every_dockerfile_is_built():
    images = _workflow()["jobs"]["images"]
    rows = images["strategy"]["matrix"]["include"]
    built = {row["dockerfile"] for row in rows}
    present = {str(p.relative_to(ROOT)) for p in (ROOT / "components").glob("Dockerfile*")}
    assert built == present, ("edit the matrix of jobs.images in .github/workflows/retrain.yml: "
                              f"it builds {sorted(built)}, components/ has {sorted(present)}")
    gitlab = yaml.safe_load(GITLAB.read_text())["images"]["parallel"]["matrix"]
    assert {row["DOCKERFILE"] for row in gitlab} == present, "and in ci/gitlab-ci.example.yml"
    (push,) = [s for s in images["steps"] if s.get("uses", "").startswith(
        "docker/build-push-action@")]
    assert push["with"]["file"] == "${{ matrix.dockerfile }}"
    assert push["with"]["push"] is True


def test_secrets_are_referenced_never_inline():
    text = WORKFLOW.read_text()
    data = _workflow()
    sensitive = re.compile(r"token|password|ledger_uri|ca_bundle|username|host$", re.I)
    for where in [data.get("env", {}), *(j.get("env", {}) for j in data["jobs"].values()),
                  *(s.get("with", {}) for s in _steps(data))]:
        for key, value in where.items():
            if sensitive.search(key) and key not in ("registry",):
                assert re.fullmatch(r"\$\{\{ secrets\.[A-Z_]+ \}\}", str(value)), (key, value)
    # Inputs reach shell scripts through env, never spliced into them (script injection).
    for step in _steps(data):
        assert "${{" not in step.get("run", ""), step["run"]
    assert "secrets.KFP_TOKEN" in text and "--token " not in text
    # GitLab: the same names come from masked CI/CD variables, never from the file.
    gitlab = yaml.safe_load(GITLAB.read_text())
    for where in (gitlab["variables"], *(j.get("variables", {}) for j in gitlab.values()
                                         if isinstance(j, dict))):
        assert not [k for k in where if sensitive.search(k)], where
    assert "--token " not in GITLAB.read_text()


def _options(*path: str) -> set[str]:
    command = get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def test_the_dpsynth_commands_it_runs_take_the_options_it_passes():
    runs = "\n".join(s.get("run", "") for s in _steps(_workflow())).replace("\\\n", " ")
    gitlab = "\n".join(yaml.safe_load(GITLAB.read_text())["deploy"]["script"])
    calls = [line.strip().replace("$args", "$KFP_ARGS")
             for line in (runs + "\n" + gitlab).splitlines()
             if line.strip().startswith("dpsynth ")]
    assert len(calls) == 6, calls
    assert any(c.startswith("dpsynth pipeline schedule") for c in calls)
    assert any(c.startswith("dpsynth pipeline compile") for c in calls)
    for call in calls:
        words = shlex.split(call.replace("$KFP_ARGS", "--namespace x --ca-bundle x"))
        sub = words[2] if not words[2].startswith("$") else "pause"
        passed = {w for w in words if w.startswith("--")}
        assert passed <= _options("pipeline", sub), (call, passed - _options("pipeline", sub))
    for sub in ("pause", "resume"):
        assert {"--name", "--experiment", "--host", "--namespace", "--ca-bundle"} <= _options(
            "pipeline", sub)


def test_tests_gate_the_build_and_the_deploy():
    jobs = _workflow()["jobs"]
    (run,) = [s["run"] for s in jobs["test"]["steps"] if "run" in s]
    assert run.strip() == "bash scripts/test.sh"  # the README's test command
    assert jobs["images"]["needs"] == "test"
    assert set(jobs["deploy"]["needs"]) == {"test", "images"}
    gitlab = yaml.safe_load(GITLAB.read_text())
    assert gitlab["stages"][0] == "test" and gitlab["test"]["script"] == [
        "bash scripts/test.sh"]


def test_the_pipeline_is_compiled_by_digest_for_an_overlay_and_gated_on_production():
    """The compiled images are the digests the pushes returned, the cluster settings are
    the chosen overlay's, and the default accuracy gate is relative to production."""
    data = _workflow()
    runs = "\n".join(s.get("run", "") for s in _steps(data)).replace("\\\n", " ")
    gitlab = "\n".join(yaml.safe_load(GITLAB.read_text())["deploy"]["script"])
    overlays = sorted(p.parent.name for p in (ROOT / "manifests" / "overlays").glob(
        "*/cluster-settings.yaml"))
    assert data["on"]["workflow_dispatch"]["inputs"]["overlay"]["options"] == sorted(
        overlays, reverse=True)
    for text in (runs, gitlab):
        (compile_,) = [line for line in text.splitlines()
                       if line.strip().startswith("dpsynth pipeline compile")]
        assert '--cluster-settings "manifests/overlays/$OVERLAY/cluster-settings.yaml"' in \
            compile_
        assert '--image "cpu=$(cat digests/cpu)"' in compile_
        assert '--image "cuda=$(cat digests/cuda)"' in compile_
        assert '--param "accuracy_tolerance=$ACCURACY_TOLERANCE"' in text
        assert "--param promote=true" in text
    record = [s for s in data["jobs"]["images"]["steps"] if s.get("name") ==
              "Record the digest"]
    assert record and record[0]["env"]["DIGEST"] == "${{ steps.push.outputs.digest }}"
    assert float(data["env"]["ACCURACY_TOLERANCE"].split("'")[1]) < 0.05


def test_the_images_are_built_from_bases_pinned_by_digest():
    """The Dockerfiles name public bases by tag (nothing here can resolve a digest); the
    workflow resolves each ARG base to the registry's digest and builds FROM that."""
    steps = _workflow()["jobs"]["images"]["steps"]
    (pin,) = [s for s in steps if s.get("id") == "base"]
    for name in ("BASE_IMAGE", "DEBIAN_IMAGE"):
        assert name in pin["run"]
    assert "imagetools inspect" in pin["run"] and "sha256:*" in pin["run"]
    (push,) = [s for s in steps if s.get("id") == "push"]
    assert push["with"]["build-args"] == "${{ steps.base.outputs.build_args }}"
    for family in ("cpu", "cuda"):
        text = (ROOT / "components" / f"Dockerfile.{family}").read_text()
        assert re.search(r"^ARG BASE_IMAGE=\S+:\S+$", text, re.M), family
