// The cards a CDS service returned, grouped by indicator as an EHR would show them, with the two
// things a clinician can do with a card: accept a suggestion, or dismiss it (override) with a reason.
// Each action sends CDS Hooks feedback to the service that made the card.
import { byId, fill, h } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

const INDICATORS = ["critical", "warning", "info"];
const INDICATOR_LABEL = { critical: "Critical", warning: "Warning", info: "Info", other: "Other indicator" };

function nowIso() {
  return new Date().toISOString();
}

/** The feedback entries of CDS Hooks 2.0 (cds-fb-2, cds-fb-3): what the page sends. */
export function acceptedFeedback(card, suggestion) {
  return {
    card: card.uuid,
    outcome: "accepted",
    acceptedSuggestions: [{ id: suggestion.uuid }],
    outcomeTimestamp: nowIso(),
  };
}

export function overriddenFeedback(card, reason, comment) {
  const entry = { card: card.uuid, outcome: "overridden", outcomeTimestamp: nowIso() };
  // overrideReason must carry a reason or a comment when present, so it is left out when there is neither
  const overrideReason = {};
  if (reason) overrideReason.reason = reason;
  if (comment) overrideReason.userComment = comment;
  if (Object.keys(overrideReason).length) entry.overrideReason = overrideReason;
  return entry;
}

/** Icons are drawn only when the page's CSP lets them load (img-src 'self' data:); otherwise linked. */
function iconAllowed(url) {
  try {
    const u = new URL(url, location.href);
    return u.protocol === "data:" || u.origin === location.origin;
  } catch {
    return false;
  }
}

/** A link a card asks for, opened in a new tab; only http(s): a javascript: or data: URL from a CDS
 * service is shown as text, never made clickable. */
function newTabLink(url, label) {
  let safe = false;
  try {
    safe = ["http:", "https:"].includes(new URL(url, location.href).protocol);
  } catch {
    safe = false;
  }
  if (!safe) return h("span", { class: "unsafe-link", title: `not a web link: ${url}` }, label);
  return h("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, label);
}

function renderSource(source) {
  if (!source || typeof source !== "object") return null;
  const label = source.url ? newTabLink(source.url, source.label || source.url) : source.label || "";
  let icon = null;
  if (source.icon) {
    icon = iconAllowed(source.icon)
      ? h("img", { class: "source-icon", src: source.icon, alt: "" })
      : h("span", { class: "muted" }, " (", newTabLink(source.icon, "icon"), ")");
  }
  return h("div", { class: "source" }, "Source: ", icon, label);
}

function renderLinks(links) {
  if (!Array.isArray(links) || !links.length) return null;
  return h(
    "ul",
    { class: "links" },
    links.map((link) =>
      h(
        "li",
        {},
        newTabLink(link.url, link.label || link.url),
        // the sandbox launches no SMART app: a smart link is shown as the plain link it is
        link.type === "smart" ? h("span", { class: "muted" }, " (SMART app link: opened as a plain link)") : null,
      ),
    ),
  );
}

export class CardBoard {
  /**
   * @param {object} options
   * @param {(suggestion: object) => string[]} options.applySuggestion  apply actions to the drafts
   * @param {(group: object, entry: object) => Promise<object>} options.sendFeedback  -> callCds record
   */
  constructor({ applySuggestion, sendFeedback }) {
    this.applySuggestion = applySuggestion;
    this.sendFeedback = sendFeedback;
    this.groups = new Map(); // "hook service-id" -> {service, hook, cards, state, error}
    this.root = byId("cards");
    this.dialog = byId("override-dialog");
    this.render();
  }

  clear() {
    this.groups.clear();
    this.render();
  }

  /** Forget one hook's cards (a new signing replaces the cards of the previous one). */
  clearHook(hook) {
    for (const [key, g] of this.groups) if (g.hook === hook) this.groups.delete(key);
    this.render();
  }

  pending(service, hook) {
    this.groups.set(`${hook} ${service.id}`, { service, hook, cards: [], state: "pending" });
    this.render();
  }

  show(service, hook, cards) {
    const group = { service, hook, state: "done" };
    group.cards = (Array.isArray(cards) ? cards : []).filter((c) => c && typeof c === "object");
    // built once, so a card already acted on keeps its state when another service's answer arrives
    group.elements = group.cards.map((card) => this.renderCard(card, group));
    this.groups.set(`${hook} ${service.id}`, group);
    this.render();
  }

  failed(service, hook, error) {
    this.groups.set(`${hook} ${service.id}`, { service, hook, cards: [], state: "failed", error });
    this.render();
  }

  // ---- rendering ----

  render() {
    const all = [...this.groups.values()];
    const status = this.renderCallStatus(all);
    const byIndicator = new Map();
    for (const group of all) {
      group.cards.forEach((card, i) => {
        const key = INDICATORS.includes(card.indicator) ? card.indicator : "other";
        if (!byIndicator.has(key)) byIndicator.set(key, []);
        byIndicator.get(key).push(group.elements[i]);
      });
    }
    const sections = [...INDICATORS, "other"]
      .filter((k) => byIndicator.has(k))
      .map((k) =>
        h(
          "section",
          { class: `card-group group-${k}` },
          h("h3", {}, `${INDICATOR_LABEL[k]} (${byIndicator.get(k).length})`),
          byIndicator.get(k),
        ),
      );
    const empty = all.length && !sections.length && all.every((g) => g.state !== "pending");
    fill(
      this.root,
      status.length
        ? h("ul", { class: "call-status" }, status)
        : h("p", { class: "muted" }, "No cards yet: open a patient or sign orders."),
      empty ? h("p", { class: "muted" }, "The services returned no cards.") : null,
      sections,
    );
  }

  /** One line per hook ("order-sign: 11 of 11 services answered, 2 cards (medication-order-check 2)"),
   *  and one per failed call: a page calling a dozen services must not bury the cards under statuses. */
  renderCallStatus(groups) {
    const hooks = [...new Set(groups.map((g) => g.hook))];
    return hooks.flatMap((hook) => {
      const mine = groups.filter((g) => g.hook === hook);
      const answered = mine.filter((g) => g.state !== "pending");
      const withCards = answered.filter((g) => g.cards.length);
      const n = withCards.reduce((sum, g) => sum + g.cards.length, 0);
      const from = withCards.map((g) => `${g.service.id} ${g.cards.length}`).join(", ");
      const services = `${answered.length} of ${mine.length} service${mine.length === 1 ? "" : "s"} answered`;
      const line = `${hook}: ${services}, ${n} card${n === 1 ? "" : "s"}${from ? ` (${from})` : ""}`;
      const pending = answered.length < mine.length;
      return [
        h("li", { class: pending ? "pending" : null, data: { hook } }, pending ? `${line}…` : line),
        ...mine
          .filter((g) => g.state === "failed")
          .map((g) => h("li", { class: "error" }, `${hook} · ${g.service.id}: ${g.error}`)),
      ];
    });
  }

  renderCard(card, group) {
    const indicator = typeof card.indicator === "string" ? card.indicator : "other";
    const status = h("p", { class: "feedback-status", "aria-live": "polite" });
    const suggestions = (Array.isArray(card.suggestions) ? card.suggestions : []).map((s) =>
      h(
        "button",
        {
          type: "button",
          class: ["suggestion", s.isRecommended ? "recommended" : null],
          data: { suggestionUuid: s.uuid },
          title: (s.actions || []).map((a) => `${a.type}: ${a.description || ""}`).join("\n") || "no actions",
          on: { click: () => this.accept(card, s, group, el, status) },
        },
        s.isRecommended ? h("span", { class: "badge" }, "Recommended") : null,
        s.label || "(suggestion without a label)",
      ),
    );
    // the handlers above run on click, after `el` exists
    const el = h(
      "article",
      {
        class: ["card", `indicator-${INDICATORS.includes(indicator) ? indicator : "other"}`],
        data: { cardUuid: card.uuid, indicator, serviceId: group.service.id, hook: group.hook },
      },
      h(
        "header",
        {},
        h("span", { class: "indicator-badge" }, indicator),
        h("h4", {}, card.summary || "(no summary)"),
        h("span", { class: "from" }, `${group.service.id} · ${group.hook}`),
      ),
      renderSource(card.source),
      card.detail ? h("div", { class: "detail markdown" }, renderMarkdown(card.detail)) : null,
      renderLinks(card.links),
      suggestions.length ? h("div", { class: "suggestions" }, suggestions) : null,
      h(
        "footer",
        {},
        h(
          "button",
          { type: "button", class: "override small", on: { click: () => this.override(card, group, el, status) } },
          "Dismiss with reason",
        ),
        status,
      ),
    );
    return el;
  }

  // ---- actions ----

  async accept(card, suggestion, group, el, status) {
    const applied = this.applySuggestion(suggestion);
    this.close(el, "accepted", `Accepted “${suggestion.label || "suggestion"}”`);
    const changes = applied.length ? applied.join("; ") : "no actions to apply";
    if (!card.uuid || !suggestion.uuid) {
      setStatus(status, `${changes}. No feedback sent: the card or suggestion has no uuid.`, "warn");
      return;
    }
    setStatus(status, `${changes}. Sending feedback…`);
    await this.report(group, acceptedFeedback(card, suggestion), status, changes);
  }

  async override(card, group, el, status) {
    const choice = await this.askOverride(card);
    if (!choice) return;
    const why = choice.reason?.display || choice.comment || "no reason given";
    this.close(el, "overridden", `Dismissed: ${why}`);
    if (!card.uuid) {
      setStatus(status, "Dismissed. No feedback sent: the card has no uuid.", "warn");
      return;
    }
    setStatus(status, "Dismissed. Sending feedback…");
    await this.report(group, overriddenFeedback(card, choice.reason, choice.comment), status, "Dismissed");
  }

  async report(group, entry, status, prefix) {
    const record = await this.sendFeedback(group, { feedback: [entry] });
    if (record.ok && record.responseBody && typeof record.responseBody === "object") {
      const { received, recorded } = record.responseBody;
      setStatus(status, `${prefix}. Feedback ${entry.outcome}: received ${received}, recorded ${recorded}.`, "ok");
    } else {
      setStatus(status, `${prefix}. Feedback failed: ${record.error || `HTTP ${record.status}`}`, "error");
    }
  }

  /** A card acted on: mark it and turn its buttons off (one outcome per card). */
  close(el, outcome, text) {
    el.classList.add(outcome);
    el.dataset.outcome = outcome;
    for (const b of el.querySelectorAll("button.suggestion, button.override")) b.disabled = true;
    el.querySelector("header").append(h("span", { class: "outcome" }, text));
  }

  /** The override dialog: the card's overrideReasons as radios, plus a comment. -> {reason, comment} | null */
  askOverride(card) {
    const reasons = Array.isArray(card.overrideReasons) ? card.overrideReasons : [];
    fill(byId("override-card-summary"), card.summary || "");
    fill(
      byId("override-reasons"),
      h("legend", {}, reasons.length ? "Reason" : "This card offers no override reasons: a comment is optional."),
      reasons.map((r, i) =>
        h(
          "label",
          { class: "radio" },
          h("input", { type: "radio", name: "override-reason", value: r.code ?? "", data: { index: String(i) } }),
          ` ${r.display || r.code}`,
        ),
      ),
    );
    const comment = byId("override-comment");
    comment.value = "";
    this.dialog.returnValue = "";
    this.dialog.showModal();
    return new Promise((resolve) => {
      this.dialog.addEventListener(
        "close",
        () => {
          if (this.dialog.returnValue !== "submit") return resolve(null);
          const picked = this.dialog.querySelector('input[name="override-reason"]:checked');
          const reason = picked ? reasons[Number(picked.dataset.index)] : null;
          resolve({ reason, comment: comment.value.trim() });
        },
        { once: true },
      );
    });
  }
}

function setStatus(el, text, kind = "") {
  el.textContent = text;
  el.className = `feedback-status ${kind}`.trim();
}
