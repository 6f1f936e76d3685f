// Proves the SSO test parts without postern: provider.mjs + login.mjs + a one-page relying party.
//
//   node tests/js/selftest.mjs
//
// For each case: starts provider.mjs on a free port, serves a redirect URI from this process,
// builds the authorization URL from the discovery document (PKCE S256, state, nonce, scope
// `openid email groups`), lets login.mjs sign in through Chromium, takes the code from the
// redirect, exchanges it at the token endpoint with the client's auth method and the
// code_verifier, verifies the ID token's signature against jwks_uri, and checks iss, aud, nonce,
// email and groups. Then checks the refusals: a wrong code_verifier, a reused code (which also
// revokes its access token), an unknown login (access_denied, no code), an /auth without PKCE.
//
// Exit 0 and a closing `N passed, 0 failed` line on success; exit 1 naming the failed check.

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
// Browser profiles and failure screenshots of the children land here, removed at the end.
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'postern-selftest-'));
const STARTUP_MS = 60_000;
const LOGIN_TIMEOUT_S = 60;
const b64url = (buf) => Buffer.from(buf).toString('base64url');
const log = (msg) => console.error(`selftest: ${msg}`);

let passed = 0;
let failed = 0;
const children = new Set();

function check(cond, what, detail = '') {
  if (!cond) throw new Error(`check failed: ${what}${detail ? `: ${detail}` : ''}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Spawns a node script; collects stdout/stderr; `exited` resolves to the exit code.
function run(script, args, env) {
  const child = spawn(process.execPath, [path.join(here, script), ...args], {
    env: { ...process.env, TMPDIR: scratch, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const out = { stdout: '', stderr: '' };
  child.stdout.on('data', (d) => { out.stdout += d; });
  child.stderr.on('data', (d) => { out.stderr += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, sig) => {
    children.delete(child);
    resolve(code ?? `signal ${sig}`);
  }));
  return { child, out, exited };
}

async function startProvider(redirectUri, extraEnv = {}) {
  const port = await freePort();
  const clientId = `postern-selftest-${crypto.randomUUID()}`;
  const clientSecret = b64url(crypto.randomBytes(32));
  const p = run('provider.mjs', [], {
    PORT: String(port),
    CLIENT_ID: clientId,
    CLIENT_SECRET: clientSecret,
    REDIRECT_URIS: redirectUri,
    ACCOUNTS: JSON.stringify([
      { id: 'alice', email: 'alice@example.com', groups: ['ops', 'dev'] },
      { id: 'bob', email: 'bob@example.com', groups: [] },
    ]),
    ...extraEnv,
  });
  const needle = `oidc-provider listening on http://127.0.0.1:${port}`;
  const t0 = Date.now();
  // A poll that comes back a second late means this process did not run meanwhile (the
  // machine paused it, and the provider with it): that time is not the provider's. Once a CI
  // run failed here with the provider's first line out and nothing after, for 60 s.
  let waited = 0;
  let last = t0;
  while (!p.out.stdout.includes(needle)) {
    if (p.child.exitCode !== null) throw new Error(`provider exited early:\n${p.out.stderr}`);
    const now = Date.now();
    waited += Math.min(now - last, 1000);
    last = now;
    if (waited > STARTUP_MS) {
      throw new Error(`provider did not print ${JSON.stringify(needle)} in ${now - t0} ms:\n${p.out.stderr}`);
    }
    await new Promise((r) => { setTimeout(r, 20); });
  }
  log(`provider up in ${Date.now() - t0} ms on ${port}`);
  return {
    issuer: `http://127.0.0.1:${port}`, clientId, clientSecret, proc: p,
  };
}

async function stopProvider(p) {
  p.proc.child.kill('SIGTERM');
  const code = await p.proc.exited;
  check(code === 0, 'provider exits 0 on SIGTERM', String(code));
}

// A relying party's callback: records every query it gets, answers with an optional zone page
// (a <select> or radios) and then the final page.
async function startRedirectListener(zonePage) {
  const port = await freePort();
  const hits = [];
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, `http://127.0.0.1:${port}`);
    if (u.pathname === '/callback') {
      hits.push(Object.fromEntries(u.searchParams));
      res.setHeader('content-type', 'text/html; charset=utf-8');
      if (zonePage === 'select') {
        res.end('<!DOCTYPE html><form method="post" action="/zone"><select name="zone"><option>a.example</option><option>b.example</option></select><button type="submit">Continue</button></form>');
      } else if (zonePage === 'radio') {
        res.end('<!DOCTYPE html><form method="post" action="/zone"><label><input type="radio" name="zone" value="a.example">a</label><label><input type="radio" name="zone" value="b.example">b</label><input type="submit" value="Go"></form>');
      } else {
        res.end('<!DOCTYPE html><p>Signed in. You can close this window.</p>');
      }
      return;
    }
    if (u.pathname === '/zone' && req.method === 'POST') {
      let body = '';
      req.on('data', (d) => { body += d; });
      req.on('end', () => {
        const zone = new URLSearchParams(body).get('zone');
        hits.push({ zone });
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end(`<!DOCTYPE html><p>Zone ${zone} chosen. You can close this window.</p>`);
      });
      return;
    }
    res.statusCode = 404;
    res.end('not found');
  });
  await new Promise((r) => { server.listen(port, '127.0.0.1', r); });
  return { uri: `http://127.0.0.1:${port}/callback`, hits, close: () => server.close() };
}

function authRequest(discovery, clientId, redirectUri) {
  const verifier = b64url(crypto.randomBytes(32));
  const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
  const state = b64url(crypto.randomBytes(16));
  const nonce = b64url(crypto.randomBytes(16));
  const url = new URL(discovery.authorization_endpoint);
  url.search = new URLSearchParams({
    response_type: 'code',
    client_id: clientId,
    redirect_uri: redirectUri,
    scope: 'openid email groups',
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();
  return {
    url: url.toString(), verifier, state, nonce,
  };
}

async function token(discovery, p, method, code, redirectUri, verifier) {
  const form = new URLSearchParams({
    grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
  });
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  if (method === 'client_secret_basic') {
    // RFC 6749 2.3.1: each part form-urlencoded before base64.
    const enc = (s) => encodeURIComponent(s).replace(/%20/g, '+');
    headers.authorization = `Basic ${Buffer.from(`${enc(p.clientId)}:${enc(p.clientSecret)}`).toString('base64')}`;
  } else {
    form.set('client_id', p.clientId);
    form.set('client_secret', p.clientSecret);
  }
  const res = await fetch(discovery.token_endpoint, { method: 'POST', headers, body: form });
  return { status: res.status, body: await res.json() };
}

async function verifyIdToken(idToken, discovery) {
  const [h, pl, sig] = idToken.split('.');
  const header = JSON.parse(Buffer.from(h, 'base64url'));
  const payload = JSON.parse(Buffer.from(pl, 'base64url'));
  const jwks = await (await fetch(discovery.jwks_uri)).json();
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  check(jwk, 'ID token kid is in jwks_uri', header.kid);
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const data = Buffer.from(`${h}.${pl}`);
  const signature = Buffer.from(sig, 'base64url');
  let ok;
  if (header.alg === 'RS256') ok = crypto.verify('sha256', data, key, signature);
  else if (header.alg === 'ES256') ok = crypto.verify('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
  else if (header.alg === 'EdDSA') ok = crypto.verify(null, data, key, signature);
  check(ok, `ID token signature verifies (${header.alg})`);
  return { header, payload };
}

async function login(url, user, extra) {
  const t0 = Date.now();
  const l = run('login.mjs', [url, user, 'any-password', '--timeout', String(LOGIN_TIMEOUT_S), ...extra], {});
  const code = await l.exited;
  return { code, ms: Date.now() - t0, ...l.out };
}

// One full flow. `method`: token endpoint auth; `zonePage`: none/select/radio; `skipConsent`.
async function flow({ method, zonePage, skipConsent, alg }) {
  const rp = await startRedirectListener(zonePage);
  let p;
  try {
    p = await startProvider(rp.uri, {
      TOKEN_ENDPOINT_AUTH_METHOD: method,
      SKIP_CONSENT: skipConsent ? '1' : '0',
      ID_TOKEN_ALG: alg,
    });
  } catch (e) {
    rp.close();
    throw e;
  }
  try {
    const discovery = await (await fetch(`${p.issuer}/.well-known/openid-configuration`)).json();
    check(discovery.issuer === p.issuer, 'discovery issuer is exactly the URL', discovery.issuer);
    const req = authRequest(discovery, p.clientId, rp.uri);
    const extra = zonePage === 'none' ? [] : ['--select-zone', 'b.example'];
    const l = await login(req.url, 'alice', extra);
    log(`login took ${l.ms} ms (exit ${l.code})`);
    check(l.code === 0, 'login.mjs exits 0', `stdout:\n${l.stdout}\nstderr:\n${l.stderr}`);
    check(l.stdout.includes('You can close this window'), 'login.mjs prints the final page text', l.stdout);
    check(l.stderr.includes('consent page') === !skipConsent, `consent page ${skipConsent ? 'skipped' : 'shown'}`, l.stderr);

    const cb = rp.hits[0];
    check(cb && cb.code, 'redirect URI got a code', JSON.stringify(rp.hits));
    check(cb.state === req.state, 'state comes back unchanged');
    check(cb.iss === p.issuer, 'RFC 9207 iss parameter is the issuer', cb.iss);
    if (zonePage !== 'none') check(rp.hits[1]?.zone === 'b.example', `zone chosen via ${zonePage}`, JSON.stringify(rp.hits));

    const bad = await token(discovery, p, method, cb.code, rp.uri, b64url(crypto.randomBytes(32)));
    check(bad.status === 400 && bad.body.error === 'invalid_grant', 'a wrong code_verifier is refused', JSON.stringify(bad));
    // oidc-provider checks PKCE before it consumes the code, so the right verifier still works.
    const good = await token(discovery, p, method, cb.code, rp.uri, req.verifier);
    check(good.status === 200 && good.body.id_token, 'code exchanges for tokens', JSON.stringify(good));
    const { header, payload } = await verifyIdToken(good.body.id_token, discovery);
    check(header.alg === alg, `ID token signed with ${alg}`, header.alg);
    check(payload.iss === p.issuer, 'iss', payload.iss);
    check(payload.aud === p.clientId, 'aud', JSON.stringify(payload.aud));
    check(payload.nonce === req.nonce, 'nonce');
    check(payload.sub === 'alice', 'sub', payload.sub);
    check(payload.email === 'alice@example.com', 'email in the ID token', JSON.stringify(payload));
    check(payload.email_verified === true, 'email_verified in the ID token');
    check(JSON.stringify(payload.groups) === '["ops","dev"]', 'groups in the ID token', JSON.stringify(payload));
    check(payload.exp > Date.now() / 1000, 'exp in the future');

    const me = () => fetch(discovery.userinfo_endpoint, { headers: { authorization: `Bearer ${good.body.access_token}` } })
      .then((r) => r.json());
    const userinfo = await me();
    check(userinfo.email === 'alice@example.com', 'userinfo has email', JSON.stringify(userinfo));

    // Reusing a code is refused, and revokes what the code had issued (RFC 6749 4.1.2).
    const again = await token(discovery, p, method, cb.code, rp.uri, req.verifier);
    check(again.status === 400 && again.body.error === 'invalid_grant', 'a code works only once', JSON.stringify(again));
    const revoked = await me();
    check(revoked.error === 'invalid_token', 'code reuse revokes the access token', JSON.stringify(revoked));
    log(`ID token claims: ${JSON.stringify(payload)}`);
  } finally {
    rp.close();
    await stopProvider(p);
  }
}

// A login name the provider does not know comes back to the redirect URI as access_denied with
// the state and no code; login.mjs, still waiting for its text, times out and exits 1.
async function unknownUser() {
  const rp = await startRedirectListener('none');
  const p = await startProvider(rp.uri).catch((e) => { rp.close(); throw e; });
  try {
    const discovery = await (await fetch(`${p.issuer}/.well-known/openid-configuration`)).json();
    const req = authRequest(discovery, p.clientId, rp.uri);
    const l = await login(req.url, 'mallory', ['--timeout', '5', '--expect', 'text that never shows']);
    check(l.code === 1, 'login.mjs exits 1 when its text never shows', `stdout:\n${l.stdout}\nstderr:\n${l.stderr}`);
    check(l.stderr.includes('screenshot: '), 'a failed login names its screenshot', l.stderr);
    check(rp.hits.length === 1, 'one redirect back', JSON.stringify(rp.hits));
    const [hit] = rp.hits;
    check(hit.error === 'access_denied' && !hit.code, 'unknown account: access_denied and no code', JSON.stringify(hit));
    check(hit.state === req.state && hit.iss === p.issuer, 'refusal carries state and iss', JSON.stringify(hit));
  } finally {
    rp.close();
    await stopProvider(p);
  }
}

// PKCE is required for this confidential client: an /auth request without it is refused.
async function pkceRequired() {
  const rp = await startRedirectListener('none');
  const p = await startProvider(rp.uri).catch((e) => { rp.close(); throw e; });
  try {
    const discovery = await (await fetch(`${p.issuer}/.well-known/openid-configuration`)).json();
    const url = new URL(authRequest(discovery, p.clientId, rp.uri).url);
    url.searchParams.delete('code_challenge');
    url.searchParams.delete('code_challenge_method');
    const res = await fetch(url, { redirect: 'manual' });
    const loc = new URL(res.headers.get('location') ?? 'http://x/', p.issuer);
    check(res.status === 303 && loc.searchParams.get('error') === 'invalid_request', 'auth without PKCE is refused', `${res.status} ${loc}`);
    url.searchParams.set('code_challenge', 'x'.repeat(43));
    url.searchParams.set('code_challenge_method', 'plain');
    const res2 = await fetch(url, { redirect: 'manual' });
    const loc2 = new URL(res2.headers.get('location') ?? 'http://x/', p.issuer);
    check(loc2.searchParams.get('error') === 'invalid_request', 'PKCE plain is refused', `${res2.status} ${loc2}`);
  } finally {
    rp.close();
    await stopProvider(p);
  }
}

const cases = [
  ['basic auth, consent shown, RS256', () => flow({ method: 'client_secret_basic', zonePage: 'none', skipConsent: false, alg: 'RS256' })],
  ['post auth, consent skipped, zone <select>, ES256', () => flow({ method: 'client_secret_post', zonePage: 'select', skipConsent: true, alg: 'ES256' })],
  ['basic auth, consent shown, zone radios, EdDSA', () => flow({ method: 'client_secret_basic', zonePage: 'radio', skipConsent: false, alg: 'EdDSA' })],
  ['unknown account gets no code', unknownUser],
  ['PKCE S256 required', pkceRequired],
];

const only = process.argv[2];
for (const [name, fn] of cases) {
  if (only && !name.includes(only)) continue;
  const t0 = Date.now();
  try {
    await fn();
    passed += 1;
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}
for (const c of children) c.kill('SIGKILL');
fs.rmSync(scratch, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
// Exit now: a listener left open by a failed case must not keep the run (and CI) waiting.
process.exit(failed === 0 && passed > 0 ? 0 : 1);
