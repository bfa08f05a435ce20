"""Capability gates: what the configured model is allowed to do, decided by measurement, not by hope.

`cds-service model evaluate` measures the model on two tasks and writes a ``capabilities`` section:

- ``assertion``: the assertion status of a mention (tasks.py) on a stratified sample of the NegEx/ConText
  kit, per label precision/recall/F1 for the rule baseline (clinical/assertion.py), the LLM, and the
  combination (the baseline where it found a trigger, else the LLM). The component used when serving:
  ``llm`` or ``combination`` only where that component beats the baseline on negation F1 AND on macro F1
  over the labels (negation, historical, hypothetical, experiencer) — the better of the two by macro F1
  if both do — and only on a sample with at least `MIN_NEGATED` negated rows; else ``baseline``.
- ``freeText``: summaries and explanations on the bundled sample records. Enabled only when the grounding
  pass rate (texts the grounding guard accepts) is at least `FREE_TEXT_MIN_PASS_RATE` = 0.8 — a guard
  that drops most texts means the model mostly invents — AND the specificity is at least
  `FREE_TEXT_MIN_SPECIFICITY` = 0.5: of the accepted texts, the share that name the alert's drug or
  condition (for a summary: one of the patient's problems or medications) AND at least one
  patient-specific value from the prompt (age, a lab value); grounded but generic text ("review the
  medication list") is not worth a clinician's attention. At least `MIN_FREE_TEXTS` texts must be
  measured.

Where the section lives: for an embedded model, in its manifest (``manifest.json`` of the prepared
folder, key ``capabilities``), next to the hashes that identify it. For a remote server (CDS_LLM is a
URL) there is no manifest we own, so it lives in ``<CDS_DATA_DIR>/llm-capabilities.json``, an object
keyed by the model id (``remote:<model>@<url>``). No section, or one that does not parse: the safe
default — baseline assertions and no free text. The decision is recomputed from the stored figures when
read, so the gates below are the only ones in force.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

COMPONENTS = ("baseline", "llm", "combination")
ASSERTION_LABELS = ("negation", "historical", "hypothetical", "experiencer")
FREE_TEXT_MIN_PASS_RATE = 0.8
FREE_TEXT_MIN_SPECIFICITY = 0.5
MIN_FREE_TEXTS = 10
MIN_NEGATED = 30  # fewer gold negations than this: an F1 difference is noise
REMOTE_FILE = "llm-capabilities.json"


@dataclass(frozen=True)
class Capabilities:
    assertion_component: str = "baseline"
    assertion_reason: str = "not measured (run `cds-service model evaluate`)"
    free_text_enabled: bool = False
    free_text_reason: str = "not measured (run `cds-service model evaluate`)"
    figures: dict = field(default_factory=dict)  # the stored section, for the decision record

    def record(self) -> dict:
        """What a decision record says about the gates (short; the figures are in the manifest)."""
        return {
            "assertion": f"{self.assertion_component}: {self.assertion_reason}",
            "freeText": f"{'on' if self.free_text_enabled else 'off'}: {self.free_text_reason}",
            **({"measuredAt": self.figures["measuredAt"]} if "measuredAt" in self.figures else {}),
        }


# -- the gates (pure) -------------------------------------------------------------------------------------


def _f1(scores: dict, label: str) -> float:
    return float(scores["labels"][label]["f1"])


def _macro(scores: dict) -> float:
    return float(scores["macroF1"])


def decide_assertion(section: dict | None) -> tuple[str, str]:
    """(component, reason) from an ``assertion`` section with ``baseline``, ``llm`` and ``combination``
    scores (each ``{"labels": {label: {"f1": ..}}, "macroF1": ..}``)."""
    if not section or not section.get("measured", True):
        return "baseline", (section or {}).get("reason") or "not measured"
    try:
        base = section["baseline"]
        negated = int(base["labels"]["negation"]["support"])
        figures = {c: (_f1(section[c], "negation"), _macro(section[c])) for c in COMPONENTS if c in section}
    except (KeyError, TypeError, ValueError):
        return "baseline", "figures unreadable"
    if negated < MIN_NEGATED:
        return "baseline", f"sample too small ({negated} negated rows < {MIN_NEGATED})"
    base_neg, base_macro = figures["baseline"]
    said = "; ".join(f"{c} negation F1 {n:.2f}, macro F1 {m:.2f}" for c, (n, m) in figures.items())
    winners = [
        c
        for c in ("llm", "combination")
        if c in figures and figures[c][0] > base_neg and figures[c][1] > base_macro
    ]
    if not winners:
        return "baseline", f"no LLM component beats the baseline ({said})"
    best = max(winners, key=lambda c: (figures[c][1], c == "combination"))
    return best, f"beats the baseline on negation and macro F1 ({said})"


def decide_free_text(section: dict | None) -> tuple[bool, str]:
    """(enabled, reason) from a ``freeText`` section with ``texts``, ``passRate`` and ``specificity``."""
    if not section or not section.get("measured", True):
        return False, (section or {}).get("reason") or "not measured"
    try:
        texts, rate = int(section["texts"]), float(section["passRate"])
        specific = float(section["specificity"])
    except (KeyError, TypeError, ValueError):
        return False, "figures unreadable"
    said = (
        f"grounding pass rate {rate:.2f} (needs >= {FREE_TEXT_MIN_PASS_RATE}), specificity {specific:.2f} "
        f"(needs >= {FREE_TEXT_MIN_SPECIFICITY}) over {texts} texts"
    )
    if texts < MIN_FREE_TEXTS:
        return False, f"too few texts measured ({said})"
    enabled = rate >= FREE_TEXT_MIN_PASS_RATE and specific >= FREE_TEXT_MIN_SPECIFICITY
    return enabled, said


def from_section(section: dict | None) -> Capabilities:
    """The gates in force for a stored ``capabilities`` section (None: the safe default)."""
    if not isinstance(section, dict) or not section:
        return Capabilities()
    component, why = decide_assertion(section.get("assertion"))
    enabled, text_why = decide_free_text(section.get("freeText"))
    return Capabilities(component, why, enabled, text_why, section)


# -- where sections live ------------------------------------------------------------------------------------


def _write_json(path: Path, data: dict) -> None:
    """Whole file or nothing: a crash mid-write must not leave a manifest that does not parse."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_manifest_section(model_dir: Path) -> dict | None:
    return ((_read_json(model_dir / "manifest.json")) or {}).get("capabilities")


def write_manifest_section(model_dir: Path, section: dict) -> Path:
    path = model_dir / "manifest.json"
    manifest = _read_json(path)
    if manifest is None:
        raise FileNotFoundError(f"no readable manifest.json in {model_dir}")
    manifest["capabilities"] = section
    _write_json(path, manifest)
    return path


def read_remote_section(data_dir: Path, model_id: str) -> dict | None:
    return ((_read_json(data_dir / REMOTE_FILE)) or {}).get(model_id)


def write_remote_section(data_dir: Path, model_id: str, section: dict) -> Path:
    path = data_dir / REMOTE_FILE
    everything = _read_json(path) or {}
    everything[model_id] = section
    _write_json(path, everything)
    return path


def load_capabilities(backend, data_dir: Path | None) -> Capabilities:
    """The gates for a backend: an embedded model's manifest, else the data dir's file by model id."""
    model_dir = getattr(backend, "model_dir", None)
    if model_dir is not None:
        return from_section(read_manifest_section(Path(model_dir)))
    if data_dir is None:
        return Capabilities()
    return from_section(read_remote_section(Path(data_dir), backend.model_id))


def store_capabilities(backend, data_dir: Path | None, section: dict) -> Path:
    model_dir = getattr(backend, "model_dir", None)
    if model_dir is not None:
        return write_manifest_section(Path(model_dir), section)
    if data_dir is None:
        raise ValueError("a remote model's capabilities need a data dir")
    return write_remote_section(Path(data_dir), backend.model_id, section)
