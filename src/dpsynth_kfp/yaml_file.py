"""Read a small YAML file of ours into its pydantic model, with one-line errors that name
the file and the key (the overlays' cluster settings, the components' release
declarations)."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def read_yaml_model(path: Path, model: type[Model], error: type[ValueError],
                    what: str) -> Model:
    """``model`` validated from the YAML mapping in ``path``; ``error`` (a ValueError
    subclass) for an unreadable file, invalid YAML, not a mapping, or an invalid key."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise error(f"{path} must be a mapping of {what}, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}"
                             for e in exc.errors())
        raise error(f"{path}: {problems}") from None
