// The console's page: plain DOM, no framework. Every change goes through
// the console's API, which acts as the user; the raw key of a create or a
// rotation lives only in the Save dialog and is dropped when it closes.
'use strict';

const $ = (id) => document.getElementById(id);
const POLL_MS = 2000;
const NAME = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
// SCOPE and the bounds in scopesProblem are the API's for spec.scopes.
const SCOPE = /^[a-z0-9]([-a-z0-9.:]*[a-z0-9])?$/;

const state = { ns: '', page: 'keys', timer: 0, busy: false, shownKeys: '', shownUsage: '' };

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    credentials: 'same-origin',
    cache: 'no-store',
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = null;
  try { data = await res.json(); } catch (_) { data = null; }
  if (!res.ok) {
    const msg = data && data.message ? data.message : `the console answered ${res.status} ${res.statusText}`;
    throw new Error(msg);
  }
  return data;
}

function nsPath(rest) { return `/api/namespaces/${encodeURIComponent(state.ns)}${rest}`; }

function showError(msg) {
  const el = $('error');
  el.textContent = msg || '';
  el.hidden = !msg;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v; else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) e.append(c);
  return e;
}

const day = (s) => (s ? s.slice(0, 10) : '');
const minute = (s) => (s ? s.slice(0, 16).replace('T', ' ') : '');

// ---- API Keys ----

const ACTIONS = {
  revoke: { done: 'Revoked', label: 'Revoke', title: (n) => `Revoke ${n}?`, ok: 'Revoke key', doing: 'Revoking key…',
    text: (n) => `Requests carrying ${n} are refused from the moment it is revoked, and it can never be restored. It stays in the list for audit.` },
  rotate: { done: 'Rotated', label: 'Rotate', title: (n) => `Rotate ${n}?`, ok: 'Rotate key', doing: 'Rotating key…',
    text: (n) => `Latchkey mints a new key for ${n} into the same Secret; the current key keeps working for the key's grace period (1h unless set). The new key is shown once.` },
  suspend: { done: 'Suspended', label: 'Suspend', title: (n) => `Suspend ${n}?`, ok: 'Suspend key', doing: 'Suspending key…',
    text: (n) => `Requests carrying ${n} are refused until it is resumed. Unlike revoking, this can be undone.` },
  resume: { done: 'Resumed', label: 'Resume', title: (n) => `Resume ${n}?`, ok: 'Resume key', doing: 'Resuming key…',
    text: (n) => `The same key ${n} works again.` },
  // scopes asks for the new list in the dialog and sends it as the body.
  scopes: { done: 'Saved the scopes of', label: 'Scopes', title: (n) => `Scopes of ${n}`, ok: 'Save scopes', doing: 'Saving scopes…',
    text: (n) => `Routes that require a scope refuse ${n} without it. A scope removed here is refused from the moment it is saved.`,
    field: true },
};

function setStatus(msg) { $('status').textContent = msg || ''; }

async function loadKeys() {
  if (!state.ns) return;
  let v;
  try {
    v = await api('GET', nsPath('/apikeys'));
  } catch (e) {
    state.shownKeys = '';
    showError(e.message);
    $('keys').replaceChildren();
    $('create').hidden = true;
    return;
  }
  showError('');
  // Redraw only what changed: a redraw would take the focus from a button.
  const seen = JSON.stringify(v);
  if (seen === state.shownKeys) return;
  state.shownKeys = seen;
  $('active-count').textContent = `Active keys: ${v.active}`;
  $('create').hidden = !v.canCreate;
  $('notice').textContent = v.notice || '';
  $('notice').hidden = !v.notice;
  $('keys-empty').hidden = v.keys.length > 0;
  const rows = v.keys.map((k) => {
    const badge = el('span', { class: `badge ${k.status.toLowerCase()}`, title: k.reason || k.status, tabindex: '0' }, k.status);
    const expires = el('td', {}, k.expires ? day(k.expires) : '—');
    if (k.expiresIn) expires.append(' ', el('span', { class: 'warn' }, `expires in ${k.expiresIn}`));
    const actions = el('td', { class: 'actions' });
    for (const a of k.actions) {
      const b = el('button', { type: 'button', class: a === 'revoke' ? 'danger ghost' : 'ghost', 'aria-label': `${ACTIONS[a].label} ${k.name}`,
        'data-action': a, 'data-name': k.name, 'data-scopes': (k.scopes || []).join(', ') }, ACTIONS[a].label);
      actions.append(b);
    }
    const name = el('td', { class: 'name' }, el('strong', {}, k.name));
    if (k.description) name.append(el('div', { class: 'desc' }, k.description));
    if (k.scopes) name.append(el('div', { class: 'scopes', 'aria-label': 'Scopes' }, ...k.scopes.map((sc) => el('span', { class: 'scope' }, sc))));
    return el('tr', { 'data-key': k.name },
      name,
      el('td', {}, el('code', { class: 'hint' }, k.keyHint || '—')),
      el('td', {}, day(k.created)),
      el('td', {}, k.lastUsed ? minute(k.lastUsed) : 'Never'),
      el('td', { class: 'status-cell' }, badge),
      expires,
      actions);
  });
  $('keys').replaceChildren(...rows);
}

function openCreate() {
  $('create-form').reset();
  $('create-error').textContent = '';
  $('create-submit').disabled = false;
  $('create-submit').textContent = 'Create key';
  $('create-dialog').showModal();
  $('create-name').focus();
}

function nameProblem(name) {
  if (!name) return 'A name is required.';
  if (name.length > 63) return 'A name has at most 63 characters.';
  if (!NAME.test(name)) return 'Use a Kubernetes name: lowercase letters, digits, “-” and “.”, starting and ending with a letter or digit.';
  return '';
}

const parseScopes = (s) => s.split(/[\s,]+/).filter(Boolean);

function scopesProblem(scopes) {
  if (scopes.length > 16) return 'A key has at most 16 scopes.';
  for (const [i, sc] of scopes.entries()) {
    if (sc.length > 63) return `The scope “${sc}” is longer than 63 characters.`;
    if (!SCOPE.test(sc)) return `The scope “${sc}” is not a scope name: use lowercase letters, digits, “-”, “.” and “:”, starting and ending with a letter or digit.`;
    if (scopes.indexOf(sc) < i) return `The scope “${sc}” is listed twice.`;
  }
  return '';
}

// invalid shows problem under input, or clears it, and says whether there was one.
function invalid(input, error, problem) {
  $(error).textContent = problem;
  $(input).setAttribute('aria-invalid', problem ? 'true' : 'false');
  if (problem) $(input).focus();
  return Boolean(problem);
}

async function submitCreate(ev) {
  ev.preventDefault();
  if (state.busy) return;
  const name = $('create-name').value.trim();
  const scopes = parseScopes($('create-scopes').value);
  $('create-scopes').setAttribute('aria-invalid', 'false');
  if (invalid('create-name', 'create-error', nameProblem(name))) return;
  if (invalid('create-scopes', 'create-error', scopesProblem(scopes))) return;
  state.busy = true;
  $('create-submit').disabled = true;
  $('create-submit').textContent = 'Creating API key…';
  setStatus('Creating API key…');
  try {
    const v = await api('POST', nsPath('/apikeys'), { name, description: $('create-description').value, expiresInDays: Number($('create-expires').value), scopes });
    $('create-dialog').close();
    showSecret(v.name, v.key, '');
    setStatus(`Created ${v.name}.`);
  } catch (e) {
    $('create-error').textContent = e.message;
    $('create-submit').disabled = false;
    $('create-submit').textContent = 'Create key';
    setStatus('');
  } finally {
    state.busy = false;
    loadKeys();
  }
}

function showSecret(name, key, extra) {
  $('secret-name').textContent = name;
  $('secret-value').textContent = key;
  $('secret-extra').textContent = extra;
  $('copy').textContent = 'Copy';
  $('secret-dialog').showModal();
}

async function copySecret() {
  const key = $('secret-value').textContent;
  try {
    await navigator.clipboard.writeText(key);
    $('copy').textContent = 'Copied';
  } catch (_) {
    const range = document.createRange();
    range.selectNodeContents($('secret-value'));
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    $('copy').textContent = 'Press Ctrl+C';
  }
}

function closeSecret() {
  // Forget the key: nothing on the page holds it once the dialog is gone.
  $('secret-value').textContent = '';
  $('secret-name').textContent = '';
  if ($('secret-dialog').open) $('secret-dialog').close();
}

function openConfirm(action, name, scopes) {
  const a = ACTIONS[action];
  $('confirm-title').textContent = a.title(name);
  $('confirm-text').textContent = a.text(name);
  $('confirm-error').textContent = '';
  $('confirm-field').hidden = !a.field;
  $('confirm-scopes').value = scopes || '';
  $('confirm-scopes').setAttribute('aria-invalid', 'false');
  const ok = $('confirm-ok');
  ok.textContent = a.ok;
  ok.disabled = false;
  ok.className = action === 'revoke' ? 'danger' : 'primary';
  ok.dataset.action = action;
  ok.dataset.name = name;
  $('confirm-dialog').showModal();
  (a.field ? $('confirm-scopes') : ok).focus();
}

async function confirmAction() {
  const ok = $('confirm-ok');
  const { action, name } = ok.dataset;
  const a = ACTIONS[action];
  if (state.busy) return;
  let body;
  if (a.field) {
    const scopes = parseScopes($('confirm-scopes').value);
    if (invalid('confirm-scopes', 'confirm-error', scopesProblem(scopes))) return;
    body = { scopes };
  }
  state.busy = true;
  ok.disabled = true;
  ok.textContent = a.doing;
  setStatus(a.doing);
  try {
    const v = await api('POST', nsPath(`/apikeys/${encodeURIComponent(name)}/${action}`), body);
    $('confirm-dialog').close();
    setStatus(`${a.done} ${name}.`);
    if (v.key) showSecret(name, v.key, 'The previous key keeps working for its grace period.');
  } catch (e) {
    $('confirm-error').textContent = e.message;
    ok.disabled = false;
    ok.textContent = a.ok;
    setStatus('');
  } finally {
    state.busy = false;
    loadKeys();
  }
}

// ---- Usage ----

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  return e;
}

// niceMax is the chart's top: even up to 10, so that the middle line is a
// whole number, then 1, 2 or 5 times a power of ten.
function niceMax(n) {
  if (n <= 10) return Math.max(2, Math.ceil(n / 2) * 2);
  const p = Math.pow(10, Math.floor(Math.log10(n)));
  for (const m of [1, 2, 5, 10]) if (m * p >= n) return m * p;
  return 10 * p;
}

// drawBars draws one stacked bar per day: series are [field, class] from
// the bottom up; label says what a focused or hovered bar shows.
function drawBars(target, days, series, height, label) {
  const W = 1100, H = height, left = 40, bottom = 22, top = 8;
  target.setAttribute('viewBox', `0 0 ${W} ${H}`);
  target.replaceChildren();
  const totals = days.map((d) => series.reduce((s, [f]) => s + f(d), 0));
  const most = niceMax(Math.max(0, ...totals));
  const plotH = H - bottom - top;
  const step = (W - left) / Math.max(days.length, 1);
  const barW = Math.max(2, step * 0.7);
  for (const frac of [0, 0.5, 1]) {
    const y = top + plotH * (1 - frac);
    target.append(svg('line', { x1: left, x2: W, y1: y, y2: y, class: 'grid' }));
    const t = svg('text', { x: left - 6, y: y + 4, class: 'axis', 'text-anchor': 'end' });
    t.textContent = String(Math.round(most * frac));
    target.append(t);
  }
  days.forEach((d, i) => {
    const x = left + i * step + (step - barW) / 2;
    const g = svg('g', { class: 'bar', tabindex: '0', role: 'img', 'aria-label': label(d), 'data-date': d.date });
    g.append(svg('rect', { x: left + i * step, y: top, width: step, height: plotH, class: 'hit' }));
    let y = top + plotH;
    for (const [f, cls] of series) {
      const h = (f(d) / most) * plotH;
      if (h > 0) {
        y -= h;
        g.append(svg('rect', { x, y, width: barW, height: h, class: cls, rx: 1.5 }));
      }
    }
    if (i % 5 === 0 || i === days.length - 1) {
      const t = svg('text', { x: x + barW / 2, y: H - 6, class: 'axis', 'text-anchor': 'middle' });
      t.textContent = d.date.slice(5);
      target.append(t);
    }
    target.append(g);
  });
}

function tooltipFor(d) {
  const open = d.total - d.succeeded - d.failed;
  let s = `${d.date} · ${d.total} execution${d.total === 1 ? '' : 's'} · ${d.succeeded} succeeded · ${d.failed} failed`;
  if (open > 0) s += ` · ${open} in flight`;
  return s;
}

function showTooltip(g) {
  const tip = $('tooltip');
  tip.textContent = g.getAttribute('aria-label');
  tip.hidden = false;
  const wrap = $('chart').parentElement.getBoundingClientRect();
  const r = g.getBoundingClientRect();
  const half = tip.offsetWidth / 2;
  const x = Math.min(Math.max(r.left - wrap.left + r.width / 2, half), wrap.width - half);
  tip.style.left = `${x}px`;
  tip.style.top = `${Math.max(r.top - wrap.top - 8, 0)}px`;
}

async function loadUsage() {
  if (!state.ns) return;
  let v;
  try {
    v = await api('GET', nsPath('/usage'));
  } catch (e) {
    state.shownUsage = '';
    showError(e.message);
    return;
  }
  showError('');
  const seen = JSON.stringify(v);
  if (seen === state.shownUsage) return;
  state.shownUsage = seen;
  const s = v.status || {};
  const days = s.days || [];
  $('window').textContent = `last ${v.windowDays || 30} days`;
  $('card-executions').textContent = String(s.executions || 0);
  $('card-inflight').textContent = s.inFlight ? `${s.inFlight} in flight or paused` : '';
  $('card-success').textContent = s.successRate ? `${s.successRate}%` : '–';
  $('card-duration').textContent = s.averageDurationSeconds ? `${s.averageDurationSeconds}s` : '–';
  $('card-keys').textContent = String((s.keys && s.keys.active) || 0);
  const empty = v.missing || !s.executions;
  $('usage-empty').hidden = !empty;
  // SVG elements have no hidden property: the attribute it is.
  $('chart').toggleAttribute('hidden', empty);
  if (!empty) {
    drawBars($('chart'), days, [[(d) => d.succeeded, 'ok'], [(d) => d.failed, 'failed'], [(d) => d.total - d.succeeded - d.failed, 'open']], 260, tooltipFor);
  }
  const checked = days.some((d) => d.verificationsAllowed || d.verificationsDenied);
  $('verifications-empty').hidden = checked;
  $('verifications').toggleAttribute('hidden', !checked);
  if (checked) drawBars($('verifications'), days, [[(d) => d.verificationsAllowed || 0, 'ok'], [(d) => d.verificationsDenied || 0, 'failed']], 120,
    (d) => `${d.date} · ${d.verificationsAllowed || 0} allowed · ${d.verificationsDenied || 0} denied`);
}

// ---- Routing ----

function route() {
  state.page = location.hash === '#/usage' ? 'usage' : 'keys';
  $('page-keys').hidden = state.page !== 'keys';
  $('page-usage').hidden = state.page !== 'usage';
  $('nav-keys').classList.toggle('current', state.page === 'keys');
  $('nav-usage').classList.toggle('current', state.page === 'usage');
  $('nav-keys').setAttribute('aria-current', state.page === 'keys' ? 'page' : 'false');
  $('nav-usage').setAttribute('aria-current', state.page === 'usage' ? 'page' : 'false');
  refresh();
}

async function refresh() {
  clearTimeout(state.timer);
  for (const e of document.querySelectorAll('.ns-name')) e.textContent = state.ns;
  await (state.page === 'usage' ? loadUsage() : loadKeys());
  document.body.dataset.ready = 'true';
  state.timer = setTimeout(refresh, POLL_MS);
}

async function start() {
  $('create').addEventListener('click', openCreate);
  $('create-form').addEventListener('submit', submitCreate);
  $('create-name').addEventListener('input', () => { $('create-error').textContent = ''; });
  $('create-scopes').addEventListener('input', () => { $('create-error').textContent = ''; });
  $('confirm-scopes').addEventListener('input', () => { $('confirm-error').textContent = ''; });
  $('confirm-scopes').addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); confirmAction(); } });
  $('copy').addEventListener('click', copySecret);
  $('secret-done').addEventListener('click', closeSecret);
  $('secret-dialog').addEventListener('close', closeSecret);
  $('confirm-ok').addEventListener('click', confirmAction);
  for (const b of document.querySelectorAll('dialog .cancel')) b.addEventListener('click', () => b.closest('dialog').close());
  $('keys').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (b) openConfirm(b.dataset.action, b.dataset.name, b.dataset.scopes);
  });
  const chart = $('chart');
  const over = (ev) => { const g = ev.target.closest('g.bar'); if (g) showTooltip(g); };
  const out = () => { $('tooltip').hidden = true; };
  chart.addEventListener('mouseover', over);
  chart.addEventListener('focusin', over);
  chart.addEventListener('mouseleave', out);
  chart.addEventListener('focusout', out);
  $('namespace').addEventListener('change', (ev) => { state.ns = ev.target.value; refresh(); });
  window.addEventListener('hashchange', route);
  try {
    const s = await api('GET', '/api/session');
    state.ns = s.namespace;
    $('namespace').replaceChildren(...s.namespaces.map((n) => el('option', { value: n, selected: n === s.namespace }, n)));
  } catch (e) {
    showError(e.message);
  }
  route();
}

start();
