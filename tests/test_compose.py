"""compose.yaml and the Dockerfile are for users (no Docker engine here): each is read by a real parser
(the Compose Specification's JSON Schema, as check-jsonschema ships it; BuildKit's Dockerfile parser, as
the `dockerfile` package wraps it) and everything they name is checked to be real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dockerfile
import pytest
import yaml
from compose_interpolation import InterpolationError, interpolate

from cds_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TEST_ENV = {"CDS_DB_PASSWORD": "test-password"}
INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL"}
INSTRUCTIONS |= {"ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}

# The program each image's health check runs, as found in that image's sources (where: compose.yaml,
# next to the image). Docker Hub is out of reach here: a new tag is a new entry, checked again.
HEALTH_CHECK_PROGRAM = {
    "openvino/model_server:2026.4.1": "curl",
    "postgres:16": "pg_isready",
    "hapiproject/hapi:v8.10.0-3": "java",
    "nginx:1.30": "curl",
}


def load_compose(env=TEST_ENV) -> dict:
    return interpolate(yaml.safe_load((ROOT / "compose.yaml").read_text()), env)


def dockerfile_stages() -> dict[str, list]:
    """Stage name -> its instructions (FROM first), parsed by BuildKit's own parser."""
    stages: dict[str, list] = {}
    for command in dockerfile.parse_file(str(ROOT / "Dockerfile")):
        if command.cmd == "FROM":
            name = command.value[2] if len(command.value) == 3 else f"stage{len(stages)}"
            stages[name] = []
        stages[name].append(command)
    return stages


def base_image(stages: dict[str, list], stage: str) -> str:
    """The registry image a stage is built on, through `FROM <stage>` chains."""
    source = stages[stage][0].value[0]
    return base_image(stages, source) if source in stages else source


def lineage(stages: dict[str, list], stage: str) -> list:
    """A stage's instructions and those of the stages it is built on."""
    source = stages[stage][0].value[0]
    return stages[stage] + (lineage(stages, source) if source in stages else [])


def chowned(run: str) -> set[str]:
    """The paths a RUN line hands to `chown` (its arguments after the owner, up to the next command)."""
    paths, words = set(), re.split(r"\s+", run.strip())
    for i, word in enumerate(words):
        if word == "chown":
            rest = [w for w in words[i + 1 :] if not w.startswith("-")]
            paths.update(re.split(r"&&|;|\|\|", " ".join(rest[1:]))[0].split())
    return paths


def instruction(stages: dict[str, list], stage: str, cmd: str):
    """The instruction in force for a stage (its own, else its parent stage's)."""
    own = [c for c in stages[stage] if c.cmd == cmd]
    if own:
        return own[-1]
    parent = stages[stage][0].value[0]
    return instruction(stages, parent, cmd) if parent in stages else None


def option(argv, flag: str) -> str:
    return argv[argv.index(flag) + 1]


def health_command(service: dict) -> list[str]:
    """The health check as argv; CMD-SHELL split on white space (enough to name its program)."""
    test = service["healthcheck"]["test"]
    test = ["CMD-SHELL", test] if isinstance(test, str) else test
    return test[1:] if test[0] == "CMD" else test[1].split()


def test_compose_file_is_valid_against_the_compose_specification_schema(tmp_path):
    schema_check = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    valid = tmp_path / "compose.json"
    valid.write_text(json.dumps(load_compose()))
    result = subprocess.run([*schema_check, str(valid)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

    # The same check refuses what Compose would refuse: a misspelt key.
    broken = load_compose()
    broken["services"]["cds"]["healthchek"] = broken["services"]["cds"].pop("healthcheck")
    invalid = tmp_path / "broken.json"
    invalid.write_text(json.dumps(broken))
    result = subprocess.run([*schema_check, str(invalid)], capture_output=True, text=True)
    assert result.returncode == 1 and "healthchek" in result.stdout, result.stdout + result.stderr


def test_interpolation_follows_the_compose_rules_and_the_password_is_required():
    env = {"SET": "a", "EMPTY": ""}
    assert interpolate(["${SET}", "$SET-x", "$$SET", "${UNSET}", "cost: $5"], env) == [
        "a",
        "a-x",
        "$SET",
        "",
        "cost: $5",
    ]
    assert interpolate(["${EMPTY:-d}", "${EMPTY-d}", "${UNSET:-${SET}}", "${UNSET:-${NONE:-n}}"], env) == [
        "d",
        "",
        "a",
        "n",
    ]
    assert interpolate(["${SET:+r}", "${EMPTY:+r}", "${EMPTY+r}", "${EMPTY?e}"], env) == ["r", "", "r", ""]
    with pytest.raises(InterpolationError, match="invalid interpolation"):
        interpolate("${SET/a/b}", env)
    with pytest.raises(InterpolationError, match="set CDS_DB_PASSWORD"):
        load_compose(env={})
    with pytest.raises(InterpolationError, match="set CDS_DB_PASSWORD"):
        load_compose(env={"CDS_DB_PASSWORD": ""})


def test_compose_references_real_files_targets_and_settings():
    compose = load_compose()
    stages = dockerfile_stages()
    known = {"CDS_" + name.upper() for name in Settings.model_fields}
    for name, service in compose["services"].items():
        if "build" in service:
            assert (ROOT / service["build"]["context"] / "Dockerfile").is_file()
            assert service["build"]["target"] in stages, name
        for key, value in (service.get("environment") or {}).items():
            if key.startswith("CDS_"):
                assert key in known, f"{name}: {key} is not a setting"
            host = urlsplit(str(value)).hostname if "://" in str(value) else None
            if host and host not in ("127.0.0.1", "localhost"):  # a URL inside the deployment
                assert host in compose["services"], f"{name}: {key} names no service ({host})"
        for volume in service.get("volumes") or []:
            source, target = volume.split(":")[:2]
            if source.startswith("./"):  # a bind mount: the file must be in the repository
                assert (ROOT / source).is_file(), volume
            else:
                assert source in compose["volumes"], volume
                if "build" in service:  # the image's non-root user must own the mount point
                    runs = [c.value[0] for c in lineage(stages, service["build"]["target"]) if c.cmd == "RUN"]
                    assert any(target in chowned(run) for run in runs), volume
        for dependency in service.get("depends_on") or {}:
            assert dependency in compose["services"]
    ovms = compose["services"]["ovms"]["command"]
    prepare = instruction(stages, "prepare", "CMD").value
    assert option(ovms, "--model_path") == option(prepare, "--output")  # prepare writes where OVMS reads
    llm = urlsplit(compose["services"]["cds"]["environment"]["CDS_LLM"])
    assert (llm.hostname, str(llm.port)) == ("ovms", option(ovms, "--rest_port"))


def test_dockerfile_copies_existing_paths_from_pinned_images():
    stages = dockerfile_stages()
    for stage, commands in stages.items():
        image = commands[0].value[0]
        if image not in stages:  # from a registry: pinned to a version, never latest
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image) and not image.endswith(":latest"), image
        for command in commands:
            # BuildKit's parser takes any word; its instruction set is this
            assert command.cmd in INSTRUCTIONS, command.original
            if command.cmd == "CMD":  # exec form: SIGTERM reaches the program, not a shell
                assert command.json, command.original
            if command.cmd in ("COPY", "ADD") and not any(f.startswith("--from") for f in command.flags):
                for source in command.value[:-1]:
                    assert (ROOT / source).exists(), f"{stage}: {command.original}"
    compose = load_compose()
    for name, service in compose["services"].items():
        if "image" in service:
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", service["image"]), f"{name}: {service['image']}"
            assert not service["image"].endswith(":latest"), name
    # The model is exported by the OpenVINO Runtime that serves it (OVMS X.Y.Z bundles OpenVINO X.Y.Z).
    args = dict(c.value[0].partition("=")[::2] for c in stages["prepare"] if c.cmd == "ARG")
    version = args["OPENVINO_VERSION"]
    assert compose["services"]["ovms"]["image"] == f"openvino/model_server:{version}"


def test_every_service_has_a_health_check_its_image_can_run(client):
    compose = load_compose()
    stages = dockerfile_stages()
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check, f"{name} has no health check"
        if check.get("disable"):  # only a one-shot job that others wait on to finish
            assert service.get("restart") == "no", name
            assert any(
                (other.get("depends_on") or {}).get(name, {}).get("condition")
                == "service_completed_successfully"
                for other in compose["services"].values()
            ), name
            continue
        program = health_command(service)[0]
        if "image" in service:
            assert program == HEALTH_CHECK_PROGRAM.get(service["image"]), (
                f"{name}: {service['image']} unchecked"
            )
        else:  # built here: python comes with the python base image
            assert program == "python", name
            assert base_image(stages, service["build"]["target"]).startswith("python:"), name
        for dependency, condition in (service.get("depends_on") or {}).items():
            if condition["condition"] == "service_healthy":
                assert not compose["services"][dependency]["healthcheck"].get("disable"), dependency

    services = compose["services"]
    # cds: its own Python fetches /readyz on the port the image's CMD serves; the app answers 200 there.
    argv = health_command(services["cds"])
    compile(argv[-1], "healthcheck", "exec")
    url = urlsplit(re.search(r"http://[^'\"]+", argv[-1]).group())
    assert str(url.port) == option(instruction(stages, "serve", "CMD").value, "--port")
    assert client.get(url.path).status_code == 200
    # proxy: nginx's listen port, a path the app serves
    url = urlsplit(health_command(services["proxy"])[-1])
    assert f"listen {url.port};" in (ROOT / "deploy" / "nginx.conf").read_text()
    assert client.get(url.path).status_code == 200
    # ovms: the model it serves, on its REST port
    url = urlsplit(health_command(services["ovms"])[-1])
    command = services["ovms"]["command"]
    assert str(url.port) == option(command, "--rest_port")
    assert url.path == f"/v2/models/{option(command, '--model_name')}/ready"

    # Start order: cds once PostgreSQL and the model answer, the proxy once cds does (more may be added).
    for name, dependency in (("cds", "db"), ("cds", "ovms"), ("proxy", "cds")):
        assert services[name]["depends_on"][dependency] == {"condition": "service_healthy"}, (
            name,
            dependency,
        )


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
