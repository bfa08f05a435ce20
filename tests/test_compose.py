"""compose.yaml is for users (no Docker engine here): check that everything it references is real."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cds_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_references_real_files_targets_and_settings():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM .+ AS (\w+)$", dockerfile, flags=re.M))
    known = {"CDS_" + name.upper() for name in Settings.model_fields}
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / "Dockerfile").is_file()
            assert service["build"]["target"] in targets, name
        for key in service.get("environment") or {}:
            if key.startswith("CDS_"):
                assert key in known, f"{name}: {key} is not a setting"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("./"):  # a bind mount: the file must be in the repository
                assert (ROOT / source).is_file(), volume
            else:
                assert source in compose["volumes"], volume
        for dependency in service.get("depends_on") or {}:
            assert dependency in compose["services"]
    for path in re.findall(r"^COPY (\S+)", dockerfile, flags=re.M):
        assert (ROOT / path).exists(), path
    model_dir = compose["services"]["ovms"]["command"]
    assert model_dir[model_dir.index("--model_path") + 1] in dockerfile  # prepare writes where OVMS reads


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_docker_compose_config_when_the_client_has_compose():
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("docker client without the compose plugin")
    result = subprocess.run(
        ["docker", "compose", "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"CDS_DB_PASSWORD": "x", "PATH": "/usr/bin:/bin:/usr/local/bin"},
    )
    assert result.returncode == 0, result.stderr
