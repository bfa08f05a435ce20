// The mock EHR: wires the panels together. Each concern lives in its own module:
// api.js (HTTP), hooks.js (hook requests), patients.js (picker, chart), orders.js (order writer),
// cards.js (cards, feedback), inspector.js (call inspector), markdown.js (sanitised card detail).
import { callCds, sandbox } from "./api.js";
import { CardBoard } from "./cards.js";
import { byId, fill, h, jsonBlock } from "./dom.js";
import { buildHookRequest, followUp, serviceUrl } from "./hooks.js";
import { Inspector } from "./inspector.js";
import { OrderWriter } from "./orders.js";
import { PatientPicker, showChart, showChartMessage } from "./patients.js";

const state = {
  config: null,
  services: [], // discovered at the URL in the header; each with .url (its endpoint)
  patient: null,
  generation: 0, // bumped on each patient change, so late answers for the previous patient are dropped
};

const inspector = new Inspector();
const orders = new OrderWriter({
  context: () => ({ patient: state.patient, userId: state.config?.userId }),
  onSign: (bundle) => signOrders(bundle),
  onSelect: (bundle, selections) => selectOrders(bundle, selections),
});
const cards = new CardBoard({
  applySuggestion: (suggestion) => orders.applyActions(suggestion.actions || []),
  sendFeedback: (group, body) => sendFeedback(group.service, body),
});
const picker = new PatientPicker((patient) => openPatient(patient));

function setStatus(text, isError = false) {
  const el = byId("app-status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

// ---- service discovery ----

async function loadServices() {
  const url = byId("discovery-url").value.trim();
  if (!url) return;
  const button = byId("load-services");
  button.disabled = true;
  fill(byId("services-summary"), `Loading services from ${url}…`);
  fill(byId("services"));
  const record = await callCds(url, { method: "GET" });
  inspector.add({ title: `discovery · ${url}`, record });
  button.disabled = false;
  const services = record.ok && Array.isArray(record.responseBody?.services) ? record.responseBody.services : null;
  if (!services) {
    state.services = [];
    const why = record.error || "the answer has no services list";
    fill(
      byId("services-summary"),
      h("span", { class: "error" }, `Could not load services: ${why}`),
      " (see the call inspector)",
    );
    setStatus("");
    return;
  }
  state.services = services.map((s) => ({ ...s, url: serviceUrl(url, s.id) }));
  renderServices();
}

/** "17 services: 12 order-sign, 5 patient-view": the list itself is folded away under this line. */
function summariseServices() {
  const byHook = new Map();
  for (const s of state.services) byHook.set(s.hook, (byHook.get(s.hook) || 0) + 1);
  const hooks = [...byHook].map(([hook, n]) => `${n} ${hook}`).join(", ");
  const n = state.services.length;
  return `${n} service${n === 1 ? "" : "s"}${hooks ? `: ${hooks}` : ""} (show)`;
}

function renderServices() {
  fill(byId("services-summary"), summariseServices());
  if (!state.services.length) {
    fill(byId("services"), h("li", { class: "muted" }, "The discovery document lists no services."));
    return;
  }
  fill(
    byId("services"),
    state.services.map((s) =>
      h(
        "li",
        { class: "service", data: { serviceId: s.id, hook: s.hook }, title: s.description || "" },
        h("span", { class: "hook" }, s.hook),
        h("span", { class: "code" }, s.id),
        s.title ? h("span", { class: "muted" }, s.title) : null,
      ),
    ),
  );
}

function servicesFor(hook) {
  return state.services.filter((s) => s.hook === hook);
}

// ---- hook calls ----

async function callHook(service, hook, { patient, draftOrders, selections, generation }) {
  cards.pending(service, hook);
  const { body, prefetchRows } = await buildHookRequest({
    config: state.config,
    service,
    hook,
    patientId: patient.id,
    draftOrders,
    selections,
    sendPrefetch: byId("send-prefetch").checked,
  });
  const record = await callCds(service.url, { body });
  const entry = inspector.add({ title: `${hook} · ${service.id}`, hook, serviceId: service.id, record, prefetchRows });
  if (generation === state.generation) {
    if (record.ok) cards.show(service, hook, record.responseBody?.cards);
    else cards.failed(service, hook, record.error);
  }
  await followUp(entry, record, hook, state.config);
}

function fireHook(hook, draftOrders, selections) {
  const patient = state.patient;
  const services = servicesFor(hook);
  if (!services.length) {
    if (hook !== "order-select") setStatus(`No ${hook} service discovered at the discovery URL: nothing called.`);
    return;
  }
  setStatus("");
  const generation = state.generation;
  for (const service of services) callHook(service, hook, { patient, draftOrders, selections, generation });
}

async function openPatient(patient) {
  state.patient = patient;
  state.generation += 1;
  const generation = state.generation;
  cards.clear();
  orders.setPatient(patient);
  for (const id of ["chart", "cards"]) byId(id).closest(".chart-panel, .work-column").scrollTop = 0;
  showChartMessage("loading the chart…");
  fireHook("patient-view");
  try {
    const chart = await sandbox.chart(patient.id);
    if (generation === state.generation) showChart(chart);
  } catch (err) {
    if (generation === state.generation) showChartMessage(`Could not load the chart: ${err.message}`, true);
  }
}

function selectOrders(bundle, selections) {
  cards.clearHook("order-select");
  fireHook("order-select", bundle, selections);
}

function signOrders(bundle) {
  cards.clearHook("order-sign");
  fireHook("order-sign", bundle);
  // the answers land in the Cards panel, below the order writer: scroll that column (only) to it
  const column = byId("cards").closest(".work-column");
  const offset = byId("cards-title").getBoundingClientRect().top - column.getBoundingClientRect().top;
  column.scrollBy({ top: offset - 8, behavior: "smooth" });
}

async function sendFeedback(service, body) {
  const record = await callCds(`${service.url}/feedback`, { body });
  inspector.add({ title: `feedback · ${service.id}`, serviceId: service.id, record });
  return record;
}

// ---- tabs: EHR, PDCA report, trust ----

function showTab(name) {
  for (const tab of document.querySelectorAll("[data-tab]")) {
    const active = tab.dataset.tab === name;
    tab.setAttribute("aria-selected", String(active));
    byId(`view-${tab.dataset.tab}`).hidden = !active;
  }
  const frame = byId("pdca-frame");
  if (name === "pdca" && !frame.getAttribute("src")) frame.src = state.config.pdcaUrl;
}

function reloadPdca() {
  const frame = byId("pdca-frame");
  try {
    frame.contentWindow.location.reload(); // same origin: a real reload, whatever page the frame is on
  } catch {
    frame.src = state.config.pdcaUrl;
  }
}

function renderTrust(config) {
  fill(byId("trust-issuer"), config.issuer);
  fill(
    byId("trust-jwks"),
    h("a", { href: config.jwksUrl, target: "_blank", rel: "noopener noreferrer" }, config.jwksUrl),
  );
  fill(byId("trust-clients"), jsonBlock(config.cdsClients ?? null));
  fill(
    byId("trust-audit"),
    config.auditToken ? "on (the page holds a sandbox auditor token)" : "off (no auditor token)",
  );
}

function wireHeader(config) {
  byId("discovery-url").value = config.discoveryUrl;
  byId("load-services").addEventListener("click", loadServices);
  byId("discovery-url").addEventListener("keydown", (e) => e.key === "Enter" && loadServices());
  byId("pdca-link").href = config.pdcaUrl;
  // this service's OpenAPI sits next to its discovery endpoint: <base>/cds-services -> <base>/openapi.json
  byId("openapi-link").href =
    config.openapiUrl || config.discoveryUrl.replace(/\/cds-services\/?$/, "") + "/openapi.json";
  for (const tab of document.querySelectorAll("[data-tab]"))
    tab.addEventListener("click", () => showTab(tab.dataset.tab));
  byId("pdca-refresh").addEventListener("click", reloadPdca);
}

async function start() {
  try {
    state.config = await sandbox.config();
  } catch (err) {
    setStatus(`The sandbox API did not answer (${err.message}). Is CDS_SANDBOX on?`, true);
    return;
  }
  wireHeader(state.config);
  renderTrust(state.config);
  showTab("ehr");
  const [patients] = await Promise.allSettled([sandbox.patients(), loadServices()]);
  if (patients.status === "fulfilled") picker.setPatients(patients.value.patients || []);
  else picker.showError(`Could not load patients: ${patients.reason.message}`);
}

start();
