// Signs a user in through a real browser, as a person would: Debian's Chromium driven by
// playwright-core (never a downloaded browser).
//
//   node tests/js/login.mjs URL LOGIN PASSWORD [--expect TEXT] [--select-zone ZONE]
//                           [--code CODE] [--then URL2 --then-expect TEXT2]...
//                           [--click SELECTOR --click-expect TEXT] [--shots PREFIX]
//                           [--print-cookies] [--timeout SECONDS] [--screenshot FILE]
//                           [--map HOST=IP]... [--profile DIR] [--dev-code-log FILE]
//
// 1. opens URL and follows redirects (edge -> provider /auth -> devInteractions login form);
// 2. fills input[name=login] and input[name=password], submits (click + wait for navigation);
// 3. clicks the consent page's submit button if the provider asks (it may not);
// 4. follows the redirects back (provider -> redirect_uri, wherever that leads);
// 5. on postern's "Confirm this login" page, acts as the person at the terminal: with --code
//    (default: $POSTERN_LOGIN_CODE, which `postern access` gives its $BROWSER), types that code,
//    chooses --select-zone's radio if asked, and presses Confirm. Without a code it presses
//    nothing (a person who started no login has no code to type);
// 6. with --select-zone, if a page has <select name=zone> or radio inputs named zone outside the
//    confirmation page, chooses ZONE and submits that form;
// 7. waits until the page's text contains --expect (default "You can close this window");
// 8. with --then, opens URL2 in the same browser (its provider session still signed in, as a
//    victim's browser would be) and runs 1-7 again for --then-expect, pressing nothing on a
//    confirmation page. --then may be given more than once: each URL in turn.
// 9. with --click (between 7 and 8): clicks SELECTOR on the first URL's final page (a form's
//    button), waits for the navigation, then for --click-expect's text.
// 10. with --shots PREFIX: a full-page screenshot after each of 7, 9 and 8 (PREFIX-1.png, …);
//    with --print-cookies, stdout ends with one `COOKIE: name=value` line per cookie the
//    browser holds (for a test that goes on with raw requests in the same session).
//
// --map HOST=IP makes Chromium resolve HOST to the loopback address IP (its
// --host-resolver-rules): an edge pool's edges listen on 127.0.0.1, 127.0.0.2, … with one public
// URL, and the map sends this browser to one of them, as a load balancer would.
//
// --dev-code-log FILE: the edge is `postern edge --dev`, whose embedded sign-in asks for an
// email (LOGIN; PASSWORD is unused) and then the one-time code it prints on its terminal: the
// code is read from FILE (the edge's log), the last `login code for LOGIN: CODE` line.
//
// --profile DIR keeps Chromium's profile in DIR (created if missing, never deleted): a later run
// with the same DIR is the same person's browser, still signed in at the provider.
//
// Success: exit 0, stdout is `URL: <final url>` then the page text, then one line per URL
// opened, `PROVIDER-LOGIN N: form` when the provider's login form was filled for it or
// `PROVIDER-LOGIN N: session` when the provider's session let it through. Failure (timeout, error
// page, missing form): exit 1, stderr has the step that failed, the URL, the page text and the
// path of a screenshot. Every step is logged to stderr as `login.mjs: ...`.
//
// Every request to a host other than loopback is aborted (the provider's pages @import a web
// font; this machine has no network, and the tests must not reach out anyway). TLS errors are
// ignored: the edge serves a certificate from a test CA that this fresh profile does not know.

import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { chromium } from 'playwright-core';

const CHROMIUM = process.env.POSTERN_CHROMIUM || '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

function usage(msg) {
  if (msg) console.error(`login.mjs: ${msg}`);
  console.error('usage: node login.mjs URL LOGIN PASSWORD [--expect TEXT] [--select-zone ZONE] [--code CODE] [--then URL2 --then-expect TEXT2] [--timeout SECONDS] [--screenshot FILE] [--map HOST=IP]');
  process.exit(2);
}

function parseArgs(argv) {
  const positional = [];
  const opts = {
    expect: 'You can close this window',
    selectZone: null,
    timeout: 60,
    screenshot: null,
    code: process.env.POSTERN_LOGIN_CODE || null,
    then: [],
    thenExpect: [],
    click: null,
    clickExpect: null,
    shots: null,
    printCookies: false,
    map: [],
    profile: null,
    devCodeLog: null,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      i += 1;
      return argv[i];
    };
    if (a === '--expect') opts.expect = value();
    else if (a === '--select-zone') opts.selectZone = value();
    else if (a === '--timeout') opts.timeout = Number(value());
    else if (a === '--screenshot') opts.screenshot = value();
    else if (a === '--code') opts.code = value();
    else if (a === '--then') opts.then.push(value());
    else if (a === '--then-expect') opts.thenExpect.push(value());
    else if (a === '--click') opts.click = value();
    else if (a === '--click-expect') opts.clickExpect = value();
    else if (a === '--shots') opts.shots = value();
    else if (a === '--print-cookies') opts.printCookies = true;
    else if (a === '--profile') opts.profile = value();
    else if (a === '--dev-code-log') opts.devCodeLog = value();
    else if (a === '--map') {
      const m = /^([a-z0-9.-]+)=(127\.\d+\.\d+\.\d+)$/.exec(value());
      if (!m) usage('--map takes HOST=IP with a 127.x.y.z address');
      opts.map.push(`MAP ${m[1]} ${m[2]}`);
    }
    else if (a.startsWith('--')) usage(`unknown option ${a}`);
    else positional.push(a);
  }
  if (positional.length !== 3) usage('expected URL LOGIN PASSWORD');
  if (!Number.isFinite(opts.timeout) || opts.timeout <= 0) usage('--timeout must be a positive number of seconds');
  if (opts.then.length !== opts.thenExpect.length) usage('--then and --then-expect go together');
  if ((opts.click === null) !== (opts.clickExpect === null)) usage('--click and --click-expect go together');
  const [url, login, password] = positional;
  return { url, login, password, ...opts };
}

const args = parseArgs(process.argv.slice(2));
const started = Date.now();
const deadline = started + args.timeout * 1000;
const remaining = () => Math.max(1, deadline - Date.now());
const log = (msg) => console.error(`login.mjs: [${((Date.now() - started) / 1000).toFixed(2)}s] ${msg}`);

class StepFailed extends Error {}

function isLoopback(url) {
  try {
    const u = new URL(url);
    if (!['http:', 'https:', 'ws:', 'wss:'].includes(u.protocol)) return true; // data:, about:, blob:
    const h = u.hostname.replace(/^\[|\]$/g, '');
    return h === 'localhost' || h.endsWith('.localhost') || h === '::1' || /^127\./.test(h);
  } catch {
    return false;
  }
}

async function pageText(page) {
  let last;
  // A navigation under way destroys the context mid-read: retry briefly on the next document.
  for (let i = 0; i < 20; i += 1) {
    try {
      return await page.evaluate(() => (document.body ? document.body.innerText : document.documentElement?.innerText ?? ''));
    } catch (e) {
      last = e;
      await new Promise((r) => { setTimeout(r, 100); });
    }
  }
  return `(page text unavailable: ${last.message})`;
}

// What the page currently is, decided from its DOM (not its URL: the edge may host its own
// pages under any path).
async function classify(page, expect) {
  return page.evaluate((expect) => {
    const text = document.body ? document.body.innerText : '';
    if (text.includes(expect)) return 'done';
    if (document.querySelector('form[action$="/cdn-cgi/access/confirm"] button[value=confirm]')) return 'confirm';
    if (document.querySelector('input[name=login]') && document.querySelector('input[name=password]')) return 'login';
    if (document.querySelector('form input[name=prompt][value=consent]')) return 'consent';
    if (document.querySelector('form[action$="/cdn-cgi/access/dev-login"] input[name=email]')) return 'dev-email';
    if (document.querySelector('form[action$="/cdn-cgi/access/dev-login"] input[name=code]')) return 'dev-code';
    if (document.querySelector('select[name=zone], input[type=radio][name=zone]')) return 'zone';
    if (document.title === 'oidc-provider error' || /\b(invalid_request|invalid_client|access_denied|server_error|invalid_grant|unauthorized_client|invalid_scope)\b/.test(text)) return 'error';
    return 'other';
  }, expect).catch(() => 'loading');
}

// Clicks `selector` and waits for the navigation it causes, both at once (a click followed by a
// separate wait can miss a fast navigation).
async function clickAndNavigate(page, selector, what) {
  log(`${what}: clicking ${selector}`);
  await Promise.all([
    page.waitForNavigation({ timeout: remaining(), waitUntil: 'domcontentloaded' }),
    page.click(selector, { timeout: remaining() }),
  ]);
  log(`${what}: now at ${page.url()}`);
}

// Acts on each kind of page at most once until the page shows `run.expect`. A loop over
// what the page is, so the order (consent or not, confirmation or not, extra redirects) does
// not matter.
async function follow(page, run, done) {
  for (;;) {
    if (Date.now() >= deadline) throw new StepFailed(`timed out after ${args.timeout}s waiting for ${JSON.stringify(run.expect)}`);
    await page.waitForLoadState('domcontentloaded', { timeout: remaining() }).catch(() => {});
    const kind = await classify(page, run.expect);
    if (kind === 'done') {
      log(`found ${JSON.stringify(run.expect)} at ${page.url()}`);
      return;
    }
    if (kind === 'error') throw new StepFailed('the page shows an OAuth/OIDC error');
    if (kind === 'login' && !done.has('login')) {
      done.add('login');
      log(`login form at ${page.url()}: signing in as ${JSON.stringify(args.login)}`);
      await page.fill('input[name=login]', args.login);
      await page.fill('input[name=password]', args.password);
      await clickAndNavigate(page, 'form:has(input[name=login]) [type=submit]', 'login');
      continue;
    }
    if (kind === 'login') throw new StepFailed('the login form came back after signing in (login refused?)');
    if (kind === 'consent' && !done.has('consent')) {
      done.add('consent');
      log(`consent page at ${page.url()}`);
      await clickAndNavigate(page, 'form:has(input[name=prompt][value=consent]) [type=submit]', 'consent');
      continue;
    }
    if (kind === 'consent') throw new StepFailed('the consent page came back after consenting');
    if (kind === 'dev-email' && args.devCodeLog !== null && !done.has('dev-email')) {
      done.add('dev-email');
      log(`dev sign-in at ${page.url()}: email ${JSON.stringify(args.login)}`);
      // Only a code printed after this request is this login's.
      try { devLogOffset = fs.statSync(args.devCodeLog).size; } catch { devLogOffset = 0; }
      await page.fill('form[action$="/cdn-cgi/access/dev-login"] input[name=email]', args.login);
      await clickAndNavigate(page, 'form[action$="/cdn-cgi/access/dev-login"] button', 'dev email');
      continue;
    }
    if (kind === 'dev-code' && args.devCodeLog !== null && !done.has('dev-code')) {
      done.add('dev-code');
      const code = await devCode();
      log(`dev sign-in: typing the code from ${args.devCodeLog}`);
      await page.fill('form[action$="/cdn-cgi/access/dev-login"] input[name=code]', code);
      await clickAndNavigate(page, 'form[action$="/cdn-cgi/access/dev-login"] button', 'dev code');
      continue;
    }
    if (kind === 'confirm' && run.code !== null && !done.has('confirm')) {
      done.add('confirm');
      log(`confirmation page at ${page.url()}: typing the terminal's code`);
      await page.fill('form[action$="/cdn-cgi/access/confirm"] input[name=code]', run.code);
      if (args.selectZone !== null) await chooseZone(page);
      await clickAndNavigate(page, 'form[action$="/cdn-cgi/access/confirm"] button[value=confirm]', 'confirm');
      continue;
    }
    if (kind === 'zone' && args.selectZone !== null && !done.has('zone')) {
      done.add('zone');
      await chooseZone(page);
      const form = page.locator('form:has(select[name=zone]), form:has(input[type=radio][name=zone])').first();
      const submit = form.locator('[type=submit]').first();
      log('zone: submitting');
      await Promise.all([
        page.waitForNavigation({ timeout: remaining(), waitUntil: 'domcontentloaded' }),
        (await submit.count()) ? submit.click() : form.evaluate((f) => f.requestSubmit()),
      ]);
      log(`zone: now at ${page.url()}`);
      continue;
    }
    // Still redirecting, or a page we only wait on: poll, briefly, for the next state.
    await page.waitForFunction(
      ({ expect }) => !document.body || document.body.innerText.includes(expect)
        || document.querySelector('input[name=login], input[name=prompt][value=consent], select[name=zone], input[type=radio][name=zone], button[value=confirm], form[action$="/cdn-cgi/access/dev-login"]'),
      { expect: run.expect },
      { timeout: Math.min(250, remaining()), polling: 50 },
    ).catch(() => {});
    // A page that holds still without the text we want only changes if something navigates
    // it: keep polling until the deadline.
  }
}

// The dev edge's one-time code for args.login: the last one its log shows, polled until the
// deadline (the edge prints it as it answers the email form).
let devLogOffset = 0;
async function devCode() {
  const needle = `login code for ${args.login.toLowerCase()}: `;
  for (;;) {
    let text = '';
    try { text = fs.readFileSync(args.devCodeLog).subarray(devLogOffset).toString('utf8'); } catch { /* not there yet */ }
    const at = text.lastIndexOf(needle);
    const m = at >= 0 ? /^(\d{6})/.exec(text.slice(at + needle.length)) : null;
    if (m) return m[1];
    if (Date.now() >= deadline) throw new StepFailed(`no ${JSON.stringify(needle)} in ${args.devCodeLog}`);
    await new Promise((r) => { setTimeout(r, 50); });
  }
}

async function chooseZone(page) {
  log(`zone choice at ${page.url()}: choosing ${JSON.stringify(args.selectZone)}`);
  if (await page.locator('select[name=zone]').count()) {
    await page.selectOption('select[name=zone]', args.selectZone);
    return;
  }
  const radio = page.locator(`input[type=radio][name=zone][value="${args.selectZone.replace(/["\\]/g, '\\$&')}"]`);
  if (!(await radio.count())) throw new StepFailed(`no radio input named zone with value ${JSON.stringify(args.selectZone)}`);
  await radio.check();
}

async function main() {
  // --profile: the person's own browser, kept between runs (its provider session too).
  const profile = args.profile ?? fs.mkdtempSync(path.join(os.tmpdir(), 'postern-chromium-'));
  let browser;
  let context;
  let page;
  const done = new Set();
  try {
    log(`launching ${CHROMIUM} (profile ${profile})`);
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      args: args.map.length ? [...ARGS, `--host-resolver-rules=${args.map.join(',')}`] : ARGS,
      headless: true,
      ignoreHTTPSErrors: true,
      timeout: remaining(),
    });
    browser = context;
    await context.route((url) => !isLoopback(url.toString()), (route) => {
      log(`blocked non-loopback request ${route.request().url()}`);
      return route.abort('blockedbyclient');
    });
    page = context.pages()[0] ?? await context.newPage();
    page.setDefaultTimeout(remaining());
    page.on('response', (r) => {
      if (r.request().isNavigationRequest()) log(`${r.request().method()} ${r.url()} -> ${r.status()}`);
    });
    page.on('requestfailed', (r) => {
      if (r.isNavigationRequest()) log(`navigation failed ${r.url()}: ${r.failure()?.errorText}`);
    });

    // The first URL, then (with --then) the second in the same browser, whose provider
    // session is still signed in: each acts on its pages once and waits for its own text.
    const runs = [{ url: args.url, expect: args.expect, code: args.code }];
    args.then.forEach((url, i) => runs.push({ url, expect: args.thenExpect[i], code: null }));
    const formShown = [];
    let shot = 0;
    const snap = async () => {
      if (args.shots === null) return;
      shot += 1;
      const file = `${args.shots}-${shot}.png`;
      await page.screenshot({ path: file, fullPage: true, timeout: 10000 });
      log(`screenshot ${file}`);
    };
    for (const [i, run] of runs.entries()) {
      done.clear();
      log(`opening ${run.url}`);
      await page.goto(run.url, { waitUntil: 'domcontentloaded', timeout: remaining() });
      await follow(page, run, done);
      formShown.push(done.has('login'));
      await snap();
      if (i === 0 && args.click !== null) {
        await clickAndNavigate(page, args.click, 'click');
        await page.waitForFunction(
          (expect) => document.body && document.body.innerText.includes(expect),
          args.clickExpect,
          { timeout: remaining(), polling: 50 },
        ).catch(() => { throw new StepFailed(`after the click, no ${JSON.stringify(args.clickExpect)}`); });
        log(`found ${JSON.stringify(args.clickExpect)} after the click`);
        await snap();
      }
    }

    console.log(`URL: ${page.url()}`);
    console.log(await pageText(page));
    formShown.forEach((shown, i) => console.log(`PROVIDER-LOGIN ${i + 1}: ${shown ? 'form' : 'session'}`));
    if (args.printCookies) {
      for (const c of await context.cookies()) console.log(`COOKIE: ${c.name}=${c.value}`);
    }
    log('ok');
    return 0;
  } catch (e) {
    // Let a navigation that was under way (often Chromium's own error page) settle first.
    if (page) await page.waitForLoadState('domcontentloaded', { timeout: 2000 }).catch(() => {});
    const url = page ? page.url() : '(no page)';
    const text = page ? await pageText(page) : '';
    console.error(`login.mjs: FAILED: ${e instanceof StepFailed ? e.message : e.stack ?? e}`);
    console.error(`login.mjs: steps done: ${[...done].join(', ') || 'none'}`);
    console.error(`login.mjs: final URL: ${url}`);
    console.error(`login.mjs: page text:\n${text}`);
    if (page) {
      const shot = args.screenshot ?? path.join(os.tmpdir(), `postern-login-${process.pid}-${Date.now()}.png`);
      try {
        await page.screenshot({ path: shot, fullPage: true, timeout: 5000 });
        console.error(`login.mjs: screenshot: ${shot}`);
      } catch (se) {
        console.error(`login.mjs: screenshot failed: ${se.message}`);
      }
    }
    return 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
    if (args.profile === null) fs.rmSync(profile, { recursive: true, force: true });
  }
}

// A hard stop in case the browser itself hangs beyond the step deadlines.
const hard = setTimeout(() => {
  console.error(`login.mjs: FAILED: hard timeout after ${args.timeout + 15}s`);
  process.exit(1);
}, (args.timeout + 15) * 1000);
hard.unref();

process.exitCode = await main();
