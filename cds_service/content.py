"""Where the clinical content folders (hooks/, rules/, fhir/) are found.

A wheel carries them in ``cds_service/_content/``; an editable install or a checkout reads them from
the repository root. ``CDS_CONTENT_DIR`` overrides both.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def default_content_dir() -> Path:
    packaged = PACKAGE_DIR / "_content"
    if (packaged / "hooks").is_dir():
        return packaged
    checkout = PACKAGE_DIR.parent
    if (checkout / "hooks").is_dir():
        return checkout
    return packaged
