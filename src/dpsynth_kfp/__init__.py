"""Kubeflow Pipelines binding of dpsynth: components, the pipeline, and its CLI.

Arrows point one way: this package imports ``dpsynth``; ``dpsynth`` never imports it (its
CLI finds the ``pipeline`` commands through the ``dpsynth.cli`` entry point group).
"""
