// Every HTTP call the page makes: the sandbox's own JSON API (same origin) and calls to a CDS service
// (this one or another, at the discovery URL in the header).

// The page's own API lives next to the static folder: /sandbox/static/api.js -> /sandbox/api/...
// Resolving from this module's URL keeps working if the app is mounted under a path prefix.
const SANDBOX_BASE = new URL("../", import.meta.url);

export function sandboxUrl(path) {
  return new URL(path, SANDBOX_BASE).href;
}

/** An error with the response's OperationOutcome (or text) when there is one. */
export class HttpError extends Error {
  constructor(message, status, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

async function readBody(response) {
  const text = await response.text();
  if (!text) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** The first diagnostics of an OperationOutcome, else a short text, for one-line error messages. */
export function describeError(body, fallback) {
  if (body && typeof body === "object" && Array.isArray(body.issue)) {
    const issue = body.issue[0] || {};
    const where = issue.expression ? ` (${issue.expression.join(", ")})` : "";
    return `${issue.diagnostics || issue.code || "error"}${where}`;
  }
  if (typeof body === "string" && body.trim()) return body.trim().slice(0, 300);
  return fallback;
}

async function sandboxJson(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(sandboxUrl(path), init);
  const data = await readBody(response);
  if (!response.ok) {
    throw new HttpError(
      `${path}: ${response.status} ${describeError(data, response.statusText)}`,
      response.status,
      data,
    );
  }
  return data;
}

export const sandbox = {
  config: () => sandboxJson("api/config"),
  patients: () => sandboxJson("api/patients"),
  chart: (id) => sandboxJson(`api/patients/${encodeURIComponent(id)}/chart`),
  medications: (q, signal) => sandboxJson(`api/medications?${new URLSearchParams({ q, limit: "20" })}`, { signal }),
  prefetch: (prefetch, context) => sandboxJson("api/prefetch", { method: "POST", body: { prefetch, context } }),
  token: (aud) => sandboxJson("api/token", { method: "POST", body: { aud } }),
  checkCards: (hook, response) => sandboxJson("api/check-cards", { method: "POST", body: { hook, response } }),
};

/** "Server-Timing: parse;dur=1.2, rules;dur=3" -> [{name, dur, desc}] */
export function parseServerTiming(header) {
  if (!header) return [];
  return header
    .split(",")
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => {
      const [name, ...params] = part.split(";").map((s) => s.trim());
      const stage = { name, dur: null, desc: "" };
      for (const p of params) {
        const [k, v = ""] = p.split("=");
        const value = v.replace(/^"|"$/g, "");
        if (k === "dur") stage.dur = Number(value);
        if (k === "desc") stage.desc = value;
      }
      return stage;
    });
}

/**
 * One call to a CDS service, signed with a sandbox JWT whose aud is exactly `url`.
 * Never throws: the returned record says what happened (the inspector shows it either way).
 * The token itself is kept out of the record; only its length and decoded parts are.
 */
export async function callCds(url, { method = "POST", body } = {}) {
  const record = { url, method, requestBody: body ?? null, auth: null, status: null, ok: false };
  let token;
  try {
    const minted = await sandbox.token(url);
    token = minted.token;
    record.auth = { length: token.length, header: minted.header, claims: minted.claims };
  } catch (err) {
    record.error = `could not mint the sandbox JWT: ${err.message}`;
    return record;
  }
  const init = { method, headers: { Accept: "application/json", Authorization: `Bearer ${token}` } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const started = performance.now();
  try {
    const response = await fetch(url, init);
    record.responseBody = await readBody(response);
    record.elapsedMs = performance.now() - started;
    record.status = response.status;
    record.statusText = response.statusText;
    record.ok = response.ok;
    record.serverTiming = parseServerTiming(response.headers.get("Server-Timing"));
    record.decisionId = response.headers.get("X-Decision-Id");
    if (!response.ok) record.error = `${response.status} ${describeError(record.responseBody, response.statusText)}`;
  } catch (err) {
    // fetch rejects only when no HTTP answer could be read: network down, DNS, or CORS refusal
    record.elapsedMs = performance.now() - started;
    record.error = `no response (network error, or the server refused this origin by CORS): ${err.message}`;
  }
  return record;
}

/** The decision-log entry of one call, read with the sandbox's auditor token. */
export async function fetchDecision(auditBase, decisionId, auditToken) {
  const url = `${auditBase.replace(/\/$/, "")}/decisions/${encodeURIComponent(decisionId)}`;
  const response = await fetch(url, { headers: { Accept: "application/json", Authorization: `Bearer ${auditToken}` } });
  const body = await readBody(response);
  if (!response.ok)
    throw new HttpError(`${response.status} ${describeError(body, response.statusText)}`, response.status, body);
  return body;
}
