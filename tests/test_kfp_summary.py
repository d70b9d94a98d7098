"""The evaluate task's Markdown summary in the Kubeflow UI names, by class name, the classes
that got no samples and those released but noise-dominated (issue 25, item 1)."""

from __future__ import annotations

from dpsynth_kfp.summary import summary_markdown

METRICS = {"accuracy": 0.5, "epsilon": 4.0, "delta": 1e-5, "private": True,
           "nonprivate_accuracy": 0.9, "classes_without_samples": [],
           "classes_noise_dominated": []}


def test_a_clean_run_says_accuracy_guarantee_and_ceiling_only():
    text = summary_markdown(METRICS)
    assert "50.0%" in text and "(eps=4.0, delta=1e-05)" in text and "90.0%" in text
    assert "noise-dominated" not in text and "no samples" not in text
    assert "NOT PRIVATE" in summary_markdown({**METRICS, "private": False})


def test_noise_dominated_and_dropped_classes_are_named():
    text = summary_markdown({
        **METRICS,
        "classes_noise_dominated": [
            {"class": 4, "name": "Coat", "noise_to_signal": 1.88, "records_needed": 87},
            {"class": 6, "name": "Shirt", "noise_to_signal": None, "records_needed": 87}],
        "classes_without_samples": [{"class": 2, "name": "Pullover"}]})
    assert ("released but noise-dominated**: class 'Coat' (noise-to-signal 1.88; about 87+ "
            "records needed at this eps)") in text
    assert "class 'Shirt' (no signal above the noise" in text
    assert "**no samples**: class 'Pullover'" in text
