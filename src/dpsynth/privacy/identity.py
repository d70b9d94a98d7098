"""Which ledger id a run's training records are charged under, when the configuration
leaves ``data.dataset_id`` to its default.

The default id of a path-derived source (an image or text folder, a text file, WebDataset
shards) is spelled from its path (:meth:`dpsynth.config.DataConfig.ledger_id`), so renaming
the folder, or spelling the same shards another way (``{000000,000001}`` for
``{000000..000001}``, a ``/./`` in the path), used to give the same records a fresh
budget. The identity of a dataset must follow its records, not their path.

Two ways were open: refuse every path-derived run without an explicit ``data.dataset_id``,
or follow the records. Refusing would break every existing configuration that relies on
the default, and an explicit id is no safer against the same records named twice; so the
default follows the records: the first run that charges a training split records a
*content digest* of it (SHA-256 of the sorted SHA-256 digests of its files: independent of
order, paths and spelling) next to the ledger id it was charged under; every later run
whose training split has the same digest is charged under that id, wherever its files now
are. A changed split (a file added or removed) has a new digest and keeps the path's
default id, as before, so a folder that is edited in place keeps its budget; a folder that
is both moved and changed is a new dataset to the default, which is why a dataset that
changes should have an explicit ``data.dataset_id`` (the owner's name for it, used as given).

The index is inside the private boundary: its rows live in the ledger store itself
(``kind = 'identity'``, appended like every other row), and the digest is never written to
an output, logged, or put in a message; only the ledger id it maps to is (a path). The
digest reads every training file once, before the charge; nothing read is kept.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

#: Sources whose default ledger id is spelled from a path.
PATH_DERIVED = ("image-folder", "text", "webdataset")


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").digest()


def training_content_digest(data_config) -> str | None:
    """The content digest of the training split (see the module docstring), or None when
    the id does not come from a path (an explicit ``data.dataset_id``, a built-in set).
    Never put it in a message or an output."""
    if data_config.dataset_id or data_config.source not in PATH_DERIVED:
        return None
    from dpsynth.data.sources import DataSourceError, split_files

    files: dict[str, Path] = {}
    for path in split_files(data_config, "train"):
        files.setdefault(os.path.realpath(path), path)
    try:
        digests = sorted(_file_digest(Path(p)) for p in files)
    except OSError as exc:
        raise DataSourceError(f"cannot read the training split to identify it for the "
                              f"privacy budget ledger: {exc}") from None
    h = hashlib.sha256(f"dpsynth.ledger.identity.v1:{data_config.source}\n".encode())
    for digest in digests:
        h.update(digest)
    return h.hexdigest()


def resolve_ledger_id(data_config, ledger) -> str:
    """The ledger id to charge: ``data.dataset_id`` if set; else the id that the training
    split's content was first charged under (recorded in ``ledger``), else the path's
    default id, which is then recorded for this content."""
    default = data_config.ledger_id()
    digest = training_content_digest(data_config)
    if digest is None:
        return default
    return ledger.identity(digest, default)
