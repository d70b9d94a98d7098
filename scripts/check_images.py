"""Runs the default pipeline's CPU steps inside the built CPU image, each with the command
its component spec gives, and checks that the CUDA image imports its GPU stack.

    scripts/check-images.sh            # the wrapper: .venv's Python, buildah

Each step runs as Kubeflow would run it: the container command and args of
components/<step>/component.yaml, the executor input built by kfp's own local runner code
(kfp.local.executor_input_utils, placeholder_utils), outputs read back the same way, and
each step fed the outputs of the steps before it. Only the executor is replaced: `buildah
run --isolation chroot` in a working container of the image, with the work folder mounted
at the same path, instead of a pod.

encode is a GPU step: it runs in the CUDA image when that image exists (with the
encode_allow_cpu parameter set, since there is no GPU here and the image sets
DPSYNTH_REQUIRE_CUDA), else in the CPU image, only to feed the CPU steps their embeddings.
decode (GPU) runs in the CUDA image likewise, when it exists and the config decodes.

The result (each step's status and time, the CUDA image's imports, torch.version.cuda)
is merged into the "check" key of the results file that scripts/build-images.sh writes its
build times and image sizes to.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format
from kfp.local import executor_input_utils, executor_output_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

from dpsynth.config import load_config
from dpsynth_kfp.parameters import arguments

ROOT = Path(__file__).resolve().parents[1]
#: The GPU stack the CUDA image must import (module names).
CUDA_IMPORTS = ("torch", "timm", "open_clip", "diffusers", "sentence_transformers")


class Container:
    """A buildah working container of ``image``, the work folder mounted at its own path."""

    def __init__(self, image: str, work: Path):
        self.image, self.work = image, work
        self.name = subprocess.run(["buildah", "from", "--pull-never", image], check=True,
                                   capture_output=True, text=True).stdout.strip()

    def run(self, command: list[str], env: dict[str, str], log: Path) -> int:
        # HOME: buildah run does not set it from the image's USER; matplotlib and torch
        # hub want a writable one.
        env = {"HOME": "/home/dpsynth", **env}
        argv = ["buildah", "run", "--isolation", "chroot",
                "--volume", f"{self.work}:{self.work}"]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        with log.open("w") as out:
            return subprocess.run([*argv, self.name, "--", *command], stdout=out,
                                  stderr=subprocess.STDOUT).returncode

    def remove(self) -> None:
        subprocess.run(["buildah", "rm", self.name], check=False, capture_output=True)


def load_spec(step: str):
    """(component spec, container spec) of components/<step>/component.yaml."""
    doc = yaml.safe_load((ROOT / "components" / step / "component.yaml").read_text())
    pipeline = json_format.ParseDict(doc, pipeline_spec_pb2.PipelineSpec(),
                                     ignore_unknown_fields=True)
    (component,) = pipeline.components.values()
    (executor,) = pipeline.deployment_spec.fields["executors"].struct_value.fields.values()
    container = json_format.MessageToDict(executor.struct_value)["container"]
    return component, container


def run_step(step: str, box: Container, work: Path, args: dict[str, Any],
             env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Runs ``step`` with ``args`` (parameters and input artifacts) in ``box``: (its
    outputs, its record)."""
    component, container = load_spec(step)
    task = f"{step}-{uuid.uuid4().hex[:6]}"
    task_root = work / "pipeline" / task
    task_root.mkdir(parents=True)
    executor_input = executor_input_utils.construct_executor_input(
        component_spec=component, arguments=args, task_root=str(task_root),
        block_input_artifact=False)
    command = placeholder_utils.replace_placeholders(
        full_command=[*container["command"], *container.get("args", [])],
        executor_input_dict=executor_input_utils.executor_input_to_dict(
            executor_input=executor_input, component_spec=component),
        pipeline_resource_name="check-images", task_resource_name=task,
        pipeline_root=str(work / "pipeline"), unique_pipeline_id=uuid.uuid4().hex)
    env = {**{e["name"]: e["value"] for e in container.get("env", [])}, **env}
    # The image runs as uid 10001: the task's folder must be writable by it.
    for path in (task_root, *task_root.parents):
        if path == work.parent:
            break
        path.chmod(0o777)
    log = work / "logs" / f"{task}.log"
    start = time.perf_counter()
    rc = box.run(command, env, log)
    seconds = round(time.perf_counter() - start, 1)
    record = {"image": box.image, "status": "pass" if rc == 0 else "fail",
              "returncode": rc, "seconds": seconds, "log": str(log.relative_to(work))}
    print(f"{step:12s} {record['status']} {seconds:7.1f}s  ({box.image})", flush=True)
    if rc != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        return {}, record
    outputs = executor_output_utils.get_outputs_for_task(executor_input=executor_input,
                                                         component_spec=component)
    return outputs, record


def plan_arguments(config_path: Path, run_id: str, allow_cpu_encode: bool) -> dict[str, Any]:
    """The plan task's inputs for ``config_path``, as `dpsynth pipeline run-local -c`
    passes them: the whole config, and each parameter carrying the config's own value."""
    component, _ = load_spec("plan")
    declared = set(component.input_definitions.parameters)
    values = arguments(load_config(config_path))
    # The file's own text, as run-local sends it: arguments()' config_yaml is the config
    # as resolved here, host paths included (encoder.cache_dir under this $HOME).
    values["config_yaml"] = config_path.read_text()
    # The pipeline's parameter names, as plan's inputs (extra_overrides -> overrides).
    from dpsynth_kfp.parameters import PARAMETERS
    args = {p.input_name: values[p.name] for p in PARAMETERS
            if p.name in values and p.input_name in declared}
    args["kfp_run_id"] = run_id
    if allow_cpu_encode:
        args["encode_allow_cpu"] = args["decode_allow_cpu"] = True
    return args


def refuses_cpu(box: Container, work: Path, config: Any) -> dict[str, Any]:
    """encode in the CUDA image with the run's config but encoder.allow_cpu off: with no
    GPU here, DPSYNTH_REQUIRE_CUDA=1 must make it stop, not encode on CPU."""
    from kfp import dsl

    strict = yaml.safe_load(Path(config.path).read_text())
    strict["encoder"]["allow_cpu"] = False
    path = work / "config-allow-cpu-off.yaml"
    path.write_text(yaml.safe_dump(strict, sort_keys=False))
    print("encode without allow_cpu in the CUDA image (must refuse):", flush=True)
    _, record = run_step("encode", box, work,
                         {"config": dsl.Artifact(name="config", uri=str(path)),
                          "split": "test", "part": 0, "parts": 1}, {})
    said = [line for line in (work / record["log"]).read_text().splitlines()
            if "DPSYNTH_REQUIRE_CUDA" in line]
    refused = record["status"] == "fail" and bool(said)
    return {"status": "pass" if refused else "fail", "encode_exit": record["returncode"],
            "seconds": record["seconds"], "message": said[-1][:400] if said else None}


def check_cuda_image(image: str, work: Path) -> dict[str, Any]:
    box = Container(image, work)
    try:
        script = ("import importlib, json, os, time\n"
                  "out = {}\n"
                  f"for name in {CUDA_IMPORTS!r}:\n"
                  "    t = time.perf_counter()\n"
                  "    m = importlib.import_module(name)\n"
                  "    out[name] = {'version': getattr(m, '__version__', None),\n"
                  "                 'import_seconds': round(time.perf_counter() - t, 1)}\n"
                  "import torch\n"
                  "out['torch.version.cuda'] = torch.version.cuda\n"
                  "out['torch.cuda.is_available'] = torch.cuda.is_available()\n"
                  "out['DPSYNTH_REQUIRE_CUDA'] = os.environ.get('DPSYNTH_REQUIRE_CUDA')\n"
                  "print('RESULT ' + json.dumps(out))\n")
        log = work / "logs" / "cuda-imports.log"
        start = time.perf_counter()
        rc = box.run(["python", "-c", script], {}, log)
        seconds = round(time.perf_counter() - start, 1)
        text = log.read_text()
        found = [line[7:] for line in text.splitlines() if line.startswith("RESULT ")]
        result = {"image": image, "status": "pass" if rc == 0 and found else "fail",
                  "seconds": seconds, **(json.loads(found[-1]) if found else {})}
        if result["status"] == "fail":
            result["log_tail"] = text[-2000:]
        print(f"cuda imports {result['status']} {seconds:7.1f}s  "
              f"torch.version.cuda={result.get('torch.version.cuda')}", flush=True)
        return result
    finally:
        box.remove()


def image_exists(image: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", image],
                          capture_output=True).returncode == 0


def image_id(image: str) -> str | None:
    """The image's id: ties this check to the build record of the same image."""
    done = subprocess.run(["buildah", "inspect", "--type", "image", "--format",
                           "{{.FromImageID}}", image], capture_output=True, text=True)
    return done.stdout.strip()[:12] or None if done.returncode == 0 else None


def main() -> int:
    from dpsynth_kfp.components import DEFAULT_IMAGES, image

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-image", default=None, help=f"default: {DEFAULT_IMAGES['cpu']} "
                        "or as $DPSYNTH_IMAGE_REGISTRY/$DPSYNTH_IMAGE_TAG name it")
    parser.add_argument("--cuda-image", default=None)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "digits-quick.yaml")
    parser.add_argument("--work", type=Path, default=None,
                        help="work folder (default: a fresh one under /var/tmp)")
    parser.add_argument("--results", type=Path,
                        default=ROOT / "benchmarks" / "results" / "images.json")
    opts = parser.parse_args()
    cpu_image = opts.cpu_image or image("cpu")
    cuda_image = opts.cuda_image or image("cuda")
    work = (opts.work or Path(f"/var/tmp/dpsynth-check-{uuid.uuid4().hex[:8]}")).resolve()
    if work.exists():
        shutil.rmtree(work)
    (work / "logs").mkdir(parents=True)
    (work / "pipeline").mkdir()
    for path in (work, work / "logs", work / "pipeline"):
        path.chmod(0o777)

    have_cuda = image_exists(cuda_image)
    check: dict[str, Any] = {
        "at": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "config": str(opts.config.resolve().relative_to(ROOT)),
        "runner": "buildah run --isolation chroot (no GPU)",
        "image_ids": {"cpu": image_id(cpu_image), "cuda": image_id(cuda_image)},
        # The machine is shared: its load says how far the step times are inflated.
        "cpus": os.cpu_count(), "load_average_at_start": round(os.getloadavg()[0], 2),
        "steps": {}}
    steps = check["steps"]
    cpu = Container(cpu_image, work)
    encoder_box = Container(cuda_image, work) if have_cuda else cpu
    try:
        # The MLflow store and the budget ledger, as the dpsynth-mlflow secret passes
        # them to a pod (environment): SQLite files in the work folder here.
        secret = {"MLFLOW_TRACKING_URI": f"sqlite:///{work}/mlflow.db",
                  "DPSYNTH_LEDGER_URI": f"sqlite:///{work}/ledger.db"}
        run_id = f"check-images-{uuid.uuid4().hex[:8]}"
        plan_args = plan_arguments(opts.config, run_id, allow_cpu_encode=have_cuda)
        out, steps["plan"] = run_step("plan", cpu, work, plan_args, secret)
        made: dict[str, Any] = {}
        if out:
            made.update(config=out["config"], privacy_plan=out["privacy_plan"],
                        run_id=out["Output"])
            for split in ("train", "test"):
                out, steps[f"encode[{split}]"] = run_step(
                    "encode", encoder_box, work,
                    {"config": made["config"], "split": split, "part": 0, "parts": 1}, {})
                if out:
                    made[split] = out["embeddings"]
        if "train" in made and "test" in made:
            out, steps["dp_cluster"] = run_step(
                "dp_cluster", cpu, work,
                {"embeddings": [made["train"]], "privacy_plan": made["privacy_plan"]}, {})
            made.update(out)
        if "clusters" in made:
            out, steps["fit_gmm"] = run_step(
                "fit_gmm", cpu, work, {"embeddings": [made["train"]],
                                       "clusters": made["clusters"],
                                       "privacy_plan": made["privacy_plan"]}, {})
            made.update(out)
        if "mixture" in made:
            out, steps["synthesize"] = run_step(
                "synthesize", cpu, work, {"mixture": made["mixture"], "config": made["config"],
                                          "part": 0, "parts": 1}, {})
            made.update(out)
        if "synthetic" in made and have_cuda and plan_args.get("decode"):
            # decode (GPU, CUDA image, allowed on CPU here): the pipeline runs it when the
            # encoder has a decoder; its output is not an input of evaluate.
            out, steps["decode"] = run_step(
                "decode", encoder_box, work,
                {"synthetic": made["synthetic"], "config": made["config"]}, {})
        if "synthetic" in made:
            out, steps["evaluate"] = run_step(
                "evaluate", cpu, work,
                {"synthetic": made["synthetic"], "test": made["test"],
                 "train": [made["train"]], "privacy_plan": made["privacy_plan"],
                 "config": made["config"], "run_id": made["run_id"]}, secret)
            made.update(out)
        if have_cuda and "config" in made:
            check["cuda_refuses_cpu"] = refuses_cpu(encoder_box, work, made["config"])
        if "evaluation" in made:
            metrics = Path(made["evaluation"].path) / "metrics.json"
            if metrics.exists():
                # The scalars only (accuracy, epsilon, ...): per-class lists and the
                # confusion matrix stay in the work folder.
                check["metrics"] = {k: v for k, v in json.loads(metrics.read_text()).items()
                                    if isinstance(v, int | float | bool) or k == "encoder"}
    finally:
        cpu.remove()
        if encoder_box is not cpu:
            encoder_box.remove()
    expected = ["plan", "encode[train]", "encode[test]", "dp_cluster", "fit_gmm",
                "synthesize", "evaluate"]
    for name in expected:
        steps.setdefault(name, {"status": "not run (an earlier step failed)"})
    check["cpu_steps_pass"] = all(steps[s]["status"] == "pass" for s in expected)
    check["gpu_steps_on_cpu"] = {s: steps[s]["status"] for s in steps
                                 if s.startswith(("encode", "decode"))}
    check["load_average_at_end"] = round(os.getloadavg()[0], 2)
    check["cuda_imports"] = (check_cuda_image(cuda_image, work) if have_cuda
                             else {"image": cuda_image, "status": "not built"})

    doc = json.loads(opts.results.read_text()) if opts.results.exists() else {}
    doc["check"] = check
    opts.results.parent.mkdir(parents=True, exist_ok=True)
    opts.results.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    print(f"results: {opts.results}  (work folder, logs: {work})")
    ok = all(r["status"] == "pass" for r in steps.values()) and \
        check["cuda_imports"]["status"] == "pass" and \
        check.get("cuda_refuses_cpu", {}).get("status") == "pass"
    return 0 if ok else 1


if __name__ == "__main__":
    os.umask(0o000)  # files the host writes into the work folder: readable by uid 10001
    sys.exit(main())
