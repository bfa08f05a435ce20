// The patient picker and the chart summary (the part of the page that plays the EHR's chart).
import { byId, fill, h, shortDate } from "./dom.js";

function demographicsLine(p) {
  return [
    p.age !== null && p.age !== undefined ? `${p.age} y` : null,
    p.gender,
    p.birthDate ? `born ${p.birthDate}` : null,
  ]
    .filter(Boolean)
    .join(" · ");
}

export class PatientPicker {
  /** @param {(patient: object) => void} onChoose */
  constructor(onChoose) {
    this.onChoose = onChoose;
    this.patients = [];
    this.list = byId("patient-list");
    this.filter = byId("patient-filter");
    this.filter.addEventListener("input", () => this.render());
  }

  setPatients(patients) {
    this.patients = patients;
    this.render();
  }

  showError(message) {
    fill(this.list, h("li", { class: "error" }, message));
  }

  matches(p, q) {
    if (!q) return true;
    const text = [p.name, p.description, p.origin, p.gender, ...(p.tags || [])].join(" ").toLowerCase();
    return q.split(/\s+/).every((word) => text.includes(word));
  }

  render() {
    const q = this.filter.value.trim().toLowerCase();
    const shown = this.patients.filter((p) => this.matches(p, q));
    if (!shown.length) {
      fill(this.list, h("li", { class: "muted" }, this.patients.length ? "No patient matches." : "No patients."));
      return;
    }
    fill(
      this.list,
      shown.map((p) => this.renderItem(p)),
    );
  }

  renderItem(p) {
    const item = h(
      "li",
      { class: ["patient", p.id === this.selectedId ? "selected" : null], data: { patientId: p.id, origin: p.origin } },
      h(
        "button",
        { type: "button", class: "patient-choose", "aria-current": p.id === this.selectedId ? "true" : null },
        h("span", { class: "name" }, p.name || p.id),
        h("span", { class: "meta" }, demographicsLine(p), h("span", { class: `origin origin-${p.origin}` }, p.origin)),
        p.description ? h("span", { class: "description" }, p.description) : null,
        p.tags?.length
          ? h(
              "span",
              { class: "tags" },
              p.tags.map((t) => h("span", { class: "tag" }, t)),
            )
          : null,
      ),
    );
    item.querySelector("button").addEventListener("click", () => this.choose(p));
    return item;
  }

  choose(patient) {
    this.selectedId = patient.id;
    this.render();
    this.onChoose(patient);
  }
}

// ---- chart summary ----

function list(title, items, renderItem, emptyText = "none recorded") {
  return h(
    "section",
    { class: "chart-section" },
    h("h3", {}, `${title} (${items.length})`),
    items.length ? h("ul", { class: "chart-list" }, items.map(renderItem)) : h("p", { class: "muted" }, emptyText),
  );
}

function table(title, items, columns) {
  return h(
    "section",
    { class: "chart-section" },
    h("h3", {}, `${title} (${items.length})`),
    items.length
      ? h(
          "table",
          { class: "chart-table" },
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              columns.map(([label]) => h("th", {}, label)),
            ),
          ),
          h(
            "tbody",
            {},
            items.map((item) =>
              h(
                "tr",
                {},
                columns.map(([, cell]) => h("td", {}, cell(item) ?? "")),
              ),
            ),
          ),
        )
      : h("p", { class: "muted" }, "none recorded"),
  );
}

/** Synthea writes values like 5.950095214426689: shown rounded (2 decimals, 3 significant digits below 1),
 *  with the value as recorded in the tooltip. */
function roundForDisplay(value) {
  const n = typeof value === "number" ? value : /^-?\d+\.\d+$/.test(String(value).trim()) ? Number(value) : NaN;
  if (!Number.isFinite(n) || Number.isInteger(n)) return String(value);
  return String(Math.abs(n) >= 1 ? Math.round(n * 100) / 100 : Number(n.toPrecision(3)));
}

function labValue(lab) {
  if (lab.value === null || lab.value === undefined) return "";
  const text = `${roundForDisplay(lab.value)}${lab.unit ? ` ${lab.unit}` : ""}`;
  return h(
    "span",
    { title: `${lab.value}${lab.unit ? ` ${lab.unit}` : ""}` },
    text,
    lab.interpretation ? h("span", { class: "flag" }, ` ${lab.interpretation}`) : null,
  );
}

export function renderChart(chart) {
  const p = chart.patient || {};
  return [
    h(
      "div",
      { class: "demographics", data: { chartPatientId: p.id } },
      h("h2", {}, p.name || p.id),
      h("p", {}, demographicsLine(p), h("span", { class: "code" }, ` Patient/${p.id}`)),
    ),
    list("Problems", chart.problems || [], (c) =>
      h(
        "li",
        {},
        c.display,
        h(
          "span",
          { class: "muted" },
          ` ${[c.clinicalStatus, c.onset ? `since ${shortDate(c.onset)}` : null].filter(Boolean).join(", ")}`,
        ),
      ),
    ),
    table("Medications", chart.medications || [], [
      ["medication", (m) => m.display],
      ["source", (m) => m.source],
      ["status", (m) => m.status],
      ["dosage", (m) => m.dosage],
      ["written", (m) => shortDate(m.authoredOn)],
    ]),
    list(
      "Allergies",
      chart.allergies || [],
      (a) =>
        h(
          "li",
          {},
          a.display,
          a.criticality ? h("span", { class: "muted" }, ` criticality ${a.criticality}`) : null,
          a.reactions?.length ? h("span", { class: "muted" }, ` — ${a.reactions.join(", ")}`) : null,
        ),
      "no known allergies recorded",
    ),
    table("Recent labs", chart.labs || [], [
      ["test", (l) => l.display],
      ["value", labValue],
      ["date", (l) => shortDate(l.date)],
    ]),
    h(
      "section",
      { class: "chart-section" },
      h("h3", {}, `Notes (${(chart.notes || []).length})`),
      (chart.notes || []).length
        ? (chart.notes || []).map((n) =>
            h(
              "details",
              { class: "note", data: { noteId: n.id } },
              h("summary", {}, n.title || "Note", h("span", { class: "muted" }, ` ${shortDate(n.date)}`)),
              h("pre", { class: "note-text" }, n.text || ""),
            ),
          )
        : h("p", { class: "muted" }, "no notes"),
    ),
  ];
}

export function showChart(chart) {
  fill(byId("chart"), renderChart(chart));
}

export function showChartMessage(text, isError = false) {
  fill(byId("chart"), h("p", { class: isError ? "error" : "muted" }, text));
}
