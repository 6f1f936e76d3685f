// A real OpenID Connect provider (panva's oidc-provider 9.x) for postern's end-to-end SSO tests.
//
//   PORT=P CLIENT_ID=I CLIENT_SECRET=S REDIRECT_URIS=u1,u2 ACCOUNTS='[...]' node tests/js/provider.mjs
//
// Issuer: exactly `http://127.0.0.1:$PORT` (no trailing slash). One confidential client from the
// environment: authorization_code only, response_type `code`, PKCE (S256) required,
// token_endpoint_auth_method `client_secret_basic` unless TOKEN_ENDPOINT_AUTH_METHOD says
// `client_secret_post` (oidc-provider 9 takes the secret from a Basic header or the form body
// whichever is registered: the setting changes registration, not what is accepted). Sign-in is the library's devInteractions: a plain form
// (`input[name=login]`, `input[name=password]`, any password) whose login name is the account id,
// then a consent page with one "Continue" button (SKIP_CONSENT=1 grants the requested scopes
// without asking, to exercise a browser driver that must cope with either).
//
// ACCOUNTS is JSON: [{"id":"alice","email":"alice@example.com","groups":["ops"]}, ...]; an
// account may list `"amr": ["pwd","mfa"]` and `"acr": "…"`, which its sign-ins then report in
// the ID token (as if the provider had asked for a second factor). A login
// name that is not listed is refused: the browser goes back to the redirect_uri with
// `error=access_denied&error_description=unknown+account&state=...&iss=...` and no code.
//
// ID tokens carry email, email_verified and groups when those scopes are requested
// (`conformIdTokenClaims: false`); the userinfo endpoint serves them too.
//
// Sessions: a second authorization request in the same browser reuses the provider's session
// (no login form) unless it carries `max_age` and the session's sign-in is older, or
// `prompt=login`; the ID token then carries `auth_time`.
//
// Prints `oidc-provider listening on http://127.0.0.1:PORT` on stdout once the socket is bound.
// Logs one line per request and per notable event to stderr. Exits 0 on SIGTERM or SIGINT.
//
// Optional: ID_TOKEN_ALG (the client's id_token_signed_response_alg: RS256 default, ES256,
// EdDSA). TTLs are fixed (code 60 s, tokens 10 min): a test of expiry should feed the edge its
// own clock rather than wait for a short real one.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

// Once, on stderr, how long start-up took up to the point of binding: a selftest once saw a
// provider print nothing for 60 s without exiting, and this line tells a slow import or key
// generation from a silent `listen`.
const started = Date.now();

function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback !== undefined) return fallback;
    console.error(`provider.mjs: environment variable ${name} is required`);
    process.exit(2);
  }
  return v;
}

const port = Number.parseInt(env('PORT'), 10);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error(`provider.mjs: PORT must be a TCP port, got ${process.env.PORT}`);
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;
const clientId = env('CLIENT_ID');
const clientSecret = env('CLIENT_SECRET');
const redirectUris = env('REDIRECT_URIS').split(',').map((s) => s.trim()).filter(Boolean);
const authMethod = env('TOKEN_ENDPOINT_AUTH_METHOD', 'client_secret_basic');
if (!['client_secret_basic', 'client_secret_post'].includes(authMethod)) {
  console.error(`provider.mjs: TOKEN_ENDPOINT_AUTH_METHOD must be client_secret_basic or client_secret_post, got ${authMethod}`);
  process.exit(2);
}
const idTokenAlg = env('ID_TOKEN_ALG', 'RS256');
const skipConsent = env('SKIP_CONSENT', '0') === '1';

let accounts;
try {
  accounts = JSON.parse(env('ACCOUNTS', '[]'));
  if (!Array.isArray(accounts)) throw new Error('not an array');
} catch (e) {
  console.error(`provider.mjs: ACCOUNTS must be a JSON array of {id,email,groups}: ${e.message}`);
  process.exit(2);
}
const accountsById = new Map(accounts.map((a) => [String(a.id), a]));

// Fresh signing keys per process: a test never trusts a key it did not just see in jwks_uri.
function jwk(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomUUID()}` };
}
const jwks = {
  keys: [
    // The first key of the client's algorithm signs; RS256 first as the OIDC default.
    jwk('rsa', { modulusLength: 2048 }, 'RS256'),
    jwk('ec', { namedCurve: 'P-256' }, 'ES256'),
    jwk('ed25519', {}, 'EdDSA'),
  ],
};

const configuration = {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: authMethod,
    id_token_signed_response_alg: idTokenAlg,
  }],
  jwks,
  // PKCE for every client, not only public ones (the library's default requires it only for
  // token_endpoint_auth_method `none`). v9 accepts only S256; `plain` is rejected.
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    // Only what the tests use; everything else stays off so discovery lists only real endpoints.
    introspection: { enabled: false },
    revocation: { enabled: false },
    rpInitiatedLogout: { enabled: false },
  },
  // Put the scope-granted claims (email, groups) into the ID token itself, not only userinfo.
  conformIdTokenClaims: false,
  claims: {
    // amr and acr, when the sign-in set them (an account with `amr`/`acr`), as a provider that
    // reports its authentication methods does.
    openid: ['sub', 'amr', 'acr'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
    profile: ['name', 'preferred_username'],
  },
  scopes: ['openid', 'email', 'groups', 'profile'],
  responseTypes: ['code'],
  async findAccount(_ctx, id) {
    const account = accountsById.get(String(id));
    if (!account) {
      console.error(`provider.mjs: unknown account ${JSON.stringify(id)}`);
      return undefined;
    }
    return {
      accountId: String(account.id),
      async claims(_use, _scope) {
        return {
          sub: String(account.id),
          email: account.email,
          email_verified: true,
          groups: account.groups ?? [],
          name: account.name ?? String(account.id),
          preferred_username: String(account.id),
        };
      },
    };
  },
  // The browser talks to the provider over plain http on 127.0.0.1: cookies are `SameSite=Lax`,
  // not `Secure` (the library only adds Secure when the request itself is https, and `proxy`
  // stays false so no X-Forwarded-Proto can flip that). Cookies are keyed by host, not port, so
  // the edge on 127.0.0.1 shares this jar: the provider's cookie names are prefixed to stay
  // clear of whatever the edge calls its own. Signed with a per-process key.
  cookies: {
    names: {
      session: 'oidc_op_session',
      interaction: 'oidc_op_interaction',
      resume: 'oidc_op_interaction_resume',
    },
    keys: [crypto.randomBytes(32).toString('base64url')],
    long: { httpOnly: true, sameSite: 'lax', signed: true },
    short: { httpOnly: true, sameSite: 'lax', signed: true },
  },
  ttl: {
    AccessToken: 600,
    AuthorizationCode: 60,
    IdToken: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
  // Plain-text errors on stderr and in the page, so a failed test shows why.
  async renderError(ctx, out, error) {
    console.error(`provider.mjs: error page: ${JSON.stringify(out)} ${error?.stack ?? error}`);
    ctx.type = 'html';
    const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
    ctx.body = `<!DOCTYPE html><html><head><title>oidc-provider error</title></head><body>
<h1>oidc-provider error</h1><pre>${Object.entries(out).map(([k, v]) => `${esc(k)}: ${esc(v)}`).join('\n')}</pre></body></html>`;
  },
};

if (skipConsent) {
  // Grant whatever the client asks for, so the consent prompt never shows.
  configuration.loadExistingGrant = async (ctx) => {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(' ') : 'openid');
    grant.addOIDCClaims(['email', 'email_verified', 'groups', 'name', 'preferred_username']);
    await grant.save();
    return grant;
  };
}

const provider = new Provider(issuer, configuration);
// Never trust X-Forwarded-* here: the tests talk to this process directly.
provider.proxy = false;

provider.on('server_error', (_ctx, err) => console.error(`provider.mjs: server_error: ${err?.stack ?? err}`));
provider.on('authorization.error', (_ctx, err) => console.error(`provider.mjs: authorization.error: ${err?.message} ${err?.error_description ?? ''}`));
provider.on('grant.error', (_ctx, err) => console.error(`provider.mjs: grant.error: ${err?.message} ${err?.error_description ?? ''}`));
provider.on('grant.success', () => console.error('provider.mjs: grant.success'));

const callback = provider.callback();

// devInteractions accepts any login name; one that is not in ACCOUNTS would end in a 500 when
// the provider looks the account up. Answer it the way an identity provider that refuses a user
// does instead: back to the client's redirect_uri with error=access_denied (and the state), so a
// test can prove the edge turns that into a refusal. An account with `amr`/`acr` is signed in
// here with those (devInteractions knows no methods). Otherwise the body read here is handed
// on as `req.body`, which the library's parser accepts (it logs a one-time notice about it).
async function finishLoginHere(req, res) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) {
      res.statusCode = 413;
      res.end();
      return true;
    }
    chunks.push(chunk);
  }
  const body = Buffer.concat(chunks).toString('utf8');
  req.body = body;
  const form = new URLSearchParams(body);
  if (form.get('prompt') !== 'login') return false;
  const account = accountsById.get(form.get('login') ?? '');
  if (account && (account.amr || account.acr)) {
    // An account that stands for a stronger sign-in: the login ends with the methods and
    // class it lists, as a provider's own MFA step would report them.
    console.error(`provider.mjs: signing ${JSON.stringify(account.id)} in with amr ${JSON.stringify(account.amr ?? [])} acr ${JSON.stringify(account.acr ?? null)}`);
    await provider.interactionFinished(req, res, {
      login: { accountId: String(account.id), amr: account.amr, acr: account.acr },
    }, { mergeWithLastSubmission: false });
    return true;
  }
  if (account) return false;
  console.error(`provider.mjs: refusing unknown login ${JSON.stringify(form.get('login'))} with access_denied`);
  await provider.interactionFinished(req, res, {
    error: 'access_denied',
    error_description: 'unknown account',
  }, { mergeWithLastSubmission: false });
  return true;
}

// TOKEN_DELAY_MS: a slow token endpoint, so a test can make the edge's code exchange outlast
// the browser connection that waits for it.
const tokenDelay = Number(process.env.TOKEN_DELAY_MS || 0);

const server = http.createServer((req, res) => {
  res.on('finish', () => console.error(`provider.mjs: ${req.method} ${req.url.split('?')[0]} -> ${res.statusCode}`));
  if (tokenDelay > 0 && req.method === 'POST' && req.url.split('?')[0] === '/token') {
    console.error(`provider.mjs: holding a token request for ${tokenDelay} ms`);
    setTimeout(() => callback(req, res), tokenDelay);
    return;
  }
  if (req.method === 'POST' && /^\/interaction\/[^/]+$/.test(req.url.split('?')[0])) {
    finishLoginHere(req, res).then((handled) => {
      if (!handled) callback(req, res);
    }, (e) => {
      console.error(`provider.mjs: interaction submit failed: ${e?.stack ?? e}`);
      res.statusCode = 400;
      res.end(`interaction submit failed: ${e?.message ?? e}`);
    });
    return;
  }
  callback(req, res);
});

console.error(`provider.mjs: configured in ${Date.now() - started} ms after its imports; binding 127.0.0.1:${port}`);
server.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
server.on('error', (e) => {
  console.error(`provider.mjs: cannot listen on 127.0.0.1:${port}: ${e.message}`);
  process.exit(1);
});

function stop(signal) {
  console.error(`provider.mjs: ${signal}, exiting`);
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
