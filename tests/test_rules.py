"""Every rule's own must-fire and must-stay-silent cases, and the rule file checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cds_service.config import Settings
from cds_service.errors import ContentError
from cds_service.rule_cases import run_case
from cds_service.resource_validation import ResourceValidator
from cds_service.rule_model import load_rulebook
from cds_service.runtime import Runtime

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = Runtime.load(Settings.load({"data_dir": str(tmp_path_factory.mktemp("data")), "llm": "off"}), strict=True)
    yield rt
    rt.close()


def _cases():
    rt = Runtime.load(Settings.load({"data_dir": "/tmp/cds-rule-cases-collect", "llm": "off"}), strict=True)
    out = []
    for rule in rt.rulebook.rules:
        if rule.status == "retired":
            continue
        for expected in ("fire", "silent"):
            for case in rule.cases[expected]:
                out.append(pytest.param(rule.id, expected, case, id=f"{rule.id}:{expected}:{case['name']}"))
    rt.close()
    return out


@pytest.mark.parametrize("rule_id, expected, case", _cases())
def test_rule_case(runtime, rule_id, expected, case):
    rule = runtime.rulebook.by_id(rule_id)
    result = run_case(rule, case, expected, runtime.facts_builder, runtime.terminology, ResourceValidator())
    assert result.passed, result.detail


def test_every_rule_cites_a_source_and_has_two_cases_each_way(runtime):
    for rule in runtime.rulebook.rules:
        assert rule.references and all(r.url.startswith("http") for r in rule.references), rule.id
        assert len(rule.cases["fire"]) >= 2 and len(rule.cases["silent"]) >= 2, rule.id


def _copy_rules(tmp_path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", target)
    return target


@pytest.mark.parametrize("edit, field", [
    (lambda t: t.replace("indicator: warning", "indicator: urgent", 1), "indicator"),
    (lambda t: t.replace("status: active", "status: live", 1), "status"),
    (lambda t: t.replace("same_ingredient_as: draft", "same_ingredient_as: draft\n    in: no-such-valueset", 1),
     "when.medication.in"),
    (lambda t: t.replace("version: 1.0.0", "version: one", 1), "version"),
    (lambda t: t.replace('summary: "Duplicate', 'summary: "{{ draft.name ', 1), "card.summary"),
])
def test_bad_rule_file_stops_loading_naming_file_and_field(tmp_path, runtime, edit, field):
    rules = _copy_rules(tmp_path)
    path = rules / "duplicate-therapy" / "duplicate-ingredient.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ContentError) as info:
        load_rulebook(rules, runtime.terminology)
    assert info.value.path.endswith("duplicate-ingredient.yaml")
    assert info.value.field_path == field, str(info.value)
