// The order writer: pick a medication, write a dose, keep a list of draft orders, sign them.
// Draft orders are FHIR R4 MedicationRequests in the shape the sandbox contract fixes; accepting a
// card suggestion changes the same list (create / update / delete actions).
import { sandbox } from "./api.js";
import { byId, fill, h } from "./dom.js";

const RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm";
const UCUM = "http://unitsofmeasure.org";
// Where the medication is taken (R4 medicationrequest-category): a prescription to take home is
// "community", which is what outpatient rules (the CDC opioid recommendations) look for.
const CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/medicationrequest-category";
const SEARCH_DELAY_MS = 250;

// Dose units offered, with their UCUM code (curly braces: UCUM annotations for countable forms).
export const DOSE_UNITS = [
  { unit: "mg", code: "mg" },
  { unit: "mcg", code: "ug" },
  { unit: "g", code: "g" },
  { unit: "mL", code: "mL" },
  { unit: "tablet", code: "{tbl}" },
  { unit: "capsule", code: "{cap}" },
  { unit: "patch", code: "{patch}" },
];

/** "5 mg 2 times a day for 30 days": the human text of a dosage, as an EHR would print it. */
export function dosageText({ doseValue, doseUnit, frequency, days }) {
  const parts = [];
  if (doseValue !== null) parts.push(`${doseValue} ${doseUnit}`);
  if (frequency !== null) parts.push(frequency === 1 ? "once a day" : `${frequency} times a day`);
  if (days !== null) parts.push(`for ${days} days`);
  return parts.join(" ");
}

/** The draft MedicationRequest of the contract; null fields are left out rather than invented. */
export function draftMedicationRequest({
  id,
  medication,
  patientId,
  userId,
  doseValue,
  doseUnit,
  frequency,
  days,
  category,
}) {
  const dosage = { text: dosageText({ doseValue, doseUnit, frequency, days }) };
  if (frequency !== null) dosage.timing = { repeat: { frequency, period: 1, periodUnit: "d" } };
  if (doseValue !== null) {
    const code = DOSE_UNITS.find((u) => u.unit === doseUnit)?.code;
    const quantity = { value: doseValue, unit: doseUnit };
    if (code) Object.assign(quantity, { system: UCUM, code });
    dosage.doseAndRate = [{ doseQuantity: quantity }];
  }
  const request = {
    resourceType: "MedicationRequest",
    id,
    status: "draft",
    intent: "order",
    category: [{ coding: [{ system: CATEGORY_SYSTEM, code: category || "community" }] }],
    medicationCodeableConcept: {
      coding: [{ system: medication.system || RXNORM, code: medication.code, display: medication.display }],
      text: medication.display,
    },
    subject: { reference: `Patient/${patientId}` },
    authoredOn: new Date().toISOString(),
    requester: { reference: userId },
    dosageInstruction: [dosage],
  };
  if (days !== null) {
    request.dispenseRequest = { expectedSupplyDuration: { value: days, unit: "days", system: UCUM, code: "d" } };
  }
  return request;
}

/** What a draft is, in a few words, whatever its type (suggestions may create any resource). */
export function draftLabel(resource) {
  const concept = resource.medicationCodeableConcept || resource.code || {};
  const name = concept.text || concept.coding?.[0]?.display || concept.coding?.[0]?.code || "(no name)";
  return `${resource.resourceType}: ${name}`;
}

function numberOrNull(input) {
  const value = input.value.trim();
  if (value === "") return null;
  const n = Number(value);
  return Number.isFinite(n) && n > 0 ? n : NaN;
}

/** A reference "MedicationRequest/draft-1" (string, or the first of a list) -> [type, id]. */
function splitReference(ref) {
  const text = Array.isArray(ref) ? ref[0] : ref;
  if (typeof text !== "string" || !text.includes("/")) return [null, null];
  const parts = text.split("/");
  return [parts[parts.length - 2], parts[parts.length - 1]];
}

export class OrderWriter {
  /**
   * @param {object} options
   * @param {() => ({patient: object|null, userId: string})} options.context
   * @param {(bundle: object) => void} options.onSign
   * @param {(bundle: object, selections: string[]) => void} [options.onSelect] a draft was added (order-select)
   */
  constructor({ context, onSign, onSelect = () => {} }) {
    this.context = context;
    this.onSign = onSign;
    this.onSelect = onSelect;
    this.drafts = [];
    this.nextId = 1;
    this.selected = null;
    this.searchTimer = null;
    this.searchAbort = null;
    this.el = {
      search: byId("med-search"),
      results: byId("med-results"),
      selected: byId("med-selected"),
      doseValue: byId("dose-value"),
      doseUnit: byId("dose-unit"),
      frequency: byId("frequency"),
      days: byId("days-supply"),
      category: byId("order-category"),
      add: byId("add-order"),
      message: byId("order-message"),
      tryOrders: byId("try-orders"),
      list: byId("draft-orders"),
      sign: byId("sign-orders"),
    };
    fill(
      this.el.doseUnit,
      DOSE_UNITS.map((u) => h("option", { value: u.unit }, u.unit)),
    );
    this.el.search.addEventListener("input", () => this.searchSoon());
    this.el.search.addEventListener("keydown", (e) => this.searchKey(e));
    this.el.add.addEventListener("click", () => this.addFromForm());
    this.el.sign.addEventListener("click", () => this.sign());
    this.render();
  }

  /** A new patient: a new, empty order session. */
  setPatient(patient) {
    this.drafts = [];
    this.nextId = 1;
    this.select(null);
    this.el.search.value = "";
    fill(this.el.results);
    this.say("");
    this.renderTryOrders(patient);
    this.render();
  }

  // ---- medication type-ahead ----

  searchSoon() {
    this.select(null);
    clearTimeout(this.searchTimer);
    this.searchTimer = setTimeout(() => this.search(this.el.search.value.trim()), SEARCH_DELAY_MS);
  }

  async search(q) {
    this.searchAbort?.abort();
    if (q.length < 2) {
      fill(this.el.results);
      return;
    }
    const abort = (this.searchAbort = new AbortController());
    try {
      const { medications } = await sandbox.medications(q, abort.signal);
      this.renderResults(medications, q);
    } catch (err) {
      if (err.name !== "AbortError")
        fill(this.el.results, h("li", { class: "muted" }, `search failed: ${err.message}`));
    }
  }

  searchKey(event) {
    if (event.key === "Enter") {
      event.preventDefault();
      this.el.results.querySelector("button[data-code]")?.click();
    } else if (event.key === "ArrowDown") {
      event.preventDefault();
      this.el.results.querySelector("button[data-code]")?.focus();
    } else if (event.key === "Escape") {
      fill(this.el.results);
    }
  }

  renderResults(medications, q) {
    if (!medications.length) {
      fill(this.el.results, h("li", { class: "muted" }, `no medication matches "${q}"`));
      return;
    }
    fill(
      this.el.results,
      medications.map((m) =>
        h(
          "li",
          {},
          h(
            "button",
            { type: "button", class: "result", data: { code: m.code }, on: { click: () => this.choose(m) } },
            h("span", {}, m.display),
            h("span", { class: "code" }, `RxNorm ${m.code}`),
          ),
        ),
      ),
    );
  }

  choose(medication) {
    this.select(medication);
    this.el.search.value = medication.display;
    fill(this.el.results);
    this.el.doseValue.focus();
  }

  select(medication) {
    this.selected = medication;
    fill(this.el.selected, medication ? `Selected: ${medication.display} (RxNorm ${medication.code})` : "");
    this.render();
  }

  renderTryOrders(patient) {
    const tries = patient?.tryOrders || [];
    fill(
      this.el.tryOrders,
      tries.length ? h("span", { class: "label" }, "Try ordering:") : null,
      tries.map((t) =>
        h(
          "button",
          {
            type: "button",
            class: "chip",
            data: { tryCode: t.code },
            title: "Add this order to the drafts, as the patient's example writes it",
            on: { click: () => this.tryOrder(t) },
          },
          t.display,
        ),
      ),
    );
  }

  /**
   * A suggested order: added to the drafts as the patient's demonstration writes it (dose, category, days
   * supply: what the rules read); without one, chosen in the picker by its code, else looked up by name.
   */
  tryOrder(t) {
    const { patient, userId } = this.context();
    if (t.draft && patient) {
      const draft = structuredClone(t.draft);
      Object.assign(draft, {
        id: this.newId(),
        subject: { reference: `Patient/${patient.id}` },
        requester: { reference: userId },
        authoredOn: new Date().toISOString(),
      });
      this.drafts.push(draft);
      this.say(`Added ${draftLabel(draft)}, as this patient's example writes it.`);
      this.render();
      this.selectedNow(draft);
      return;
    }
    if (t.code) {
      this.choose({ system: t.system || RXNORM, code: t.code, display: t.display });
      return;
    }
    this.el.search.value = t.display;
    this.select(null);
    this.search(t.display);
    this.el.search.focus();
  }

  // ---- drafts ----

  addFromForm() {
    const { patient, userId } = this.context();
    if (!patient || !this.selected) return;
    const doseValue = numberOrNull(this.el.doseValue);
    const frequency = numberOrNull(this.el.frequency);
    const days = numberOrNull(this.el.days);
    if ([doseValue, frequency, days].some(Number.isNaN)) {
      this.say("Dose, frequency and days supply must be positive numbers (or empty).", true);
      return;
    }
    const draft = draftMedicationRequest({
      id: this.newId(),
      medication: this.selected,
      patientId: patient.id,
      userId,
      doseValue,
      doseUnit: this.el.doseUnit.value,
      frequency,
      days,
      category: this.el.category.value,
    });
    this.drafts.push(draft);
    this.say(`Added ${draftLabel(draft)}.`);
    this.select(null);
    this.el.search.value = "";
    this.render();
    this.selectedNow(draft);
  }

  /** CDS Hooks order-select: the clinician has just chosen this order; the other drafts are context. */
  selectedNow(draft) {
    this.onSelect(this.bundle(), [`${draft.resourceType}/${draft.id}`]);
  }

  newId() {
    let id;
    do id = `draft-${this.nextId++}`;
    while (this.drafts.some((d) => d.id === id));
    return id;
  }

  remove(id) {
    this.drafts = this.drafts.filter((d) => d.id !== id);
    this.render();
  }

  bundle() {
    return { resourceType: "Bundle", type: "collection", entry: this.drafts.map((resource) => ({ resource })) };
  }

  /**
   * Apply a suggestion's actions (CDS Hooks 2.0: create, update, delete) to the drafts.
   * Returns one line per action saying what happened, for the card and the log.
   */
  applyActions(actions = []) {
    const done = actions.map((action) => this.applyAction(action));
    this.render();
    return done;
  }

  applyAction(action) {
    const resource = action.resource && typeof action.resource === "object" ? structuredClone(action.resource) : null;
    if (action.type === "create" && resource) {
      if (!resource.id || this.drafts.some((d) => d.id === resource.id)) resource.id = this.newId();
      this.drafts.push(resource);
      return `created ${resource.resourceType}/${resource.id}`;
    }
    if (action.type === "update" && resource) {
      const i = this.drafts.findIndex((d) => d.resourceType === resource.resourceType && d.id === resource.id);
      if (i < 0) return `update: no draft ${resource.resourceType}/${resource.id}`;
      this.drafts[i] = resource;
      return `updated ${resource.resourceType}/${resource.id}`;
    }
    if (action.type === "delete") {
      // 2.0 names the target in resourceId; older services put the resource itself
      const [type, id] = action.resourceId ? splitReference(action.resourceId) : [resource?.resourceType, resource?.id];
      const before = this.drafts.length;
      this.drafts = this.drafts.filter((d) => !(d.resourceType === type && d.id === id));
      return before > this.drafts.length ? `deleted ${type}/${id}` : `delete: no draft ${type}/${id}`;
    }
    return `ignored an action of type ${JSON.stringify(action.type)}`;
  }

  sign() {
    if (this.drafts.length) this.onSign(this.bundle());
  }

  say(text, isError = false) {
    this.el.message.textContent = text;
    this.el.message.classList.toggle("error", isError);
  }

  render() {
    const { patient } = this.context();
    this.el.add.disabled = !patient || !this.selected;
    this.el.sign.disabled = !patient || this.drafts.length === 0;
    if (!this.drafts.length) {
      fill(this.el.list, h("li", { class: "muted empty" }, "No draft orders."));
      return;
    }
    fill(
      this.el.list,
      this.drafts.map((d) =>
        h(
          "li",
          { data: { draftId: d.id } },
          h(
            "div",
            { class: "draft-text" },
            h("strong", {}, draftLabel(d)),
            h("span", { class: "muted" }, d.dosageInstruction?.[0]?.text || ""),
            h("span", { class: "code" }, `${d.resourceType}/${d.id}`),
          ),
          h(
            "button",
            {
              type: "button",
              class: "remove-draft small",
              title: "Remove this draft",
              on: { click: () => this.remove(d.id) },
            },
            "Remove",
          ),
        ),
      ),
    );
  }
}
