"""EmbeddingSet format, resumable encoding and the embedding cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpsynth import steps
from dpsynth.config import load_config
from dpsynth.data.store import (
    EmbeddingSet,
    EmbeddingSetError,
    EmbeddingSetWriter,
    write_embedding_set,
)
from dpsynth.encoders.pixels import PixelEncoder

META = dict(encoder="pixels", normalized=False, classes=[0, 1, 2],
            class_names=["a", "b", "c"], dataset_id="toy", key={"k": 1})


def test_round_trip_is_memory_mapped_and_pickle_free(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(250, 6)).astype(np.float32)
    y = rng.integers(0, 3, 250)
    es = write_embedding_set(tmp_path / "set", X, y, shard_rows=100, **META)
    assert es.count == 250 and es.dim == 6 and len(es.manifest["shards"]) == 3
    shards = es.shards()
    assert all(isinstance(Xs, np.memmap) for Xs, _ in shards)
    X2, y2 = es.load()
    np.testing.assert_array_equal(X2, X)
    np.testing.assert_array_equal(y2, y)
    # Plain .npy without pickled objects: loading with allow_pickle=False works for all.
    for f in (tmp_path / "set").glob("*.npy"):
        np.load(f, allow_pickle=False)
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["dtype"] == "float32"


def test_incomplete_set_is_refused_and_resumes(tmp_path):
    X = np.ones((30, 4), np.float32)
    y = np.zeros(30, np.int64)
    w = EmbeddingSetWriter(tmp_path / "s", dim=4, **META)
    w.write_shard(0, X[:10], y[:10])
    with pytest.raises(EmbeddingSetError, match="incomplete"):
        EmbeddingSet.open(tmp_path / "s")
    again = EmbeddingSetWriter(tmp_path / "s", dim=4, **META)  # "after a crash"
    assert again.has_shard(0) and not again.has_shard(1)
    with pytest.raises(EmbeddingSetError, match=r"shards \[1, 2\] missing"):
        again.finish(3)
    again.write_shard(1, X[10:20], y[10:20])
    again.write_shard(2, X[20:], y[20:])
    assert again.finish(3).count == 30


def test_a_different_set_in_the_directory_is_not_overwritten(tmp_path):
    write_embedding_set(tmp_path / "s", np.ones((5, 2), np.float32), np.zeros(5, int), **META)
    before = (tmp_path / "s" / "manifest.json").read_text()
    with pytest.raises(EmbeddingSetError, match="different EmbeddingSet"):
        EmbeddingSetWriter(tmp_path / "s", dim=2, **{**META, "key": {"k": 2}})
    assert (tmp_path / "s" / "manifest.json").read_text() == before


@pytest.mark.parametrize("damage, match", [
    ("delete_shard", "missing"),
    ("bad_format", "format"),
    ("wrong_count", "manifest says"),
])
def test_damaged_sets_give_specific_errors(tmp_path, damage, match):
    es = write_embedding_set(tmp_path / "s", np.ones((5, 2), np.float32), np.zeros(5, int),
                             **META)
    manifest = es.manifest
    if damage == "delete_shard":
        (tmp_path / "s" / manifest["shards"][0]["labels"]).unlink()
    elif damage == "bad_format":
        (tmp_path / "s" / "manifest.json").write_text(json.dumps({**manifest, "format": "x"}))
    else:
        (tmp_path / "s" / "manifest.json").write_text(json.dumps({**manifest, "count": 6}))
    with pytest.raises(EmbeddingSetError, match=match):
        EmbeddingSet.open(tmp_path / "s")


def test_writer_checks_shapes_and_dtype(tmp_path):
    w = EmbeddingSetWriter(tmp_path / "s", dim=3, **META)
    with pytest.raises(ValueError, match="need X"):
        w.write_shard(0, np.ones((4, 2), np.float32), np.zeros(4))
    with pytest.raises(ValueError, match="floats"):
        w.write_shard(0, np.ones((4, 3), np.int64), np.zeros(4))


def _digits_config(tmp_path, *extra):
    return load_config("configs/digits-quick.yaml",
                       [f"encoder.cache_dir={tmp_path / 'cache'}", "encoder.shard_rows=300",
                        *extra])


class CountingPixels(PixelEncoder):
    calls = 0
    fail_after: int | None = None

    def encode_batch(self, images):
        type(self).calls += 1
        if self.fail_after is not None and type(self).calls > self.fail_after:
            raise RuntimeError("simulated crash")
        return super().encode_batch(images)


@pytest.fixture
def counting_encoder(monkeypatch):
    CountingPixels.calls = 0
    CountingPixels.fail_after = None
    monkeypatch.setattr(steps, "make_encoder",
                        lambda config: CountingPixels(**config.encoder.options))
    return CountingPixels


def test_encode_resumes_after_a_crash_without_redoing_shards(tmp_path, counting_encoder):
    config = _digits_config(tmp_path, "encoder.batch_size=100")
    counting_encoder.fail_after = 7  # dies inside the third shard (3 batches per shard)
    with pytest.raises(RuntimeError, match="simulated crash"):
        steps.encode(config, "train", progress=False)
    counting_encoder.fail_after = None
    counting_encoder.calls = 0
    es = steps.encode(config, "train", progress=False)
    # 1437 rows in shards of 300 -> 5 shards of 3 batches each (the last: 237 rows); two
    # shards were finished before the crash, so only shards 2, 3 and 4 are encoded again.
    assert counting_encoder.calls == 3 * 3
    X, y = es.load()
    expected = PixelEncoder((8, 8)).encode_batch(steps.make_source(config.data, "train")
                                                 .read(0, 1437)[0])
    np.testing.assert_array_equal(X, expected)
    assert len(y) == 1437


def test_cache_hit_skips_encoding_and_key_changes_miss(tmp_path, counting_encoder):
    config = _digits_config(tmp_path)
    first = steps.encode(config, "train", progress=False)
    calls = counting_encoder.calls
    again = steps.encode(config, "train", progress=False)
    assert counting_encoder.calls == calls and again.path == first.path
    other = steps.encode(_digits_config(tmp_path, "data.limit=1000"), "train", progress=False)
    assert other.path != first.path and other.count == 1000
    assert counting_encoder.calls > calls


def test_encode_without_cache_writes_afresh(tmp_path, counting_encoder):
    config = _digits_config(tmp_path, "encoder.cache=false")
    steps.encode(config, "test", tmp_path / "emb", progress=False)
    calls = counting_encoder.calls
    es = steps.encode(config, "test", tmp_path / "emb", progress=False)
    assert counting_encoder.calls == 2 * calls and es.count == 360


# ------------------------------------------------------------------ checksums (issue 10)
def _written(tmp_path, rows=25, shard_rows=10):
    rng = np.random.default_rng(1)
    return write_embedding_set(tmp_path / "s", rng.normal(size=(rows, 4)).astype(np.float32),
                               rng.integers(0, 3, rows), shard_rows=shard_rows, **META)


def _zero_data(file):
    """Zero a .npy file's data in place, keeping its header and size (a lost write)."""
    with open(file, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        start = f.tell()
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * (size - start))


def test_manifest_records_the_sha256_and_size_of_every_shard_file(tmp_path):
    import hashlib

    es = _written(tmp_path)
    for shard in es.manifest["shards"]:
        for kind in ("embeddings", "labels"):
            data = (tmp_path / "s" / shard[kind]).read_bytes()
            assert shard["sha256"][kind] == hashlib.sha256(data).hexdigest()
            assert shard["bytes"][kind] == len(data)


def test_a_zeroed_shard_of_the_same_size_is_refused_naming_the_file(tmp_path):
    es = _written(tmp_path)
    file = tmp_path / "s" / es.manifest["shards"][1]["embeddings"]
    _zero_data(file)
    with pytest.raises(EmbeddingSetError, match="corrupt") as err:
        EmbeddingSet.open(tmp_path / "s")
    assert str(file) in str(err.value)
    # verify=False (for callers that just verified) skips only the hash.
    assert EmbeddingSet.open(tmp_path / "s", verify=False).count == 25


@pytest.mark.parametrize("verify", [True, False])
def test_a_truncated_shard_is_refused_naming_the_file_not_an_mmap_error(tmp_path, verify):
    es = _written(tmp_path)
    file = tmp_path / "s" / es.manifest["shards"][2]["embeddings"]
    file.write_bytes(file.read_bytes()[:-7])
    with pytest.raises(EmbeddingSetError, match="truncated") as err:
        EmbeddingSet.open(tmp_path / "s", verify=verify)
    assert str(file) in str(err.value)


def test_a_missing_shard_is_refused_naming_the_file(tmp_path):
    es = _written(tmp_path)
    file = tmp_path / "s" / es.manifest["shards"][0]["labels"]
    file.unlink()
    with pytest.raises(EmbeddingSetError, match="missing") as err:
        EmbeddingSet.open(tmp_path / "s")
    assert str(file) in str(err.value)


def test_sets_written_before_checksums_still_open_and_truncation_is_still_caught(tmp_path):
    es = _written(tmp_path)
    manifest = es.manifest
    for shard in manifest["shards"]:
        del shard["sha256"], shard["bytes"]
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    X, _ = EmbeddingSet.open(tmp_path / "s").load()
    assert X.shape == (25, 4)
    file = tmp_path / "s" / manifest["shards"][0]["embeddings"]
    file.write_bytes(file.read_bytes()[:-4])
    with pytest.raises(EmbeddingSetError, match="truncated.*its header needs"):
        EmbeddingSet.open(tmp_path / "s")


def test_a_manifest_naming_files_outside_the_set_is_refused(tmp_path):
    es = _written(tmp_path)
    manifest = es.manifest
    manifest["shards"][0]["labels"] = "../elsewhere.npy"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EmbeddingSetError, match="malformed shards"):
        EmbeddingSet.open(tmp_path / "s")


def test_resuming_over_a_damaged_shard_is_refused_naming_the_file(tmp_path):
    X = np.ones((20, 4), np.float32)
    w = EmbeddingSetWriter(tmp_path / "s", dim=4, **META)
    w.write_shard(0, X[:10], np.zeros(10))
    file = tmp_path / "s" / "shard-00000.embeddings.npy"
    _zero_data(file)
    with pytest.raises(EmbeddingSetError, match="corrupt.*cannot resume") as err:
        EmbeddingSetWriter(tmp_path / "s", dim=4, **META)
    assert str(file) in str(err.value)


def test_the_different_set_error_names_fields_not_key_values(tmp_path):
    write_embedding_set(tmp_path / "s", np.ones((5, 2), np.float32), np.zeros(5, int),
                        **{**META, "key": {"k": 1, "source": {"sha256": "0123456789abcdef"}}})
    with pytest.raises(EmbeddingSetError, match="differs in source") as err:
        EmbeddingSetWriter(tmp_path / "s", dim=2,
                           **{**META, "key": {"k": 1, "source": {"sha256": "fedcba9876543210"}}})
    assert "0123456789abcdef" not in str(err.value) and "fedcba" not in str(err.value)


def test_a_verified_file_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    from dpsynth.data import store

    hashed = []
    real = store._sha256_file
    monkeypatch.setattr(store, "_sha256_file", lambda f: hashed.append(f) or real(f))
    es = _written(tmp_path)
    files = 2 * len(es.manifest["shards"])
    EmbeddingSet.open(tmp_path / "s")
    EmbeddingSet.open(tmp_path / "s")
    # Files written moments ago could still change within one file-system timestamp
    # tick unseen, so their hashes are not reused yet.
    assert len(hashed) == 2 * files
    monkeypatch.setattr(store, "_SETTLE_NS", 0)  # as if they had been written long ago
    EmbeddingSet.open(tmp_path / "s")
    EmbeddingSet.open(tmp_path / "s")
    assert len(hashed) == 2 * files
    file = tmp_path / "s" / es.manifest["shards"][0]["embeddings"]
    _zero_data(file)  # in place: same inode and size, new ctime
    with pytest.raises(EmbeddingSetError, match="corrupt"):
        EmbeddingSet.open(tmp_path / "s")


def test_a_full_disk_leaves_no_temporary_files_and_the_old_file(tmp_path, monkeypatch):
    import errno

    from dpsynth.data import store

    def disk_full(self, data):
        self._raw.write(bytes(memoryview(data)[:3]))  # part of it made it to disk
        raise OSError(errno.ENOSPC, "No space left on device")

    store.write_json_atomic(tmp_path / "a.json", {"v": 1})
    monkeypatch.setattr(store._HashingWriter, "write", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.write_json_atomic(tmp_path / "a.json", {"v": 2})
    with pytest.raises(OSError, match="No space"):
        store._save_npy_atomic(tmp_path / "x.npy", np.ones(1000))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
