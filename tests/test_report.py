"""The HTML report (dpsynth.evaluation.report): what a reader sees on the page.

The pinning test renders fixed inputs and compares the page's visible content (title,
headings, paragraphs, table rows, links, embedded images, in order) to the content the
report showed before it was rebuilt from templates: the markup may change, the facts may
not.
"""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from dpsynth.evaluation.report import write_html_report

_BLOCKS = {"title", "h1", "h2", "p", "th", "td"}


class _Visible(HTMLParser):
    """The page as a list of what is seen, in order: ``(tag, text)`` for the title,
    headings and paragraphs (``tag.warn`` when styled as a warning), ``("row", cells)`` for
    a table row, ``("a", href, text)``, ``("img", alt, src)`` and ``("code", text)``."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.items: list[tuple] = []
        self._stack: list[tuple[str, list[str]]] = []  # open text blocks
        self._row: list[str] | None = None
        self._link: tuple[str, list[str]] | None = None
        self._code: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in _BLOCKS:
            warn = ".warn" if "warn" in (a.get("class") or "").split() else ""
            self._stack.append((tag + warn, []))
        elif tag == "tr":
            self._row = []
        elif tag == "a":
            self._link = (a.get("href") or "", [])
        elif tag == "code":
            self._code = []
        elif tag == "img":
            self.items.append(("img", a.get("alt"), a.get("src")))

    def handle_endtag(self, tag):
        if tag in _BLOCKS and self._stack:
            name, parts = self._stack.pop()
            text = " ".join("".join(parts).split())
            if tag in ("th", "td") and self._row is not None:
                self._row.append(text)
            elif text:
                self.items.append((name, text))
            if self._stack:  # text of a nested block also belongs to the outer one
                self._stack[-1][1].append(" " + text + " ")
        elif tag == "tr" and self._row is not None:
            self.items.append(("row", self._row))
            self._row = None
        elif tag == "a" and self._link is not None:
            href, parts = self._link
            self.items.append(("a", href, " ".join("".join(parts).split())))
            self._link = None
        elif tag == "code" and self._code is not None:
            self.items.append(("code", " ".join("".join(self._code).split())))
            self._code = None

    def handle_data(self, data):
        if self._stack:
            self._stack[-1][1].append(data)
        if self._link is not None:
            self._link[1].append(data)
        if self._code is not None:
            self._code.append(data)


def visible(html_text: str) -> list[tuple]:
    parser = _Visible()
    parser.feed(html_text)
    parser.close()
    return parser.items


def _png(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 20), color).save(path)
    return path


def _uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


#: A plan as ``PrivacyPlan.to_dict`` writes it: a class count release sets the threshold.
PLAN = {
    "private": True, "noise_seeded": False, "target_epsilon": 1.0, "delta": 1e-5,
    "epsilon": 0.99871234, "epsilon_rdp": 1.2345678,
    "accountant": "dp_accounting PLD (add/remove one record); RDP cross-check",
    "composition": "sequential over releases",
    "noise_scale": 3.5,
    "releases": [
        {"name": "class_counts", "sensitivity": 1.0, "noise_multiplier": 4.0,
         "repetitions": 1, "scope": "global", "description": "records per class",
         "mechanism": "dpsynth.gmm.subspace:noisy_counts", "sigma": 4.0},
        {"name": "subspace_second_moment", "sensitivity": 2.0, "noise_multiplier": 1.5,
         "repetitions": 3, "scope": "per_class", "description": "second moment & more",
         "mechanism": "dpsynth.gmm.subspace:second_moment", "sigma": 3.0},
    ],
    "metadata": {},
}

METRICS = {
    "accuracy": 0.8125, "nonprivate_accuracy": 0.93, "epsilon": 1.0, "delta": 1e-5,
    "private": True, "frechet_distance_to_test": 12.345678, "n_synthetic": 400,
    "n_test": 20, "encoder": "efficientnet-lite0", "encoder_options": {"image_size": 128},
    "note": "accuracy: MLP trained only on DP synthetic embeddings. No synthetic samples: "
            "tiny.",
    "classes_without_samples": [
        {"class": 3, "name": "tiny", "reason": "below the noise threshold (12.0)"},
        {"class": 4, "name": "cats & dogs", "reason": "no synthetic record was drawn for it"},
    ],
}


@pytest.fixture
def images(tmp_path):
    plots = tmp_path / "eval" / "plots"
    return {"projection": _png(plots / "projection.png", (200, 30, 30)),
            "confusion_matrix": _png(plots / "confusion_matrix.png", (30, 200, 30)),
            "decoded_samples": _png(tmp_path / "decoded" / "grid.png", (30, 30, 200)),
            "extra_plot": _png(plots / "extra_plot.png", (90, 90, 90))}


def test_the_report_shows_the_same_facts_as_before_it_was_templated(tmp_path, images):
    """Pinned from the string-built report (commit 42d621f) for these inputs."""
    path = write_html_report(tmp_path / "eval" / "report.html", METRICS, PLAN, images)
    assert path == tmp_path / "eval" / "report.html"
    uri = {k: _uri(v) for k, v in images.items()}
    assert visible(path.read_text()) == EXPECTED(uri)


def EXPECTED(uri: dict[str, str]) -> list[tuple]:  # noqa: N802 (a constant, given the images)
    sections = []
    for key, title, rel in (
            ("projection", "Synthetic vs real test embeddings (2-D projection)",
             "plots/projection.png"),
            ("confusion_matrix", "Confusion matrix (MLP trained on synthetic, real test set)",
             "plots/confusion_matrix.png"),
            ("decoded_samples", "Decoded synthetic samples, one row per class",
             "../decoded/grid.png"),
            ("extra_plot", "extra_plot", "plots/extra_plot.png")):
        sections += [("h2", title), ("a", rel, rel), ("p", rel), ("img", key, uri[key])]
    return [
        ("title", "dpsynth report"),
        ("h1", "dpsynth run report"),
        ("row", ["Accuracy, MLP trained on DP synthetic data", "81.2%"]),
        ("row", ["Accuracy, same MLP trained on real data (non-private ceiling)", "93.0%"]),
        ("row", ["Privacy guarantee of the synthetic data", "(1, 1e-05)-DP"]),
        ("row", ["Fréchet distance, synthetic vs real test embeddings", "12.35"]),
        ("row", ["Synthetic records / test records", "400 / 20"]),
        ("row", ["Encoder", "efficientnet-lite0, image_size=128"]),
        ("p", "accuracy: MLP trained only on DP synthetic embeddings. No synthetic samples: "
              "tiny."),
        ("h2.warn", "Classes without synthetic samples"),
        ("p", "These classes are in the class list but got no synthetic record, so a model "
              "trained on the synthetic data cannot predict them."),
        ("row", ["class", "why"]),
        ("row", ["tiny", "below the noise threshold (12.0)"]),
        ("row", ["cats & dogs", "no synthetic record was drawn for it"]),
        *sections,
        ("h2", "Privacy plan"),
        ("p", "Every noisy release, its L2 sensitivity and Gaussian noise; composed with "
              "dp_accounting PLD (add/remove one record); RDP cross-check: epsilon = 0.9987 "
              "at delta = 1e-05 (RDP bound 1.235)."),
        ("row", ["release", "scope", "sensitivity", "sigma", "repetitions", "what",
                 "noise added by"]),
        ("code", "dpsynth.gmm.subspace:noisy_counts"),
        ("row", ["class_counts", "global", "1", "4", "1", "records per class",
                 "dpsynth.gmm.subspace:noisy_counts"]),
        ("code", "dpsynth.gmm.subspace:second_moment"),
        ("row", ["subspace_second_moment", "per_class", "2", "3", "3", "second moment & more",
                 "dpsynth.gmm.subspace:second_moment"]),
        ("p", "smallest releasable class: about 12 records (a class is released only when its "
              "noisy count reaches 12.0 = max(3 sigma, 2), sigma = 4 in 'class_counts'); 20+ "
              "records: released with 97.7% probability. A smaller class likely gets no synthetic "
              "samples."),
    ]


_HEAD = [("title", "dpsynth report"), ("h1", "dpsynth run report")]
_NOT_PRIVATE = [("row", ["Privacy guarantee of the synthetic data",
                         "NOT private (non-private mode or a fixed noise seed)"])]
_WARNING = [("p.warn", "This run is not private. Do not share its outputs as DP data.")]


def test_a_run_that_is_not_private_says_so_and_shows_no_empty_sections(tmp_path):
    """Pinned as before: no plan, no images, every class sampled, an empty note."""
    metrics = {"accuracy": 0.5, "nonprivate_accuracy": None, "epsilon": float("inf"),
               "delta": 0.0, "private": False, "frechet_distance_to_test": 3.0,
               "n_synthetic": 10, "n_test": 5, "encoder": "pixels", "note": "",
               "classes_without_samples": []}
    text = write_html_report(tmp_path / "report.html", metrics, None, {}).read_text()
    assert visible(text) == [
        *_HEAD,
        ("row", ["Accuracy, MLP trained on DP synthetic data", "50.0%"]),
        ("row", ["Accuracy, same MLP trained on real data (non-private ceiling)", "n/a"]),
        *_NOT_PRIVATE,
        ("row", ["Fréchet distance, synthetic vs real test embeddings", "3"]),
        ("row", ["Synthetic records / test records", "10 / 5"]),
        ("row", ["Encoder", "pixels"]),
        *_WARNING,
    ]
    assert "<img" not in text


def test_missing_numbers_read_as_before(tmp_path):
    """Pinned as before: metrics without the numbers, a plan without releases."""
    text = write_html_report(tmp_path / "report.html", {}, {"releases": []}, {}).read_text()
    assert visible(text) == [
        *_HEAD,
        ("row", ["Accuracy, MLP trained on DP synthetic data", "n/a"]),
        ("row", ["Accuracy, same MLP trained on real data (non-private ceiling)", "n/a"]),
        *_NOT_PRIVATE,
        ("row", ["Fréchet distance, synthetic vs real test embeddings", "None"]),
        ("row", ["Synthetic records / test records", "None / None"]),
        ("row", ["Encoder", "None"]),
        *_WARNING,
        ("h2", "Privacy plan"),
        ("p", "Every noisy release, its L2 sensitivity and Gaussian noise; composed with "
              "None: epsilon = None at delta = None (RDP bound None)."),
        ("row", ["release", "scope", "sensitivity", "sigma", "repetitions", "what",
                 "noise added by"]),
    ]


def test_every_value_from_the_run_is_escaped(tmp_path, images):
    """Class names are user folder names; the note, the encoder options, the plan and the
    image paths are data too. Only the embedded images go in as they are."""
    evil = "<script>alert(1)</script>"
    metrics = {**METRICS, "note": f"No synthetic samples: {evil}.",
               "encoder": f"enc{evil}", "encoder_options": {evil: f"'{evil}\""},
               "classes_without_samples": [{"class": 0, "name": evil, "reason": f"why {evil}"}]}
    plan = {**PLAN, "accountant": evil,
            "releases": [{**PLAN["releases"][0], "description": evil, "mechanism": evil}]}
    odd = {f"plot{evil}": _png(tmp_path / "eval" / "plots" / "it's <b>.png", (1, 2, 3))}
    text = write_html_report(tmp_path / "eval" / "report.html", metrics, plan, odd).read_text()
    assert "<script" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    seen = visible(text)
    assert ("row", [evil, f"why {evil}"]) in seen
    assert ("row", ["Encoder", f"enc{evil}, {evil}='{evil}\""]) in seen
    assert ("p", f"No synthetic samples: {evil}.") in seen
    assert ("h2", f"plot{evil}") in seen
    assert ("a", "plots/it's <b>.png", "plots/it's <b>.png") in seen
    assert ("img", f"plot{evil}", _uri(next(iter(odd.values())))) in seen
    assert ("code", evil) in seen
    assert any(t[0] == "p" and f"composed with {evil}:" in t[1] for t in seen)
