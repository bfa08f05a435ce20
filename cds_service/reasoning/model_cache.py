"""Where prepared models live: what serving reads (`CDS_MODEL_DIR`'s default) and `model prepare` fills."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "cds-service" / "models"


def default_model_dir(weight_format: str = "int8", cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"smollm2-135m-instruct-{weight_format}"
