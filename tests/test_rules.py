"""Every rule's own must-fire and must-stay-silent cases, and the rule file checks."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from shared import bundled_content

from cds_service.clinical.rule_cases import run_case
from cds_service.clinical.rule_model import load_rulebook
from cds_service.ehr.validation import ResourceValidator
from cds_service.errors import ContentError

ROOT = Path(__file__).resolve().parents[1]


def _cases():
    out = []
    for rule in bundled_content().rulebook.rules:
        if rule.status == "retired":
            continue
        for expected in ("fire", "silent"):
            for case in rule.cases[expected]:
                out.append(pytest.param(rule.id, expected, case, id=f"{rule.id}:{expected}:{case['name']}"))
    return out


@pytest.mark.parametrize("rule_id, expected, case", _cases())
def test_rule_case(content, rule_id, expected, case):
    rule = content.rulebook.by_id(rule_id)
    result = run_case(
        rule,
        case,
        expected,
        content.facts_builder,
        content.terminology,
        ResourceValidator(),
        content.note_reader,
    )
    assert result.passed, result.detail


def _copy_rules(tmp_path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", target)
    return target


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda t: t.replace("indicator: warning", "indicator: urgent", 1), "indicator"),
        (lambda t: t.replace("status: active", "status: live", 1), "status"),
        (
            lambda t: t.replace(
                "same_ingredient_as: draft", "same_ingredient_as: draft\n    in: no-such-valueset", 1
            ),
            "when.medication.in",
        ),
        (lambda t: re.sub(r"^version: .*$", "version: one", t, count=1, flags=re.M), "version"),
        (lambda t: t.replace('summary: "Duplicate', 'summary: "{{ draft.name ', 1), "card.summary"),
    ],
)
def test_bad_rule_file_stops_loading_naming_file_and_field(tmp_path, content, edit, field):
    rules = _copy_rules(tmp_path)
    path = rules / "duplicate-therapy" / "duplicate-ingredient.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ContentError) as info:
        load_rulebook(rules, content.terminology)
    assert info.value.path.endswith("duplicate-ingredient.yaml")
    assert info.value.field_path == field, str(info.value)
