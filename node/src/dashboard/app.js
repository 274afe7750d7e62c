// The backmesh dashboard: plain JavaScript, no framework, no build step.
// Every view is rebuilt from the JSON API every few seconds. Text from the
// mesh (paths, names, errors) only ever goes into text nodes.
'use strict';

const $ = (sel, el = document) => el.querySelector(sel);
const app = $('#app');
const TOKEN_KEY = 'backmesh-token';
let token = sessionStorage.getItem(TOKEN_KEY) || '';
let me = null; // {role, site, node}
let actionStatus = null; // {text, cls}: survives re-renders
let restoreTo = ''; // the archive browser's restore target, as typed
const siteMatch = location.pathname.match(/^\/site\/([^/]+)/);
const clientSite = siteMatch ? decodeURIComponent(siteMatch[1]) : null;

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

class SignIn extends Error {}

async function api(path, opts = {}) {
  const headers = { Accept: 'application/json' };
  // Every change is sent as JSON: the node refuses anything else (a cross-site form cannot send it).
  if (opts.body || (opts.method && opts.method !== 'GET')) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = 'Bearer ' + token;
  const r = await fetch('/api/v1' + path, {
    method: opts.method || 'GET', headers,
    body: opts.body ? JSON.stringify(opts.body) : (opts.method && opts.method !== 'GET' ? 'null' : undefined),
  });
  const body = await r.json().catch(() => ({}));
  if (r.status === 401) throw new SignIn(body.error || 'sign in');
  if (!r.ok) throw new Error(body.error || ('HTTP ' + r.status));
  return body;
}

function bytes(n) {
  if (n === null || n === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}

function age(secs) {
  if (secs === null || secs === undefined) return 'never';
  if (secs < 60) return secs + ' s ago';
  if (secs < 3600) return Math.round(secs / 60) + ' min ago';
  if (secs < 172800) return Math.round(secs / 3600) + ' h ago';
  return Math.round(secs / 86400) + ' days ago';
}

function duration(ms) {
  if (ms === null || ms === undefined) return '—';
  return ms < 1000 ? ms + ' ms' : (ms / 1000).toFixed(1) + ' s';
}

const LABEL = { ok: 'OK', stale: 'STALE', failing: 'FAILING', paused: 'PAUSED', pending: 'PENDING' };
const badge = (state) => h('span', { class: 'badge state-' + state, 'data-state': state }, LABEL[state] || state.toUpperCase());
const jobHref = (j) => '#/job?node=' + encodeURIComponent(j.node) + '&path=' + encodeURIComponent(j.path);

function route() {
  const hash = location.hash.slice(1) || '/';
  const [path, query] = hash.split('?');
  return { path, params: new URLSearchParams(query || '') };
}

function renderNav() {
  const nav = $('#nav');
  nav.replaceChildren();
  if (clientSite || !me) return;
  const r = route().path;
  nav.append(
    h('a', { href: '#/', class: r === '/' ? 'active' : null }, 'Overview'),
    h('a', { href: '#/nodes', class: r === '/nodes' ? 'active' : null }, 'Nodes'));
}

function renderWho() {
  const who = $('#who');
  who.replaceChildren();
  if (!me) return;
  const what = me.role === 'admin' ? 'administrator' : me.role === 'viewer' ? 'read-only' : 'site ' + me.site;
  who.append('via ' + me.node + ' · ' + what);
  if (token) who.append(h('button', { id: 'signout', onclick: () => { sessionStorage.removeItem(TOKEN_KEY); token = ''; me = null; refresh(); } }, 'Sign out'));
}

function signInForm(message) {
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'current-password', placeholder: 'token' });
  const form = h('form', { class: 'signin', id: 'signin' },
    h('h1', {}, clientSite ? 'Backups of ' + clientSite : 'Sign in'),
    h('p', { class: 'muted' }, clientSite ? 'Enter the access code you were given.' : 'Enter this mesh\'s API token (administrator or read-only).'),
    message ? h('p', { class: 'error' }, message) : null,
    input,
    h('button', { class: 'primary', type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    token = input.value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    me = null;
    refresh();
  });
  app.replaceChildren(form);
  input.focus();
}

function countsBar(c) {
  const box = (cls, n, label) => h('div', { class: 'count ' + cls, 'data-count': cls }, h('b', {}, n), label);
  return h('div', { class: 'counts', id: 'counts' },
    box('total', c.total, 'jobs'), box('ok', c.ok, 'OK'), box('stale', c.stale, 'STALE'),
    box('failing', c.failing, 'FAILING'), box('paused', c.paused, 'PAUSED'),
    c.pending ? box('pending', c.pending, 'PENDING') : null);
}

function jobsTable(jobs) {
  const now = Date.now();
  return h('div', { class: 'wide' }, h('table', { class: 'jobs' },
    h('thead', {}, h('tr', {}, ['State', 'Path', 'History', 'Every', 'Last success', 'Last size', 'Archives', 'Copies on', 'Offsite', 'Problem'].map((t) => h('th', {}, t)))),
    h('tbody', {}, jobs.map((j) => h('tr', { 'data-node': j.node, 'data-path': j.path, 'data-state': j.state },
      h('td', {}, badge(j.state)),
      h('td', {}, h('a', { href: jobHref(j) }, j.path)),
      h('td', {}, strip((j.runs || []).map((r) => ({ time_ms: r.time_ms, kind: r.result })), j.every, now, 'small')),
      h('td', {}, j.every + ' min'),
      h('td', {}, age(j.last_success_age_s)),
      h('td', { class: 'num' }, bytes(j.last_size)),
      h('td', { class: 'num' }, j.archives),
      h('td', {}, j.holders.join(', ') || '—'),
      h('td', { class: j.offsite && j.offsite !== 'current' ? 'problem offsite' : 'offsite' }, j.offsite || '—'),
      h('td', { class: 'problem' }, j.state === 'failing' ? j.error : j.state === 'stale' ? 'no success for ' + age(j.last_success_age_s).replace(' ago', '') : (j.warnings.length ? j.warnings.length + ' warning(s)' : '')))))));
}

function overview(o) {
  const out = [h('h1', {}, 'Backups'), countsBar(o.counts)];
  for (const p of o.problems) out.push(h('p', { class: 'error' }, p));
  for (const s of o.sites) {
    const title = s.name || '(no site)';
    const sec = h('section', { class: 'site', 'data-site': title },
      h('h2', {}, title, ' ', s.reachable ? null : h('span', { class: 'badge state-unreachable' }, 'UNREACHABLE')));
    if (!s.reachable) sec.append(h('p', { class: 'error' }, s.error || 'unreachable'));
    for (const n of s.nodes) {
      sec.append(h('h3', {}, n.name, ' ', h('span', { class: 'badge state-' + (n.up ? 'up' : 'down') }, n.up ? 'up' : 'DOWN')));
      sec.append(n.jobs.length ? jobsTable(n.jobs) : h('p', { class: 'muted' }, 'no backup jobs'));
    }
    out.push(sec);
  }
  return out;
}

function nodesPage(o) {
  return [h('h1', {}, 'Nodes'), h('table', { class: 'nodes' },
    h('thead', {}, h('tr', {}, ['Node', 'Site', 'State', 'Last seen', 'Free', 'Archives held', 'Bytes held', 'Address'].map((t) => h('th', {}, t)))),
    h('tbody', {}, o.nodes.map((n) => h('tr', { 'data-node': n.name },
      h('td', {}, n.name), h('td', {}, n.site || '—'),
      h('td', {}, h('span', { class: 'badge state-' + (n.up ? 'up' : 'down') }, n.up ? 'up' : 'DOWN')),
      h('td', {}, n.last_seen || (n.name === o.node ? 'this node' : '—')),
      h('td', { class: 'num' }, bytes(n.free_bytes)),
      h('td', { class: 'num' }, n.archives_held),
      h('td', { class: 'num' }, bytes(n.bytes_held)),
      h('td', {}, n.address)))))];
}

const SVG = 'http://www.w3.org/2000/svg';
function svgEl(tag, attrs, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// A chart drawn at the width it is shown at (nothing stretched): one bar a
// run, at most 24 px wide, from the left; an axis with the largest value,
// the first and last run's dates under it.
function chart(executions, field, cls, label) {
  const runs = executions.slice(-60);
  // The width the page gives it: the main column's, less its padding.
  const cs = getComputedStyle(app);
  const inner = (app.clientWidth || 800) - parseFloat(cs.paddingLeft || 0) - parseFloat(cs.paddingRight || 0);
  const W = Math.max(280, Math.floor(inner) - 2), H = 150;
  const left = 64, bottom = 34, top = 8, plotW = W - left - 8, plotH = H - top - bottom;
  const max = Math.max(1, ...runs.map((e) => e[field] || 0));
  const fmt = (v) => field === 'size' ? bytes(v) : duration(v);
  const svg = svgEl('svg', { class: 'chart', width: W, height: H, viewBox: `0 0 ${W} ${H}`, 'data-field': field });
  for (const f of [0, 0.5, 1]) {
    const y = top + plotH - f * plotH;
    svg.append(svgEl('line', { x1: left, x2: W - 8, y1: y, y2: y, class: 'grid' }));
    svg.append(svgEl('text', { x: left - 6, y: y + 4, 'text-anchor': 'end' }, fmt(max * f)));
  }
  const bw = Math.min(24, plotW / Math.max(runs.length, 1));
  runs.forEach((e, i) => {
    const v = e[field] || 0;
    const bh = e.kind === 'failed' ? plotH : Math.max(1, (v / max) * plotH);
    const r = svgEl('rect', { x: left + i * bw + 1, y: top + plotH - bh, width: Math.max(1, bw - 2), height: bh,
      class: e.kind === 'failed' ? 'failed' : cls });
    r.append(svgEl('title', {}, e.time + ': ' + e.kind + ' ' + fmt(v)));
    svg.append(r);
  });
  if (runs.length) {
    // The first run's time under the first bar; the last run's under the
    // last bar, when there is room for both (a label is ~110 px wide).
    const day = (e) => e.time.slice(0, 16).replace('T', ' ');
    svg.append(svgEl('text', { x: left, y: H - bottom + 16 }, day(runs[0])));
    const end = left + runs.length * bw;
    if (runs.length > 1 && end - left >= 240) {
      svg.append(svgEl('text', { x: end, y: H - bottom + 16, 'text-anchor': 'end' }, day(runs[runs.length - 1])));
    } else if (runs.length > 1) {
      svg.append(svgEl('text', { x: left + 120, y: H - bottom + 16 }, '… ' + day(runs[runs.length - 1])));
    }
  }
  svg.append(svgEl('text', { x: left, y: H - 4, class: 'caption' }, label + ' of the last ' + runs.length + ' runs (red: failed)'));
  return svg;
}

// The job's history at a glance: its runs over the last 30 days (at most
// 90), each a cell coloured by its result, and a grey cell for each run its
// schedule expected that never came (missed), oldest on the left. `small`:
// the overview's, 3 px a cell; the job page's is the one with id `strip`.
function strip(executions, everyMin, now, small) {
  const every = everyMin * 60000;
  const since = now - 30 * 86400000;
  const runs = executions.filter((e) => e.time_ms >= since);
  const cells = [];
  const missed = (from, to) => {
    if (!(every > 0)) return;
    const slots = Math.min(90, Math.round((to - from) / every) - 1);
    for (let k = 1; k <= slots; k++) cells.push({ kind: 'missed', time_ms: from + k * every });
  };
  let prev = null;
  for (const e of runs) {
    if (prev !== null) missed(prev, e.time_ms);
    cells.push(e);
    prev = e.time_ms;
  }
  if (prev !== null) missed(prev, now);
  const shown = cells.slice(-90);
  const name = { finished: 'OK', unchanged: 'unchanged', failed: 'FAILED', missed: 'missed' };
  return h('div', { class: small ? 'strip small' : 'strip', id: small ? null : 'strip', title: 'last ' + shown.length + ' runs' },
    shown.map((c) => h('span', { class: 'cell ' + c.kind, 'data-kind': c.kind,
      title: new Date(c.time_ms).toISOString().slice(0, 16).replace('T', ' ') + ' UTC: ' + (name[c.kind] || c.kind) +
        (c.error ? ' — ' + c.error : '') })));
}

// The archive browser: one archive's tree, a file's versions, downloads.
// Its state outlives the page's re-renders.
let browser = null; // {node, path, archive, under, listing, versions, error}
async function browse(node, path, archive, under) {
  browser = { node, path, archive, under, listing: null, versions: null, error: null };
  render();
  try {
    // No archive: the newest (a client page knows no archive ids).
    const q = '?node=' + encodeURIComponent(node) + '&path=' + encodeURIComponent(path) +
      (archive ? '&archive=' + encodeURIComponent(archive) : '') + '&under=' + encodeURIComponent(under);
    browser.listing = await api('/files' + q);
    browser.archive = browser.listing.archive;
  } catch (e) {
    browser.error = e.message;
  }
  render();
}

async function versions(file) {
  const b = browser;
  try {
    // The path as a pattern that matches it alone (a name at the root
    // matches at any depth: kept exact below).
    const pattern = file.replace(/[*?[\]{}\\]/g, '\\$&');
    const r = await api('/find?node=' + encodeURIComponent(b.node) + '&path=' + encodeURIComponent(b.path) +
      '&pattern=' + encodeURIComponent(pattern));
    b.versions = { file, archives: r.archives.map((a) => ({ archive: a.archive, created: a.created, hidden: a.hidden,
      entry: a.entries.find((e) => e.path === file) })).filter((a) => a.entry) };
  } catch (e) {
    b.error = e.message;
  }
  render();
}

// Downloads go through fetch (the token is a header, never in a URL), then to a file.
async function download(url, name) {
  try {
    const headers = {};
    if (token) headers.Authorization = 'Bearer ' + token;
    const r = await fetch('/api/v1' + url, { headers });
    if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || ('HTTP ' + r.status));
    const blob = await r.blob();
    window.backmeshDownloaded = blob; // what the browser test compares
    const a = h('a', { href: URL.createObjectURL(blob), download: name, id: 'last-download' });
    document.body.append(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 60000);
    actionStatus = { text: 'Downloaded ' + name + ' (' + bytes(blob.size) + ')', cls: '' };
  } catch (e) {
    actionStatus = { text: 'Download failed: ' + e.message, cls: 'error' };
  }
  render();
}

function browserSection() {
  const b = browser;
  const q = (more) => '?node=' + encodeURIComponent(b.node) + '&path=' + encodeURIComponent(b.path) +
    '&archive=' + encodeURIComponent(b.archive) + more;
  const sec = h('section', { class: 'browser', id: 'browser', 'data-archive': b.archive, 'data-under': b.under },
    h('h2', {}, 'Inside archive ' + b.archive, ' ', h('button', { onclick: () => { browser = null; render(); } }, 'Close')));
  const crumbs = h('p', { class: 'crumbs' }, h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); browse(b.node, b.path, b.archive, ''); } }, '(root)'));
  let at = '';
  for (const part of b.under.split('/').filter(Boolean)) {
    at = at ? at + '/' + part : part;
    const to = at;
    crumbs.append(' / ', h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); browse(b.node, b.path, b.archive, to); } }, part));
  }
  sec.append(crumbs);
  if (b.error) sec.append(h('p', { class: 'error', id: 'browser-error' }, b.error));
  if (!b.listing) { sec.append(h('p', { class: 'muted' }, b.error ? '' : 'Loading…')); return sec; }
  const folder = b.under ? b.under + '/' : 'the whole archive';
  sec.append(h('div', { class: 'actions' },
    h('button', { id: 'download-folder', onclick: () => download('/fetch' + q(b.under ? '&include=' + encodeURIComponent(b.under) : ''),
      (b.under.split('/').pop() || 'archive') + '.tgz') }, 'Download ' + folder + ' (.tgz)'),
    // This node's own series restores onto this node with its token; onto
    // another node only under the operator's key, which no browser holds.
    me && me.role === 'admin' && b.node === me.node ? h('span', { class: 'restore-here' },
      h('input', { id: 'restore-to', placeholder: '/new/or/empty/dir on ' + b.node, size: 28, value: restoreTo,
        oninput: (ev) => { restoreTo = ev.target.value; } }),
      h('button', { id: 'restore-here', onclick: () => restoreHere(b, $('#restore-to').value) }, 'Restore ' + folder + ' here')) : null,
    me && me.role === 'admin' ? h('span', { class: 'muted' }, 'Restore it elsewhere: ',
      h('code', {}, `backmesh restore ${b.node} ${b.path} --archive ${b.archive}` + (b.under ? ` --include '${b.under}'` : '') + ' --on NODE --to DIR')) : null));
  const name = (e) => e.path.split('/').pop();
  sec.append(h('table', { class: 'files', id: 'files' },
    h('thead', {}, h('tr', {}, ['Name', 'Size', 'Modified (UTC)', 'Mode', ''].map((t) => h('th', {}, t)))),
    h('tbody', {}, b.listing.entries.map((e) => h('tr', { 'data-path': e.path, 'data-kind': e.kind },
      h('td', {}, e.kind === 'dir'
        ? h('a', { href: '#', class: 'dir', onclick: (ev) => { ev.preventDefault(); browse(b.node, b.path, b.archive, e.path); } }, name(e) + '/')
        : name(e) + (e.link ? (e.kind === 'symlink' ? ' → ' : ' = ') + e.link : '')),
      h('td', { class: 'num' }, e.kind === 'file' ? bytes(e.size) : ''),
      h('td', {}, new Date(e.mtime * 1000).toISOString().slice(0, 19).replace('T', ' ')),
      h('td', { class: 'mode' }, modeText(e)),
      h('td', {}, e.kind === 'file' || e.kind === 'hardlink'
        ? [h('button', { class: 'download', onclick: () => download('/dump' + q('&file=' + encodeURIComponent(e.path)), name(e)) }, 'Download'), ' ',
          h('button', { class: 'versions', onclick: () => versions(e.path) }, 'Versions')]
        : e.kind === 'dir' ? h('button', { class: 'download', onclick: () => download('/fetch' + q('&include=' + encodeURIComponent(e.path)), name(e) + '.tgz') }, 'Download .tgz') : ''))))));
  if (b.versions) {
    sec.append(h('h3', {}, 'Versions of ' + b.versions.file));
    sec.append(h('table', { class: 'versions', id: 'versions' },
      h('thead', {}, h('tr', {}, ['Archive', 'Created', 'Size', 'Modified (UTC)', ''].map((t) => h('th', {}, t)))),
      h('tbody', {}, b.versions.archives.map((v) => h('tr', { 'data-archive': v.archive },
        h('td', {}, v.archive + (v.hidden ? ' (hidden)' : '')), h('td', {}, v.created), h('td', { class: 'num' }, bytes(v.entry.size)),
        h('td', {}, new Date(v.entry.mtime * 1000).toISOString().slice(0, 19).replace('T', ' ')),
        h('td', {}, h('button', { onclick: () => download('/dump?node=' + encodeURIComponent(b.node) + '&path=' + encodeURIComponent(b.path) +
          '&archive=' + encodeURIComponent(v.archive) + '&file=' + encodeURIComponent(b.versions.file), name(v.entry)) }, 'Download')))))));
  }
  return sec;
}

function modeText(e) {
  const kind = { dir: 'd', symlink: 'l', hardlink: 'h' }[e.kind] || '-';
  const m = e.mode;
  const bit = (mask, c) => (m & mask ? c : '-');
  const x = (mask, special, on, off) => (m & special ? (m & mask ? on : off) : (m & mask ? 'x' : '-'));
  return kind + bit(0o400, 'r') + bit(0o200, 'w') + x(0o100, 0o4000, 's', 'S') + bit(0o40, 'r') + bit(0o20, 'w') +
    x(0o10, 0o2000, 's', 'S') + bit(0o4, 'r') + bit(0o2, 'w') + x(0o1, 0o1000, 't', 'T');
}

// Restores the folder being browsed (or the whole archive) onto this node,
// into `to`, and says how it went.
async function restoreHere(b, to) {
  try {
    actionStatus = { text: 'Restore of ' + (b.under || 'the archive') + ' into ' + to + ' asked…', cls: 'muted' };
    render();
    const body = { node: b.node, path: b.path, archive: b.archive, to };
    if (b.under) body.include = [b.under];
    const q = await api('/restore', { method: 'POST', body });
    for (let i = 0; i < 3600; i++) {
      const r = await api('/requests/' + encodeURIComponent(q.request));
      const done = r.entries.find((e) => e.kind === 'restored');
      if (done) {
        actionStatus = done.error ? { text: 'Restore failed: ' + done.error, cls: 'error' }
          : { text: 'Restored ' + done.files + ' entries (' + bytes(done.bytes) + ') into ' + done.to + ' on ' + done.on, cls: '' };
        break;
      }
      await new Promise((ok) => setTimeout(ok, 1000));
    }
  } catch (e) {
    actionStatus = { text: 'Restore failed: ' + e.message, cls: 'error' };
  }
  render();
}

async function act(kind, j) {
  try {
    if (kind === 'run') {
      actionStatus = { text: 'Backup of ' + j.path + ' queued…', cls: 'muted' };
      render();
      const q = await api('/run', { method: 'POST', body: { node: j.node, path: j.path } });
      for (let i = 0; i < 3600; i++) {
        const r = await api('/requests/' + encodeURIComponent(q.request));
        const done = r.entries.find((e) => ['finished', 'unchanged', 'failed'].includes(e.kind));
        if (done) {
          actionStatus = done.kind === 'failed'
            ? { text: 'Backup failed: ' + done.error, cls: 'error' }
            : { text: 'Backup ' + done.kind + (done.size ? ' (' + bytes(done.size) + ')' : '') + ': archive ' + done.archive, cls: '' };
          break;
        }
        await new Promise((ok) => setTimeout(ok, 1000));
      }
    } else {
      await api('/nodes/' + encodeURIComponent(j.node) + '/' + kind, { method: 'POST' });
      actionStatus = { text: (kind === 'pause' ? 'Scheduled backups of ' : 'Backups resumed on ') + j.node + (kind === 'pause' ? ' paused' : ''), cls: '' };
    }
  } catch (e) {
    actionStatus = { text: e.message, cls: 'error' };
  }
  refresh();
}

function jobPage(d) {
  const j = d.job;
  const out = [h('p', {}, h('a', { href: '#/' }, '← all backups')),
    h('h1', {}, j.path, h('span', { class: 'muted' }, ' on ' + j.node), ' ', badge(j.state)),
    h('p', {}, 'Every ' + j.every + ' min · last success ' + age(j.last_success_age_s) +
      (j.last_size !== null ? ' · last archive ' + bytes(j.last_size) : '') + ' · ' + j.archives + ' archive(s) kept' +
      (j.holders.length ? ' · newest on ' + j.holders.join(', ') : '') +
      (j.offsite ? ' · offsite: ' + j.offsite : ''))];
  if (me && me.role === 'admin') {
    out.push(h('div', { class: 'actions' },
      h('button', { class: 'primary', id: 'run-now', onclick: () => act('run', j) }, 'Run now'),
      j.state === 'paused'
        ? h('button', { id: 'resume', onclick: () => act('resume', j) }, 'Resume ' + j.node)
        : h('button', { id: 'pause', onclick: () => act('pause', j) }, 'Pause ' + j.node),
      h('span', { id: 'action-status', class: actionStatus ? actionStatus.cls : '' }, actionStatus ? actionStatus.text : '')));
  }
  if (j.state === 'failing') out.push(h('div', { class: 'failure', id: 'failure' }, 'The last backup failed: ' + j.error));
  for (const w of j.warnings) out.push(h('div', { class: 'warning' }, w));
  const p = j.plugin;
  if (j.source !== 'dir' || p) {
    const box = h('div', { class: 'plugin', id: 'plugin' }, h('h2', {}, 'Source: ' + j.source));
    if (p && p.summary) box.append(h('p', {}, p.summary));
    if (p && p.stats && Object.keys(p.stats).length) {
      box.append(h('table', { class: 'stats' }, h('tbody', {}, Object.entries(p.stats).map(([k, v]) => h('tr', {}, h('th', {}, k), h('td', { class: 'num' }, String(v)))))));
    }
    for (const l of (p && p.log) || []) box.append(h('div', { class: 'muted' }, l));
    for (const f of (p && p.hooks) || []) box.append(h('div', { class: 'failure hook' }, f));
    out.push(box);
  }
  const ex = d.executions;
  out.push(h('h2', {}, 'History'), strip(ex, j.every, Date.now()),
    h('p', { class: 'legend muted' }, h('span', { class: 'cell finished' }), ' OK ', h('span', { class: 'cell unchanged' }), ' unchanged ',
      h('span', { class: 'cell failed' }), ' failed ', h('span', { class: 'cell missed' }), ' missed (the schedule expected a run)'));
  out.push(h('h2', {}, 'Executions'));
  out.push(chart(ex, 'size', 'size', 'Archive size'), chart(ex, 'duration_ms', 'duration', 'Duration'));
  out.push(h('table', { class: 'executions', id: 'executions' },
    h('thead', {}, h('tr', {}, ['Time', 'Result', 'Size', 'Files', 'Duration', 'Details'].map((t) => h('th', {}, t)))),
    h('tbody', {}, ex.slice().reverse().map((e) => h('tr', { 'data-kind': e.kind },
      h('td', {}, e.time), h('td', {}, e.kind), h('td', { class: 'num' }, e.size !== undefined ? bytes(e.size) : '—'),
      h('td', { class: 'num' }, e.files !== undefined ? e.files : '—'), h('td', { class: 'num' }, duration(e.duration_ms)),
      h('td', {}, e.error || (e.plugin && e.plugin.summary) || (e.warnings && e.warnings.length ? e.warnings.join('; ') : e.archive || ''),
        e.plugin && e.plugin.hooks && e.plugin.hooks.length ? h('div', { class: 'error' }, e.plugin.hooks.join('; ')) : null))))));
  out.push(h('h2', {}, 'Archives kept'));
  const admin = me && me.role === 'admin';
  out.push(h('table', { class: 'archives' },
    h('thead', {}, h('tr', {}, ['Archive', 'Created', 'Size', 'Files', 'Kept on', admin ? '' : null].filter((t) => t !== null).map((t) => h('th', {}, t)))),
    h('tbody', {}, d.archives.map((a) => h('tr', { 'data-archive': a.id },
      h('td', {}, a.id), h('td', {}, a.created || '—'), h('td', { class: 'num' }, bytes(a.size)),
      h('td', { class: 'num' }, a.files), h('td', {}, a.holders.join(', ')),
      admin ? h('td', {}, h('button', { class: 'browse', onclick: () => browse(j.node, j.path, a.id, '') }, 'Browse')) : null)))));
  if (browser && browser.node === j.node && browser.path === j.path) out.push(browserSection());
  return out;
}

function clientPage(o) {
  const jobs = o.sites.flatMap((s) => s.nodes.flatMap((n) => n.jobs));
  const healthy = jobs.filter((j) => j.state === 'ok').length;
  const summary = jobs.length === 0 ? 'No backups are set up for this site yet.'
    : healthy === jobs.length ? `All ${jobs.length} backups are healthy.`
      : `${healthy} of ${jobs.length} backups are healthy; ${jobs.length - healthy} ${jobs.length - healthy === 1 ? 'needs' : 'need'} attention.`;
  const say = (j) => {
    const copies = (j.holders.length ? `, kept on ${j.holders.length} machine${j.holders.length > 1 ? 's' : ''}` : '') +
      (j.offsite === 'current' ? ' and offsite' : '');
    switch (j.state) {
      case 'ok': return `✔ ${j.path} on ${j.node} was backed up ${age(j.last_success_age_s)} (${bytes(j.last_size)}${copies}).`;
      case 'stale': return `⚠ ${j.path} on ${j.node} has not been backed up since ${j.last_success || 'it was set up'}; it should be every ${j.every} minutes.`;
      case 'failing': return `✖ The last backup of ${j.path} on ${j.node} failed: ${j.error}.`;
      case 'paused': return `⏸ Backups of ${j.path} on ${j.node} are paused.`;
      default: return `… ${j.path} on ${j.node} has not been backed up yet.`;
    }
  };
  // With its operator's leave (--site-browse), a site browses the backups
  // of the node serving its page, and only those.
  const browsable = (j) => me && me.role === 'site' && me.browse && j.node === me.node;
  const out = [h('h1', {}, 'Backups of ' + (clientSite || me.site)), h('p', { class: 'summary', id: 'summary' }, summary),
    h('ul', { class: 'plain' }, jobs.map((j) => h('li', { class: j.state, 'data-state': j.state, 'data-path': j.path }, say(j),
      browsable(j) && j.archives ? [' ', h('button', { class: 'browse', onclick: () => browse(j.node, j.path, '', '') }, 'Browse files')] : null))),
    h('p', { class: 'muted' }, 'Updated ' + o.generated + '. This page refreshes by itself.')];
  if (browser && jobs.some((j) => j.node === browser.node && j.path === browser.path)) {
    if (actionStatus) out.push(h('p', { id: 'action-status', class: actionStatus.cls }, actionStatus.text));
    out.push(browserSection());
  }
  return out;
}

let current = null; // the last data, for re-rendering an action status
async function refresh() {
  try {
    if (!me) me = await api('/whoami');
    renderWho();
    renderNav();
    const r = route();
    if (clientSite || me.role === 'site') {
      const site = clientSite || me.site;
      current = { view: 'client', data: await api('/dashboard?site=' + encodeURIComponent(site)) };
    } else if (r.path === '/job') {
      current = { view: 'job', data: await api('/job?node=' + encodeURIComponent(r.params.get('node')) + '&path=' + encodeURIComponent(r.params.get('path'))) };
    } else {
      current = { view: r.path === '/nodes' ? 'nodes' : 'overview', data: await api('/dashboard') };
    }
    render();
  } catch (e) {
    if (e instanceof SignIn) { me = null; renderWho(); renderNav(); signInForm(token ? e.message : null); return; }
    app.replaceChildren(h('p', { class: 'error', id: 'load-error' }, 'Cannot load: ' + e.message));
  }
}

function render() {
  if (!current) return;
  const v = current.view;
  const nodes = v === 'client' ? clientPage(current.data) : v === 'job' ? jobPage(current.data)
    : v === 'nodes' ? nodesPage(current.data) : overview(current.data);
  app.replaceChildren(...nodes);
  document.body.dataset.view = v;
  document.body.dataset.loaded = String(Date.now());
}

window.addEventListener('hashchange', () => { actionStatus = null; browser = null; refresh(); });
window.addEventListener('resize', () => render());
refresh();
// Not while someone types: a refresh rebuilds the page.
setInterval(() => { if (me && !$('#signin') && document.activeElement?.tagName !== 'INPUT') refresh(); }, 3000);
