// Loads one page in a real browser, as a person who types the URL would: Debian's Chromium
// driven by playwright-core (never a downloaded browser), and reports what it showed.
//
//   node tests/js/page.mjs URL [--screenshot FILE] [--timeout SECONDS]
//
// Success: exit 0; stdout is `STATUS: <code>`, `CONTENT-TYPE: <value>`, `CSP: <value>` (the
// response's Content-Security-Policy header, empty if none), then `TEXT:` and the page's
// rendered text (document.body.innerText). With --screenshot, a full-page PNG is written there.
// Failure (navigation error, timeout): exit 1 with the cause on stderr.
//
// Every request to a host other than loopback is aborted (the tests must not reach out), and
// TLS errors are ignored: the edge serves a certificate from a test CA this fresh profile does
// not know. `*.localhost` names resolve to loopback in Chromium itself.

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
  if (msg) console.error(`page.mjs: ${msg}`);
  console.error('usage: node page.mjs URL [--screenshot FILE] [--timeout SECONDS]');
  process.exit(2);
}

const argv = process.argv.slice(2);
if (argv.length < 1) usage('URL is missing');
const url = argv[0];
let screenshot = null;
let timeout = 30;
for (let i = 1; i < argv.length; i++) {
  const flag = argv[i];
  const value = argv[++i];
  if (value === undefined) usage(`${flag} needs a value`);
  if (flag === '--screenshot') screenshot = value;
  else if (flag === '--timeout') timeout = Number(value);
  else usage(`unknown flag ${flag}`);
}

function loopback(u) {
  const host = new URL(u).hostname;
  return host === 'localhost' || host.endsWith('.localhost') || host.startsWith('127.') || host === '[::1]';
}

const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS });
try {
  const context = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 900, height: 700 },
  });
  await context.route('**/*', (route) =>
    loopback(route.request().url()) ? route.continue() : route.abort());
  const page = await context.newPage();
  page.setDefaultTimeout(timeout * 1000);
  const response = await page.goto(url, { waitUntil: 'load', timeout: timeout * 1000 });
  if (!response) throw new Error(`no response for ${url}`);
  const headers = await response.allHeaders();
  const text = await page.evaluate(() => document.body ? document.body.innerText : '');
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  console.log(`STATUS: ${response.status()}`);
  console.log(`CONTENT-TYPE: ${headers['content-type'] || ''}`);
  console.log(`CSP: ${headers['content-security-policy'] || ''}`);
  console.log('TEXT:');
  console.log(text);
} catch (e) {
  console.error(`page.mjs: ${url}: ${e.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
