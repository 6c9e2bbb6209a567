// Drives kubectl latchkey console in Debian's chromium for console_test.go.
// It talks to the Go test over stdio, one JSON object a line: it asks
// ({ask: ...}) and the Go side, which knows the cluster, answers and
// checks. It never prints a key: a key goes to the Go side in an ask.
'use strict';

const readline = require('node:readline');
const path = require('node:path');
const { chromium } = require('playwright-core');

const lines = readline.createInterface({ input: process.stdin });
const pending = [];
lines.on('line', (l) => { const p = pending.shift(); if (p) p(JSON.parse(l)); });
function ask(what, extra) {
  return new Promise((resolve, reject) => {
    pending.push((answer) => (answer.error ? reject(new Error(`${what}: ${answer.error}`)) : resolve(answer)));
    process.stdout.write(JSON.stringify({ ask: what, ...extra }) + '\n');
  });
}
function step(msg) { process.stderr.write(`[browser] ${msg}\n`); }
function check(ok, msg) { if (!ok) throw new Error(msg); }

const shots = process.env.CONSOLE_SCREENSHOTS;
const T = { timeout: 20000 };

async function text(page, sel) { return (await page.locator(sel).textContent()).trim(); }
async function waitText(page, sel, want) {
  await page.waitForFunction(([s, w]) => {
    const e = document.querySelector(s);
    return e && e.textContent.trim() === w;
  }, [sel, want], T);
}
// seen records every text #status shows, so that a state as short as
// "Creating API key…" can be checked after it has passed.
async function watchStatus(page) {
  await page.evaluate(() => {
    window.statusSeen = [];
    new MutationObserver(() => window.statusSeen.push(document.getElementById('status').textContent))
      .observe(document.getElementById('status'), { childList: true, characterData: true, subtree: true });
  });
}
const seen = (page, want) => page.evaluate((w) => window.statusSeen.includes(w), want);
const row = (name) => `tr[data-key="${name}"]`;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  try {
    const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light', deviceScaleFactor: 1 });
    const page = await ctx.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });

    // Open the printed link: it trades the token for a cookie and the
    // token leaves the address bar.
    const { url, empty } = await ask('start-admin');
    const asked = Date.now();
    await page.goto(url);
    const loaded = Date.now() - asked;
    await page.locator('#create').waitFor({ state: 'visible', ...T });
    await page.locator(row('reporter')).waitFor(T);
    await ask('interactive', { loaded });
    check(!page.url().includes('token'), 'the token stayed in the address bar');
    await ctx.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: new URL(page.url()).origin });
    await waitText(page, '#active-count', 'Active keys: 2');
    await watchStatus(page);

    step('create: the name is checked before anything is sent');
    await page.click('#create');
    await page.fill('#create-name', 'Not_A_Name');
    await page.press('#create-name', 'Enter');
    check((await text(page, '#create-error')).startsWith('Use a Kubernetes name'), 'an invalid name was not refused on the page');
    await page.fill('#create-name', 'ci-pipeline');
    await page.fill('#create-description', 'GitHub Actions CI');
    await page.selectOption('#create-expires', '90');
    await page.press('#create-description', 'Enter');
    await page.locator('#secret-dialog[open]').waitFor(T);
    check(await seen(page, 'Creating API key…'), 'the page never said Creating API key…');
    check((await text(page, '#secret-title')) === 'Save your API key', 'no Save your API key dialog');
    check((await text(page, '#secret-dialog')).includes('will never be shown again'), 'no never-shown-again warning');
    const key = await text(page, '#secret-value');
    const { status: created } = await ask('authorize', { key });
    check(created === 200, `the created key was answered ${created} at /authorize`);
    await page.click('#copy');
    await waitText(page, '#copy', 'Copied');
    check(await page.evaluate(async (k) => (await navigator.clipboard.readText()) === k, key), 'the clipboard does not hold the key');
    await page.click('#secret-done');
    await page.locator('#secret-dialog[open]').waitFor({ state: 'detached', ...T });
    await page.locator(row('ci-pipeline')).waitFor(T);
    const hint = await text(page, `${row('ci-pipeline')} .hint`);
    check(hint === `${key.slice(0, 8)}…${key.slice(-4)}`, 'the list does not show the key masked as first 8 … last 4');
    check(!(await page.content()).includes(key), 'the raw key is still on the page after its dialog closed');
    check((await text(page, `${row('other')} td:nth-child(4)`)) === 'Never', 'an unused key does not say Never');
    await page.waitForFunction((s) => /^\d{4}-\d\d-\d\d \d\d:\d\d$/.test(document.querySelector(s).textContent), `${row('reporter')} td:nth-child(4)`, T);
    await waitText(page, '#active-count', 'Active keys: 3');
    const in90 = await page.evaluate(() => new Date(Date.now() + 90 * 864e5).toISOString().slice(0, 10));
    check((await text(page, `${row('ci-pipeline')} td:nth-child(6)`)) === in90, 'the key does not expire in 90 days');

    step('revoke from the page');
    await page.click('button[aria-label="Revoke ci-pipeline"]');
    check((await text(page, '#confirm-title')) === 'Revoke ci-pipeline?', 'the confirmation does not name the key');
    await page.click('#confirm-ok');
    await waitText(page, `${row('ci-pipeline')} .badge`, 'Revoked');
    check(await seen(page, 'Revoking key…'), 'the page never said Revoking key…');
    check(await page.locator('button[aria-label="Revoke ci-pipeline"]').count() === 0, 'the Revoke button stayed');
    await waitText(page, '#active-count', 'Active keys: 2');
    const { status: revoked } = await ask('authorize', { key });
    check(revoked === 401, `the revoked key was answered ${revoked} at /authorize`);
    await page.waitForFunction((s) => /^Revoked: /.test(document.querySelector(s).title), `${row('ci-pipeline')} .badge`, T)
      .catch(() => { throw new Error('the Revoked badge gives no reason on hover'); });

    step('revoke from the API: the page follows');
    await ask('revoke', { name: 'other' });
    await waitText(page, `${row('other')} .badge`, 'Revoked');
    await waitText(page, '#active-count', 'Active keys: 1');

    step('rotate, suspend and resume with the same dialogs');
    await page.click('button[aria-label="Rotate reporter"]');
    await page.click('#confirm-ok');
    await page.locator('#secret-dialog[open]').waitFor(T);
    const rotated = await text(page, '#secret-value');
    const { status: rotatedStatus } = await ask('authorize', { key: rotated });
    check(rotatedStatus === 200, `the rotated key was answered ${rotatedStatus}`);
    await page.click('#secret-done');
    await page.click('button[aria-label="Suspend reporter"]');
    await page.click('#confirm-ok');
    await waitText(page, `${row('reporter')} .badge`, 'Suspended');
    await waitText(page, '#active-count', 'Active keys: 0');
    await page.click('button[aria-label="Resume reporter"]');
    await page.click('#confirm-ok');
    await waitText(page, `${row('reporter')} .badge`, 'Active');
    await waitText(page, '#active-count', 'Active keys: 1');

    step('usage');
    await page.click('#nav-usage');
    await page.locator('#chart g.bar').first().waitFor(T);
    // A Usage's status is written at most every 2 s: the resumed key is
    // counted within a poll or two.
    await waitText(page, '#card-keys', '1');
    const cards = {
      executions: await text(page, '#card-executions'),
      success: await text(page, '#card-success'),
      duration: await text(page, '#card-duration'),
      keys: await text(page, '#card-keys'),
      window: await text(page, '#window'),
    };
    const { date } = await ask('usage-cards', { cards });
    await page.hover(`#chart g.bar[data-date="${date}"]`);
    await page.locator('#tooltip:not([hidden])').waitFor(T);
    const tooltip = await text(page, '#tooltip');
    if (shots) await page.screenshot({ path: path.join(shots, 'console-usage.png') });
    await page.focus(`#chart g.bar[data-date="${date}"]`);
    const focused = await text(page, '#tooltip');
    await ask('tooltip', { tooltip, focused });

    step('scopes: given at create, edited in their dialog, enforced at /authorize');
    await page.click('#nav-keys');
    await page.click('#create');
    await page.fill('#create-name', 'orders-app');
    await page.fill('#create-scopes', 'Orders:Read');
    await page.press('#create-scopes', 'Enter');
    check((await text(page, '#create-error')).startsWith('The scope “Orders:Read” is not a scope name'), 'an invalid scope was not refused on the page');
    await page.fill('#create-scopes', 'orders:read');
    await page.press('#create-scopes', 'Enter');
    await page.locator('#secret-dialog[open]').waitFor(T);
    const scoped = await text(page, '#secret-value');
    await page.click('#secret-done');
    const scopesOf = `${row('orders-app')} .scopes`;
    await waitText(page, scopesOf, 'orders:read');
    const { status: unscoped } = await ask('authorize', { key: scoped, scope: 'orders:write' });
    check(unscoped === 403, `a key without orders:write was answered ${unscoped} for a route requiring it`);
    await page.click('button[aria-label="Scopes orders-app"]');
    check((await text(page, '#confirm-title')) === 'Scopes of orders-app', 'the Scopes dialog does not name the key');
    check(await page.inputValue('#confirm-scopes') === 'orders:read', 'the Scopes dialog does not show the current scopes');
    await page.fill('#confirm-scopes', 'orders:read orders:read');
    await page.click('#confirm-ok');
    check((await text(page, '#confirm-error')) === 'The scope “orders:read” is listed twice.', 'a duplicate scope was not refused on the page');
    await page.fill('#confirm-scopes', 'orders:read,orders:write');
    await page.click('#confirm-ok');
    await waitText(page, scopesOf, 'orders:readorders:write');
    check(await seen(page, 'Saving scopes…'), 'the page never said Saving scopes…');
    const { status: added } = await ask('authorize', { key: scoped, scope: 'orders:write' });
    check(added === 200, `the key given orders:write was answered ${added} for a route requiring it`);
    await page.click('button[aria-label="Scopes orders-app"]');
    check(await page.inputValue('#confirm-scopes') === 'orders:read, orders:write', 'the Scopes dialog does not show both scopes');
    await page.fill('#confirm-scopes', 'orders:read');
    await page.press('#confirm-scopes', 'Enter');
    await waitText(page, scopesOf, 'orders:read');
    const { status: removed } = await ask('authorize', { key: scoped, scope: 'orders:write' });
    check(removed === 403, `the key whose orders:write was removed was answered ${removed} for a route requiring it`);
    await page.mouse.move(0, 0);
    if (shots) await page.screenshot({ path: path.join(shots, 'console-keys.png') });
    await page.click('#nav-usage');

    step('the namespace picker, and a tenant with no executions');
    await page.selectOption('#namespace', empty);
    await page.locator('#usage-empty:not([hidden])').waitFor(T);
    check((await text(page, '#usage-empty')).startsWith('No executions reported yet — see Reporting executions'), 'no empty state');
    check(await page.locator('#chart').isHidden(), 'an empty tenant shows a chart');
    await page.click('#nav-keys');
    await page.locator('#keys-empty:not([hidden])').waitFor(T);
    await waitText(page, '#active-count', 'Active keys: 0');
    check(problems.length === 0, problems.join('; '));
    await page.close();

    step('a user who may only get and list');
    const viewerCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const viewer = await viewerCtx.newPage();
    const { url: viewerURL } = await ask('start-viewer');
    await viewer.goto(viewerURL);
    await viewer.locator(row('ci-pipeline')).waitFor(T);
    await viewer.locator('#notice:not([hidden])').waitFor(T);
    const notice = await text(viewer, '#notice');
    check(await viewer.locator('#create').isHidden(), 'a viewer sees Create key');
    check(await viewer.locator('button[data-action]').count() === 0, 'a viewer sees Revoke or other actions');
    await ask('viewer-notice', { notice });

    step('a refusal from the API server is shown, not a blank page');
    const { url: elsewhere } = await ask('start-viewer-elsewhere');
    await viewer.goto(elsewhere);
    await viewer.locator('#error:not([hidden])').waitFor(T);
    await ask('refusal', { notice: await text(viewer, '#error') });
    await viewerCtx.close();
  } finally {
    await browser.close();
  }
  await ask('done');
}

main().then(() => process.exit(0), (e) => {
  step(`FAILED: ${e.message}`);
  process.exit(1);
});
