// Small DOM helpers. Everything the page shows is built with these (text nodes, never HTML strings),
// so data from a CDS service or a chart cannot inject markup; the one exception is card markdown,
// which goes through markdown.js (DOMPurify).

/**
 * h("a", {href, class: "x", data: {cardUuid: "1"}, on: {click: fn}}, "text", childNode, [more])
 * Attributes with value null/undefined/false are left out; true sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === "data") {
      for (const [key, v] of Object.entries(value)) if (v !== null && v !== undefined) el.dataset[key] = v;
    } else if (name === "class") {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    } else if (name === "value" || name === "checked" || name === "disabled" || name === "open") {
      el[name] = value;
    } else {
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function byId(id) {
  const el = document.getElementById(id);
  if (!el) throw new Error(`the page has no #${id}`);
  return el;
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** A <pre> with the JSON and a copy button. */
export function jsonBlock(value, label = "Copy") {
  const text = typeof value === "string" ? value : pretty(value);
  const status = h("span", { class: "copy-status", "aria-live": "polite" });
  const button = h("button", { type: "button", class: "copy small" }, label);
  button.addEventListener("click", async () => {
    status.textContent = (await copyText(text)) ? "copied" : "copy failed: select the text";
    setTimeout(() => (status.textContent = ""), 2000);
  });
  return h("div", { class: "json-block" }, h("div", { class: "json-tools" }, button, status), h("pre", {}, text));
}

/** navigator.clipboard exists only in secure contexts (https, localhost); plain http needs the old way. */
async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      /* fall through */
    }
  }
  const area = h("textarea", { class: "offscreen", readonly: true }, text);
  document.body.append(area);
  area.select();
  let ok = false;
  try {
    ok = document.execCommand("copy");
  } catch {
    ok = false;
  }
  area.remove();
  return ok;
}

/** crypto.randomUUID also needs a secure context; getRandomValues does not. RFC 9562 version 4. */
export function uuid() {
  if (crypto.randomUUID && window.isSecureContext) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function formatMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  return ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`;
}

/** A FHIR date or dateTime shown as its date part (the sandbox shows dates, not instants). */
export function shortDate(value) {
  return typeof value === "string" ? value.slice(0, 10) : "";
}
