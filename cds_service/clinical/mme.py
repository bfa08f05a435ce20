"""Morphine milligram equivalents per day (MME/day) for opioid orders.

Data: ``fhir/opioid/mme-conversion-factors.json`` — conversion factors, the methadone dose bands, the
fentanyl-patch rule and the RxNorm drug -> ingredient/strength table, as coded in the CDC opioid
prescribing guideline's reference CDS (cqframework/opioid-cds-r4: CDCMMEClinicalConversionFactors.cql,
MMECalculator.cql, OMTKData.cql; CC0). Method (MMECalculator.cql): daily dose of each opioid ingredient
(doses/day x dose x strength; dose already in mg when ordered in mg) x its factor, rounded to 0.1 per
ingredient and summed. An ingredient without a factor (e.g. buprenorphine, tramadol in that table)
contributes nothing; an order we cannot compute (no dose, unknown product) has no MME.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .terminology import RXNORM

PATCH_FORM = "316987"
PATCH_INGREDIENTS = {"4337", "1819"}  # fentanyl, buprenorphine
FENTANYL = "4337"


@dataclass(frozen=True)
class DrugIngredient:
    ingredient: str
    strength: float
    unit: str
    dose_form: str


class MmeCalculator:
    def __init__(
        self,
        factors: dict[str, float | None],
        methadone_bands: list[tuple[float, float | None, float]],
        patch_factor_per_mg_hr: float,
        drugs: dict[str, list[DrugIngredient]],
    ):
        self.factors = factors
        self.methadone_bands = methadone_bands
        self.patch_factor = patch_factor_per_mg_hr
        self.drugs = drugs

    @classmethod
    def load(cls, fhir_dir: Path) -> "MmeCalculator | None":
        path = fhir_dir / "opioid" / "mme-conversion-factors.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        factors: dict[str, float | None] = {}
        bands: list[tuple[float, float | None, float]] = []
        for item in data["ingredients"]:
            factors[item["rxnorm_ingredient"]] = item.get("factor")
            for band in item.get("dose_range_rules") or []:
                bands.append((band["low_mg_per_day"], band["high_mg_per_day"], band["factor"]))
        columns = data["drug_ingredients_columns"]
        drugs: dict[str, list[DrugIngredient]] = {}
        for row in data["drug_ingredients"]:
            r = dict(zip(columns, row, strict=True))
            drugs.setdefault(r["rxnorm_drug"], []).append(
                DrugIngredient(
                    r["rxnorm_ingredient"], float(r["strength_value"]), r["strength_unit"], r["dose_form"]
                )
            )
        # Fentanyl patch (CDCMMEClinicalConversionFactors "316987:7200@0.33333333"): the factor is
        # (0.33333333 / doses_per_day) * 7200, so MME/day = patches x strength(mg/hr) x 2400.
        return cls(factors, bands, 0.33333333 * 7200, drugs)

    def _methadone_factor(self, mg_per_day: float) -> float | None:
        for low, high, factor in self.methadone_bands:
            if mg_per_day >= low and (high is None or mg_per_day <= high):
                return factor
        return None

    def daily_mme(self, med) -> float | None:
        entries = next((self.drugs[c] for s, c in med.codes if s == RXNORM and c in self.drugs), None)
        if not entries or med.dose_value is None:
            return None
        per_day = med.doses_per_day or 1.0
        unit = (med.dose_unit or "").lower()
        total, any_factor = 0.0, False
        for item in entries:
            if item.dose_form == PATCH_FORM and item.ingredient in PATCH_INGREDIENTS:
                if item.ingredient != FENTANYL:
                    continue  # buprenorphine patches have no MME factor
                mme = med.dose_value * item.strength * self.patch_factor
            else:
                if unit == "mg":
                    daily = per_day * med.dose_value
                elif unit in ("ug", "mcg"):
                    daily = per_day * med.dose_value / 1000.0
                else:
                    daily = per_day * med.dose_value * item.strength
                factor = (
                    self._methadone_factor(daily)
                    if item.ingredient == "6813"
                    else self.factors.get(item.ingredient)
                )
                if factor is None:
                    continue
                mme = daily * factor
            total += round(mme, 1)
            any_factor = True
        return round(total, 1) if any_factor else None
