"""The clinical content folders (hooks/, rules/, fhir/): where they are and how their files are read.

A wheel carries them in ``cds_service/_content/``; an editable install or a checkout reads them from
the repository root. ``CDS_CONTENT_DIR`` overrides both. YAML goes through libyaml's C loader where
it is built (ten times faster than the pure-Python one on the rule files); JSON Schema errors name
the file and the field.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .errors import ContentError

PACKAGE_DIR = Path(__file__).resolve().parent
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def default_content_dir() -> Path:
    packaged = PACKAGE_DIR / "_content"
    if (packaged / "hooks").is_dir():
        return packaged
    checkout = PACKAGE_DIR.parent
    if (checkout / "hooks").is_dir():
        return checkout
    return packaged


def relative_name(path: Path, root: Path) -> str:
    """`rules/renal-dosing/x.yaml`: how messages name a content file."""
    return str(path.relative_to(root.parent)) if root.parent in path.parents else str(path)


def read_yaml(path: Path, rel: str) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_YamlLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise ContentError(rel, "", f"not readable YAML: {exc}") from exc


@cache
def bundled_schema(name: str) -> dict:
    """A JSON Schema shipped in ``cds_service/content_schema/``."""
    return json.loads(importlib_resources.files("cds_service").joinpath(f"content_schema/{name}").read_text())


def check_schema(validator: jsonschema.protocols.Validator, data: Any, rel: str) -> None:
    """Raise ContentError naming the file and the field of the most relevant schema violation."""
    errors = list(validator.iter_errors(data))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        raise ContentError(rel, best.json_path.removeprefix("$").lstrip("."), best.message)
