"""IDX reading, datasets and encoders."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from dpsynth.data import DatasetNotFoundError, load_digits_images, load_fashion_mnist, read_idx
from dpsynth.data.datasets import FASHION_MNIST_DIR
from dpsynth.encoders import PixelEncoder, available_encoders, get_encoder

HAS_FASHION = (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists() or (
    FASHION_MNIST_DIR / "train-images-idx3-ubyte").exists()


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + b"".join(
        struct.pack(">I", s) for s in array.shape)
    return header + array.tobytes()


# -------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("compressed", [False, True])
def test_read_idx_round_trip(tmp_path, compressed):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    raw = _idx_bytes(images)
    path = tmp_path / ("imgs.idx.gz" if compressed else "imgs.idx")
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    back = read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (5, 7, 3)
    np.testing.assert_array_equal(back, images)


def test_read_idx_big_endian_int32(tmp_path):
    values = np.array([[1, -2, 70000], [3, 4, -5]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(_idx_bytes(values, type_code=0x0C))
    np.testing.assert_array_equal(read_idx(path), values.astype(np.int64))


def test_read_idx_truncated_file(tmp_path):
    images = np.zeros((4, 6, 6), dtype=np.uint8)
    path = tmp_path / "cut.idx"
    path.write_bytes(_idx_bytes(images)[:-10])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(path)


@pytest.mark.parametrize("magic", [b"\x01\x00\x08\x03", b"\x00\x00\x42\x03", b"\x00"])
def test_read_idx_bad_magic(tmp_path, magic):
    path = tmp_path / "bad.idx"
    path.write_bytes(magic + bytes(20))
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(path)


# ---------------------------------------------------------------------------- datasets
def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)
    assert issubclass(DatasetNotFoundError, FileNotFoundError)


def test_fashion_mnist_bad_split(tmp_path):
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_FASHION, reason=f"Fashion-MNIST is not installed in "
                    f"{FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist_train_split():
    data = load_fashion_mnist("train")
    assert data.images.shape == (60_000, 28, 28) and data.images.dtype == np.uint8
    assert data.labels.shape == (60_000,) and data.labels.dtype == np.int64
    np.testing.assert_array_equal(np.unique(data.labels), np.arange(10))
    assert len(data.class_names) == 10
    assert data.dataset_id == "fashion-mnist/train"


def test_digits_images():
    data = load_digits_images()
    assert data.images.shape == (1797, 8, 8) and data.images.dtype == np.uint8
    assert data.labels.shape == (1797,)
    np.testing.assert_array_equal(np.unique(data.labels), np.arange(10))
    # sklearn's 0..16 grey levels are rescaled to the full 0..255 range.
    assert data.images.min() == 0 and data.images.max() == 255


# ---------------------------------------------------------------------------- encoders
def test_pixel_encoder_round_trip_and_norm_bound():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    images[0] = 255  # the largest possible embedding
    images[1] = 0
    enc = get_encoder("pixels", image_shape=(28, 28))
    emb = enc.encode(images, batch_size=7)
    assert emb.shape == (20, 784) and emb.dtype == np.float32 and enc.dim == 784
    np.testing.assert_array_equal(enc.decode(emb), images)
    # Norm <= 1 by construction; float32 rounding of 1/28 can exceed 1 by ~5e-8 (harmless: the
    # synthesizer clips every record to clip_norm again), so allow 1e-6.
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)
    assert norms.max() <= 1.0 + 1e-6
    assert norms[0] == pytest.approx(1.0, abs=1e-6)
    assert norms[1] == 0.0


def test_pixel_encoder_colour_images():
    images = np.random.default_rng(1).integers(0, 256, size=(3, 4, 5, 3), dtype=np.uint8)
    enc = PixelEncoder(image_shape=(4, 5, 3))
    np.testing.assert_array_equal(enc.decode(enc.encode(images)), images)


@pytest.mark.parametrize("shape", [(5, 27, 28), (5, 28, 28, 3)])
def test_pixel_encoder_wrong_image_shape(shape):
    with pytest.raises(ValueError, match="shape"):
        PixelEncoder((28, 28)).encode(np.zeros(shape, dtype=np.uint8))


def test_encoder_refuses_non_image_arrays():
    with pytest.raises(ValueError, match="images must be"):
        PixelEncoder((28, 28)).encode(np.zeros((5, 784), dtype=np.uint8))
    with pytest.raises(ValueError, match="channels"):
        PixelEncoder((28, 28)).encode(np.zeros((5, 28, 28, 2), dtype=np.uint8))


def test_unknown_encoder_lists_the_available_ones():
    assert {"pixels", "efficientnet-lite0"} <= set(available_encoders())
    with pytest.raises(KeyError, match="nope") as info:
        get_encoder("nope")
    for name in available_encoders():
        assert name in str(info.value)


@pytest.fixture(scope="module")
def sixteen_images():
    """Two images of each of 8 classes: Fashion-MNIST test split, or sklearn digits."""
    data = load_fashion_mnist("test") if HAS_FASHION else load_digits_images()
    idx = np.concatenate([np.flatnonzero(data.labels == c)[:2] for c in range(8)])
    return data.images[idx], data.labels[idx]


@pytest.mark.slow
def test_efficientnet_lite0_embeddings(sixteen_images):
    images, labels = sixteen_images
    enc = get_encoder("efficientnet-lite0", device="cpu")
    assert enc.dim == 1280 and enc.normalized
    first = enc.encode(images, batch_size=8)
    second = enc.encode(images, batch_size=16)
    assert first.shape == (16, 1280) and first.dtype == np.float32
    assert np.isfinite(first).all()
    # Unit norm up to float32 rounding.
    np.testing.assert_allclose(np.linalg.norm(first.astype(np.float64), axis=1), 1.0, atol=1e-5)
    # Deterministic (eval mode, no dropout), whatever the batching.
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-5)
    # Images of different classes map to clearly different embeddings.
    cos = first.astype(np.float64) @ first.T.astype(np.float64)
    different = labels[:, None] != labels[None, :]
    assert cos[different].max() < 0.99
    # A pretrained network, not random weights: same-class pairs are on average more similar.
    same = (labels[:, None] == labels[None, :]) & ~np.eye(16, dtype=bool)
    assert cos[same].mean() > cos[different].mean()
