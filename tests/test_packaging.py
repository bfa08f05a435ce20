"""The wheel carries the content folders, so a pip-installed service works outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    return next(out.glob("cds_service-*.whl"))


@pytest.mark.slow
def test_wheel_contains_content_and_no_fhir_package(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "cds_service/_content/hooks/medication-order-check.yaml" in names
    assert any(n.startswith("cds_service/_content/rules/") and n.endswith(".yaml") for n in names)
    assert any(n.startswith("cds_service/_content/fhir/terminology/") for n in names)
    # the sandbox works from an installed copy: its page, vendored libraries and hand-made patients ship
    assert "cds_service/sandbox/static/index.html" in names
    assert "cds_service/sandbox/static/vendor/marked.esm.js" in names
    assert "cds_service/_content/fhir/samples/sandbox/patients.yaml" in names
    assert "cds_service/content_schema/rule.schema.json" in names
    assert not any(n.startswith("fhir/") or n.startswith("hooks/") or n.startswith("rules/") for n in names)


@pytest.mark.slow
def test_installed_copy_loads_its_packaged_content(wheel, tmp_path):
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = (
        "import cds_service.content as c, sys; d = c.default_content_dir(); "
        "assert d.name == '_content', d; "
        "from cds_service.protocol.app import create_app; "
        f"app = create_app({{'CDS_DATA_DIR': {str(tmp_path / 'data')!r}}}); "
        "r = app.test_client().get('/readyz').get_json(); assert r['ready'], r; print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.stdout.strip().endswith("ok"), result.stderr[-2000:]
