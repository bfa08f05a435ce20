// The call inspector: one entry per HTTP call to a CDS service (discovery, hook calls, feedback),
// newest first. It shows what went over the wire, so an integration engineer can copy a request that
// worked, or see why one did not. The bearer token itself is never shown, only its length and claims.
import { byId, fill, formatMs, h, jsonBlock } from "./dom.js";

/** What the service did with one prefetch key, from the decision entry's `data` section. */
function serviceView(used) {
  if (!used) return h("span", { class: "muted" }, "–");
  const n = Array.isArray(used.resources) ? used.resources.length : 0;
  const origin =
    {
      prefetch: `used the value sent (${n} resource${n === 1 ? "" : "s"})`,
      "prefetch-null": "sent null: no data",
      fetched: `not sent: fetched by the service (${n} resource${n === 1 ? "" : "s"})`,
      "not-applicable": "not applicable (template tokens resolved to nothing)",
      unavailable: "unavailable (could not be had; skipped)",
      context: `from the context (${n} resource${n === 1 ? "" : "s"})`,
    }[used.origin] || `${used.origin} (${n})`;
  const extra = [used.note, used.problem].filter(Boolean).join("; ");
  const refs = n
    ? h(
        "details",
        { class: "refs" },
        h("summary", {}, "references"),
        h(
          "ul",
          {},
          used.resources.map((r) => h("li", { class: "code" }, r.reference)),
        ),
      )
    : null;
  return h("div", {}, origin, extra ? h("div", { class: "muted" }, extra) : null, refs);
}

function section(title, ...content) {
  return h("section", { class: "inspector-section" }, h("h4", {}, title), ...content);
}

function slot(name, placeholder) {
  return h("div", { class: `slot slot-${name}` }, placeholder ? h("p", { class: "muted" }, placeholder) : null);
}

function statusText(record) {
  if (record.status !== null && record.status !== undefined)
    return `${record.status}${record.statusText ? ` ${record.statusText}` : ""}`;
  return record.error ? "failed" : "…";
}

function timingTable(stages, elapsedMs) {
  const parts = [h("p", {}, `Client-side, round trip: ${formatMs(elapsedMs)}`)];
  if (!stages || !stages.length) {
    parts.push(h("p", { class: "muted" }, "No Server-Timing header (not sent, or not exposed to this page by CORS)."));
    return parts;
  }
  const longest = Math.max(...stages.map((s) => s.dur || 0), 1);
  const rows = stages.map((s) => {
    const bar = h("div", { class: "bar" });
    bar.style.width = `${Math.max(1, ((s.dur || 0) / longest) * 100)}%`; // CSP allows styles set from script
    return h(
      "tr",
      {},
      h("td", { class: "code" }, s.name),
      h("td", { class: "num" }, s.dur === null ? "–" : formatMs(s.dur)),
      h("td", { class: "bar-cell" }, bar),
    );
  });
  parts.push(
    h(
      "table",
      { class: "timing" },
      h("thead", {}, h("tr", {}, h("th", {}, "stage"), h("th", {}, "duration"), h("th", {}, ""))),
      h("tbody", {}, rows),
    ),
  );
  return parts;
}

function authBlock(record) {
  if (!record.auth) return h("p", { class: "muted" }, "No Authorization header (the token could not be minted).");
  return h(
    "div",
    {},
    h("p", {}, h("span", { class: "code" }, `Authorization: Bearer <JWT, ${record.auth.length} chars>`)),
    h(
      "details",
      {},
      h("summary", {}, "Decoded JWT (header and claims, from /sandbox/api/token)"),
      jsonBlock({ header: record.auth.header, claims: record.auth.claims }),
    ),
  );
}

function responseBlock(record) {
  if (record.error && (record.responseBody === undefined || record.responseBody === null)) {
    return h("p", { class: "error" }, record.error);
  }
  return h("div", {}, record.error ? h("p", { class: "error" }, record.error) : null, jsonBlock(record.responseBody));
}

class InspectorEntry {
  constructor({ title, hook, serviceId, record, prefetchRows }) {
    this.record = record;
    this.prefetchRows = prefetchRows || null;
    this.decision = null;
    const time = new Date().toLocaleTimeString();
    const ok = record.ok ? "ok" : "error";
    this.slots = {
      prefetch: slot("prefetch"),
      problems: slot("problems", "checking the cards…"),
      decision: slot("decision", "reading the decision log…"),
    };
    const hookCall = Boolean(hook);
    this.el = h(
      "details",
      {
        class: ["call", record.ok ? "call-ok" : "call-failed"],
        data: { serviceId, hook, status: record.status ?? "error", decisionId: record.decisionId },
      },
      h(
        "summary",
        {},
        h("span", { class: `status ${ok}` }, statusText(record)),
        h("span", { class: "what" }, title),
        h("span", { class: "muted" }, formatMs(record.elapsedMs)),
        h("span", { class: "muted" }, time),
      ),
      h(
        "div",
        { class: "call-body" },
        section("Request", h("p", { class: "code" }, `${record.method} ${record.url}`), authBlock(record)),
        hookCall ? section("Server-Timing", ...timingTable(record.serverTiming, record.elapsedMs)) : null,
        hookCall ? section("Prefetch", this.slots.prefetch) : null,
        record.requestBody !== null ? section("Request body", jsonBlock(record.requestBody)) : null,
        section(record.ok ? "Response" : "Response (failed)", responseBlock(record)),
        hookCall ? section("Problems found in the cards", this.slots.problems) : null,
        hookCall ? section("Decision-log entry", this.slots.decision) : null,
      ),
    );
    if (hookCall) this.renderPrefetch();
  }

  setProblems(result) {
    if (result instanceof Error) {
      fill(this.slots.problems, h("p", { class: "error" }, `could not check: ${result.message}`));
    } else if (result === null) {
      fill(this.slots.problems, h("p", { class: "muted" }, "not checked (the call failed)"));
    } else if (!result.problems.length) {
      fill(this.slots.problems, h("p", { class: "ok" }, "none: the response follows the CDS Hooks 2.0 card rules"));
    } else {
      fill(
        this.slots.problems,
        h(
          "ul",
          { class: "problems" },
          result.problems.map((p) => h("li", {}, h("span", { class: "code" }, p.path), ` ${p.message}`)),
        ),
      );
    }
    this.el.dataset.problems = result && !(result instanceof Error) ? String(result.problems.length) : "";
  }

  /** @param {object|string|Error} decision  the entry, or a sentence saying why there is none */
  setDecision(decision) {
    if (decision instanceof Error) {
      fill(this.slots.decision, h("p", { class: "error" }, `could not read it: ${decision.message}`));
    } else if (typeof decision === "string") {
      fill(this.slots.decision, h("p", { class: "muted" }, decision));
    } else {
      this.decision = decision;
      fill(this.slots.decision, jsonBlock(decision));
    }
    this.renderPrefetch();
  }

  renderPrefetch() {
    const used = new Map((Array.isArray(this.decision?.data) ? this.decision.data : []).map((d) => [d.key, d]));
    const rows = [...(this.prefetchRows || [])];
    for (const key of used.keys()) {
      if (!rows.some((r) => r.key === key)) rows.push({ key, template: "", url: null, sent: "–" });
    }
    if (!rows.length) {
      fill(this.slots.prefetch, h("p", { class: "muted" }, "The service declares no prefetch templates."));
      return;
    }
    fill(
      this.slots.prefetch,
      h(
        "table",
        { class: "prefetch" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["key", "template", "rendered URL", "sent", "the service (decision log)"].map((t) => h("th", {}, t)),
          ),
        ),
        h(
          "tbody",
          {},
          rows.map((r) =>
            h(
              "tr",
              { data: { prefetchKey: r.key } },
              h("td", { class: "code" }, r.key),
              h("td", { class: "code" }, r.template || ""),
              h("td", { class: "code" }, r.url ?? "–"),
              h("td", {}, r.sent),
              h("td", {}, this.decision ? serviceView(used.get(r.key)) : h("span", { class: "muted" }, "–")),
            ),
          ),
        ),
      ),
    );
  }
}

export class Inspector {
  constructor() {
    this.list = byId("inspector-list");
    byId("inspector-clear").addEventListener("click", () => this.clear());
    this.clear();
  }

  clear() {
    fill(this.list, h("p", { class: "muted empty" }, "No calls yet."));
  }

  /** Add an entry (newest first) and return it, so slow parts (problems, decision) can fill in later. */
  add(options) {
    const entry = new InspectorEntry(options);
    this.list.querySelector(".empty")?.remove();
    this.list.prepend(entry.el);
    return entry;
  }
}
