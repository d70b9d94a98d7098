"""Compile the pipeline to its YAML package."""

from pathlib import Path

from kfp import compiler

from dpsynth_kfp.pipeline import CLUSTER, ClusterSettings, build_pipeline

COMMITTED = Path(__file__).resolve().parents[2] / "pipelines" / "dpsynth_pipeline.yaml"


def compile_pipeline(output: str | Path = COMMITTED, *, encode_parts: int = 4,
                     settings: ClusterSettings = CLUSTER) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(encode_parts=encode_parts, settings=settings),
                                str(output))
    return output
