// Building a CDS Hooks request as an EHR does (context, fhirServer, fhirAuthorization, prefetch),
// and the checks the page runs on each answer (card rules, decision log).
import { fetchDecision, sandbox } from "./api.js";
import { uuid } from "./dom.js";

/** "Bundle of 3", "Patient/123", "null (no data)": what one prefetch value was, in a few words. */
export function summariseValue(value) {
  if (value === null) return "null (no data)";
  if (!value || typeof value !== "object") return JSON.stringify(value);
  if (value.resourceType === "Bundle") {
    const n = Array.isArray(value.entry) ? value.entry.length : 0;
    const total = typeof value.total === "number" && value.total !== n ? ` (total ${value.total})` : "";
    return `Bundle of ${n}${total}`;
  }
  return value.id ? `${value.resourceType}/${value.id}` : String(value.resourceType || "object");
}

export function serviceUrl(discoveryUrl, serviceId) {
  return `${discoveryUrl.replace(/\/+$/, "")}/${encodeURIComponent(serviceId)}`;
}

/** The access the sandbox grants a service on its FHIR endpoint (the endpoint does not check it). */
function fhirAuthorization() {
  return {
    access_token: "sandbox",
    token_type: "Bearer",
    expires_in: 3600,
    scope: "patient/*.read",
    subject: "cds-service-sandbox",
  };
}

/**
 * The hook request for one service, and one row per prefetch key saying what was sent.
 * With sendPrefetch off no prefetch is sent, so the service must fetch from fhirServer itself.
 */
export async function buildHookRequest({ config, service, hook, patientId, draftOrders, selections, sendPrefetch }) {
  const context = { userId: config.userId, patientId };
  if (selections) context.selections = selections; // order-select: the order(s) just chosen
  if (draftOrders) context.draftOrders = draftOrders;
  const body = {
    hookInstance: uuid(),
    hook,
    fhirServer: config.fhirServer,
    fhirAuthorization: fhirAuthorization(),
    context,
  };
  const templates = service.prefetch && typeof service.prefetch === "object" ? service.prefetch : {};
  const keys = Object.keys(templates);
  if (!keys.length) return { body, prefetchRows: [] };
  if (!sendPrefetch) {
    const rows = keys.map((key) => ({
      key,
      template: templates[key],
      url: null,
      sent: "not sent (prefetch switched off)",
    }));
    return { body, prefetchRows: rows };
  }
  let resolved;
  try {
    resolved = (await sandbox.prefetch(templates, context)).prefetch || {};
  } catch (err) {
    const rows = keys.map((key) => ({ key, template: templates[key], url: null, sent: `not sent: ${err.message}` }));
    return { body, prefetchRows: rows };
  }
  body.prefetch = {};
  const rows = keys.map((key) => {
    const item = resolved[key] || { template: templates[key], url: null, problem: "the sandbox did not resolve it" };
    const row = { key, template: item.template ?? templates[key], url: item.url ?? null };
    if (item.problem) {
      // a key left out means "fetch it yourself", which is what a real EHR does when it cannot prefetch
      row.sent = `not sent: ${item.problem}`;
    } else {
      body.prefetch[key] = item.value ?? null;
      row.sent = summariseValue(item.value ?? null);
    }
    return row;
  });
  return { body, prefetchRows: rows };
}

/** After a hook call: card problems (POST /check-cards) and the decision-log entry, into the inspector. */
export async function followUp(entry, record, hook, config) {
  const cardsCheck = (async () => {
    if (!record.ok || !record.responseBody || typeof record.responseBody !== "object") {
      entry.setProblems(null);
      return;
    }
    try {
      entry.setProblems(await sandbox.checkCards(hook, record.responseBody));
    } catch (err) {
      entry.setProblems(err);
    }
  })();
  const decision = (async () => {
    if (!config.auditToken) {
      entry.setDecision("audit API off (the sandbox has no auditor token: set CDS_AUDIT_TOKENS)");
    } else if (!record.decisionId) {
      entry.setDecision("no X-Decision-Id header in the response (another service, or a call that failed early)");
    } else {
      try {
        entry.setDecision(await fetchDecision(config.auditBase, record.decisionId, config.auditToken));
      } catch (err) {
        entry.setDecision(err);
      }
    }
  })();
  await Promise.all([cardsCheck, decision]);
}
