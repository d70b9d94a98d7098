"""The embedding cache: damaged entries, the pre-flight check, the private index, and what a
failed write leaves behind (issue 10, items 2, 9 and 11)."""

from __future__ import annotations

import errno
import hashlib
import json
import re
import threading

import numpy as np
import pytest

from dpsynth import runner, steps
from dpsynth.config import load_config
from dpsynth.data import sources, store
from dpsynth.data.store import EmbeddingSet, check_embedding_set
from dpsynth.encoders.pixels import PixelEncoder


def _config(tmp_path, *extra):
    return load_config("configs/digits-quick.yaml",
                       [f"encoder.cache_dir={tmp_path / 'cache'}", "encoder.shard_rows=300",
                        "encoder.batch_size=100", *extra])




def _fresh(config):
    """What the train split encodes to, from scratch."""
    images, _ = steps.make_source(config.data, "train").read(0, 1437)
    return PixelEncoder((8, 8)).encode_batch(images)


def _zero_data(file):
    with open(file, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        start = f.tell()
    with open(file, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * (file.stat().st_size - start))


def _truncate(file):
    file.write_bytes(file.read_bytes()[:-100])


def _bad_manifest(file):
    (file.parent / "manifest.json").write_text('{"format": "dpsynth.embedding_set", ')


DAMAGE = {"zeroed": (_zero_data, "corrupt"), "truncated": (_truncate, "truncated"),
          "missing": (lambda f: f.unlink(), "missing"),
          "manifest": (_bad_manifest, "not valid JSON")}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_cache_entry_is_reported_discarded_and_encoded_again(
        tmp_path, counting_encoder, damage):
    config = _config(tmp_path)
    first = steps.encode(config, "train", progress=False)
    stranger = first.path / "notes.txt"  # not dpsynth's: must survive the discard
    stranger.write_text("mine")
    file = first.path / first.manifest["shards"][2]["embeddings"]
    DAMAGE[damage][0](file)
    counting_encoder.calls = 0
    with pytest.warns(steps.CacheEntryWarning, match=DAMAGE[damage][1]) as caught:
        again = steps.encode(config, "train", progress=False)
    message = str(caught[0].message)
    assert str(first.path) in message and "discarded" in message
    assert counting_encoder.calls == 5 * 3  # every shard encoded again
    assert again.path == first.path and stranger.read_text() == "mine"
    np.testing.assert_array_equal(EmbeddingSet.open(again.path).load()[0], _fresh(config))


def test_preflight_check_reports_without_encoding_or_reading_images(
        tmp_path, counting_encoder, monkeypatch):
    config = _config(tmp_path)
    assert steps.check_cached_encoding(config, "train") == "absent"
    steps.encode(config, "test", progress=False)
    assert steps.check_cached_encoding(config, "test") == "complete"
    assert steps.check_cached_encoding(config, "train") == "absent"
    assert not (tmp_path / "cache" / steps.CACHE_INDEX).joinpath(
        steps._key_digest(steps.encoding_key(config, "train")[0])).exists()

    def no_images(*args):
        raise AssertionError("the pre-flight check read images")

    monkeypatch.setattr(sources.ArraySource, "read", no_images)
    monkeypatch.setattr(steps, "make_encoder", no_images)
    assert steps.check_cached_encoding(config, "test") == "complete"
    assert steps.check_cached_encoding(_config(tmp_path, "encoder.cache=false"),
                                       "test") == "absent"


def test_preflight_check_sees_a_partial_entry_and_discards_a_corrupt_one(
        tmp_path, counting_encoder):
    config = _config(tmp_path)
    key, _ = steps.encoding_key(config, "train")
    path = steps.cache_path(config, key)
    steps.encode(config, "train", progress=False)
    manifest = json.loads((path / "manifest.json").read_text())
    # As a crash leaves it: two shards written, not complete.
    manifest.update(complete=False, shards=manifest["shards"][:2], count=600)
    store.write_json_atomic(path / "manifest.json", manifest)
    assert steps.check_cached_encoding(config, "train") == "partial"
    _zero_data(path / "shard-00001.labels.npy")
    with pytest.warns(steps.CacheEntryWarning, match="shard-00001.labels.npy.*corrupt"):
        assert steps.check_cached_encoding(config, "train") == "absent"
    assert not path.exists()  # only dpsynth's files were there
    assert steps.check_cached_encoding(config, "train") == "absent"
    counting_encoder.calls = 0
    assert steps.encode(config, "train", progress=False).path == path
    assert counting_encoder.calls == 5 * 3


def test_encode_after_the_preflight_check_does_not_hash_the_set_again(
        tmp_path, counting_encoder, monkeypatch):
    config = _config(tmp_path)
    steps.encode(config, "train", progress=False)
    monkeypatch.setattr(store, "_SETTLE_NS", 0)  # as if the entry were written long ago
    hashed = []
    real = store._sha256_file
    monkeypatch.setattr(store, "_sha256_file", lambda f: hashed.append(f) or real(f))
    assert steps.check_cached_encoding(config, "train") == "complete"
    assert len(hashed) == 10  # five shards, two files each
    es = steps.encode(config, "train", progress=False)
    assert len(hashed) == 10 and es.count == 1437


def _windows(digest: str, width: int = 8) -> set[str]:
    return {digest[i:i + width] for i in range(len(digest) - width + 1)}


def test_cache_entry_names_are_random_and_the_private_index_maps_keys_to_them(tmp_path):
    config = _config(tmp_path)
    key, source = steps.encoding_key(config, "train")
    path = steps.cache_path(config, key)
    digests = [steps._key_digest(key), source.fingerprint()["sha256"],
               hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()
                              ).hexdigest()[:12]]
    assert not any(w in path.name for d in digests for w in _windows(d))
    assert path.parent == tmp_path / "cache" and path.name.startswith("sklearn-digits-train")
    index = tmp_path / "cache" / steps.CACHE_INDEX / steps._key_digest(key)
    assert index.read_text().strip() == path.name
    assert steps.cache_path(config, key) == path  # the index is read, not re-drawn
    other = steps.cache_path(config, steps.encoding_key(config, "test")[0])
    assert other != path


def test_concurrent_encoders_of_one_key_agree_on_its_entry(tmp_path, monkeypatch):
    config = _config(tmp_path)
    key, _ = steps.encoding_key(config, "train")
    barrier = threading.Barrier(8)
    real_read = steps._read_index

    def read_then_race(file):
        found = real_read(file)
        if found is None:
            barrier.wait(timeout=10)  # every thread has seen no entry before any claims
        return found

    monkeypatch.setattr(steps, "_read_index", read_then_race)
    paths: list = []
    threads = [threading.Thread(target=lambda: paths.append(steps.cache_path(config, key)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 8 and len(set(paths)) == 1
    index = tmp_path / "cache" / steps.CACHE_INDEX
    assert [p.name for p in index.iterdir()] == [steps._key_digest(key)]  # no temp files


def test_a_damaged_index_file_is_replaced_with_a_warning_naming_no_digest(tmp_path,
                                                                          monkeypatch):
    config = _config(tmp_path)
    key, _ = steps.encoding_key(config, "train")
    first = steps.cache_path(config, key)
    index = tmp_path / "cache" / steps.CACHE_INDEX / steps._key_digest(key)
    index.write_bytes(b"\0\0\0")
    monkeypatch.setattr(steps.time, "sleep", lambda s: None)
    with pytest.warns(steps.CacheEntryWarning, match="index") as caught:
        second = steps.cache_path(config, key)
    assert second != first and index.read_text().strip() == second.name
    assert steps._key_digest(key)[:8] not in str(caught[0].message)


def test_a_full_disk_mid_encode_leaves_whole_shards_and_no_temporary_files(
        tmp_path, counting_encoder, monkeypatch):
    config = _config(tmp_path)
    real_write = store._HashingWriter.write
    written = {"npy": 0}

    def fills_up(self, data):
        if ".embeddings.npy." in self._raw.name and len(data) > 1000:  # not the header
            written["npy"] += 1
            if written["npy"] > 2:  # the third shard's embeddings do not fit
                self._raw.write(bytes(memoryview(data)[:512]))
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(store._HashingWriter, "write", fills_up)
    with pytest.raises(OSError, match="No space left"):
        steps.encode(config, "train", progress=False)
    path = steps.cache_path(config, steps.encoding_key(config, "train")[0])
    assert not list(path.glob("*.tmp")) and not list(path.glob(".*"))
    manifest = check_embedding_set(path)  # every listed shard is whole
    assert [s["index"] for s in manifest["shards"]] == [0, 1] and not manifest["complete"]
    assert steps.check_cached_encoding(config, "train") == "partial"
    monkeypatch.setattr(store._HashingWriter, "write", real_write)  # space freed
    counting_encoder.calls = 0
    es = steps.encode(config, "train", progress=False)
    assert counting_encoder.calls == 3 * 3  # resumed with shard 2
    np.testing.assert_array_equal(es.load()[0], _fresh(config))


# ----------------------------------------------------- run.json and the private data
def _one_pixel_changed(monkeypatch):
    """Make the digits loader return the data with one training pixel changed."""
    real = sources.load_digits_images
    full = real()
    order = np.random.default_rng(sources.DIGITS_SPLIT_SEED).permutation(len(full.labels))
    row = int(np.sort(np.delete(order, np.s_[::5]))[0])  # a row of the private split
    images = full.images.copy()
    images[row, 3, 4] ^= 1
    monkeypatch.setattr(sources, "load_digits_images",
                        lambda: type(full)(images, full.labels, full.class_names,
                                           full.dataset_id))


def _masked(text: str) -> object:
    """run.json without what differs between any two runs: random ids and timings."""
    def mask(value: object) -> object:
        if isinstance(value, dict):
            return {k: "<TIME>" if re.search(r"seconds|time|_at$|started|finished", k)
                    else mask(v) for k, v in value.items()}
        return [mask(v) for v in value] if isinstance(value, list) else value
    return mask(json.loads(re.sub(r"[0-9a-f]{32}", "<ID>", text)))


def test_run_outputs_carry_no_digest_of_the_private_data(tmp_path, monkeypatch):
    extra = ["evaluate.steps=4", "evaluate.image_level=false", "decode.enabled=false",
             "synthesize.n=500"]
    records, keys = [], []
    for name in ("a", "b"):
        if name == "b":
            _one_pixel_changed(monkeypatch)
        config = _config(tmp_path, *extra)
        key, source = steps.encoding_key(config, "train")
        keys.append((key, source.fingerprint()["sha256"]))
        out = tmp_path / name / "out"
        # A ledger and a tracking store per run: the second run's budget must not show the
        # first one's charge, nor its MLflow mirror of it.
        monkeypatch.setenv("DPSYNTH_LEDGER_URI", f"sqlite:///{tmp_path / name / 'ledger.db'}")
        monkeypatch.setenv("DPSYNTH_HOME", str(tmp_path / name / "home"))
        result = runner.run(config, out, progress=False, echo=lambda _: None)
        text = (out / "run.json").read_text()
        digests = [steps._key_digest(key), keys[-1][1],
                   hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()
                                  ).hexdigest()]
        assert not any(w in text for d in digests for w in _windows(d)), name
        for file in out.rglob("*"):  # every output, the tracking store included
            if file.is_file():
                data = file.read_bytes()
                assert not any(d[:16].encode() in data for d in digests), file
        record = json.loads(text)
        entry = str(steps.cache_path(config, key))
        assert record["outputs"]["train_embeddings (private)"] == entry  # a random name
        records.append(_masked(json.dumps(record).replace(entry, "<ENTRY>")
                               .replace(str(tmp_path / name), "<RUN>")))
        assert result.metrics is not None
    assert keys[0][1] != keys[1][1]  # the pixel did change the private data
    assert records[0] == records[1]
