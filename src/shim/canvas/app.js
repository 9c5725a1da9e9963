// The Molecule canvas: the org chart laid out from parent_id, live over /ws, with a detail
// panel, lifecycle actions and the org import dialog. Plain JS, no build step.
'use strict';

const NODE_W = 184, NODE_H = 62, GAP_X = 22, GAP_Y = 46, PAD = 24;
const TOKEN_KEY = 'molecule.token';
const $ = (id) => document.getElementById(id);
// Render timings, read by the browser test.
const stats = window.moleculeCanvasStats = { renders: 0, lastRenderMs: 0, maxRenderMs: 0 };

const state = {
  token: null,
  ws: new Map(),          // id -> workspace object (the REST shape)
  els: new Map(),         // id -> node element
  history: new Map(),     // id -> statuses seen, oldest first
  selected: null,
  socket: null,
  backoff: 500,
  reconnectTimer: null,
  renderQueued: false,
  zoom: 1,
  filter: '',
  chosenTemplate: null,
};

// ---------------------------------------------------------------- token and HTTP

// The token lives for the browser session only (sessionStorage: gone when the tab closes), never
// in localStorage, where it would outlive the session on a shared machine (ADR 0038). A token an
// older page left in localStorage is removed.
function readToken() {
  localStorage.removeItem(TOKEN_KEY);
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

class HttpError extends Error {
  constructor(status, body) {
    super((body && body.error) || ('HTTP ' + status));
    this.status = status;
    this.body = body;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: { Authorization: 'Bearer ' + state.token } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty or not JSON */ }
  if (res.status === 401) showLogin('The token was refused.');
  if (!res.ok) throw new HttpError(res.status, data);
  return data;
}

function toast(text, isError) {
  const t = document.createElement('div');
  t.className = 'toast' + (isError ? ' err' : '');
  t.textContent = text;
  $('toasts').appendChild(t);
  setTimeout(() => t.remove(), isError ? 7000 : 3500);
}

function showLogin(message) {
  $('login').hidden = false;
  const e = $('login-error');
  e.hidden = !message;
  e.textContent = message || '';
}

// ---------------------------------------------------------------- state updates

function remember(id, status) {
  const h = state.history.get(id) || [];
  if (h[h.length - 1] !== status) h.push(status);
  if (h.length > 24) h.shift();
  state.history.set(id, h);
}

function upsert(w) {
  const cur = state.ws.get(w.id);
  if (cur && (cur.resource_version || 0) > (w.resource_version || 0)) return;
  if (w.status === 'removed') { remove(w.id); return; }
  state.ws.set(w.id, w);
  remember(w.id, w.status);
  scheduleRender();
}

function remove(id) {
  state.ws.delete(id);
  remember(id, 'removed');
  if (state.selected === id) selectNode(null);
  scheduleRender();
}

async function loadAll() {
  const list = await api('GET', '/workspaces');
  const seen = new Set();
  for (const w of list) { seen.add(w.id); upsert(w); }
  for (const id of [...state.ws.keys()]) if (!seen.has(id)) remove(id);
  scheduleRender();
}

function onMessage(msg) {
  if (!msg || !msg.workspace_id) return;
  if (msg.event === 'WORKSPACE_REMOVED') remove(msg.workspace_id);
  else if (msg.payload && msg.payload.id) upsert(msg.payload);
  if (state.selected === msg.workspace_id) {
    renderDetail();
    if (msg.event !== 'WORKSPACE_HEARTBEAT') refreshDetailLists();
  }
}

// ---------------------------------------------------------------- live stream

function b64url(s) {
  return btoa(unescape(encodeURIComponent(s))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

function setConn(st, text) {
  const c = $('conn');
  c.dataset.state = st;
  c.textContent = text;
  document.body.classList.toggle('disconnected', st === 'disconnected');
}

function connect() {
  clearTimeout(state.reconnectTimer);
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let sock;
  try {
    sock = new WebSocket(proto + '//' + location.host + '/ws',
      ['molecule.v1', 'base64url.bearer.authorization.k8s.io.' + b64url(state.token)]);
  } catch (e) {
    scheduleReconnect();
    return;
  }
  state.socket = sock;
  sock.onopen = () => {
    state.backoff = 500;
    setConn('connected', 'live');
    loadAll().catch((e) => toast('Could not load the workspaces: ' + e.message, true));
  };
  sock.onmessage = (e) => {
    try { onMessage(JSON.parse(e.data)); } catch (_) { /* ignore a bad frame */ }
  };
  sock.onclose = () => {
    if (state.socket !== sock) return;
    state.socket = null;
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  const delay = Math.min(state.backoff, 30000);
  state.backoff = Math.min(state.backoff * 2, 30000);
  const until = Date.now() + delay;
  const tick = () => {
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    setConn('disconnected', 'disconnected — reconnecting in ' + left + 's');
  };
  tick();
  const iv = setInterval(tick, 500);
  state.reconnectTimer = setTimeout(() => { clearInterval(iv); setConn('connecting', 'reconnecting…'); connect(); },
    delay + Math.random() * 250);
}

// ---------------------------------------------------------------- layout

// Tidy tree: leaves take consecutive columns, parents sit over their children; root subtrees
// wrap into bands so a flat org of hundreds stays on screen.
function layout() {
  const byParent = new Map();
  const roots = [];
  const byName = (a, b) => (a.name || '').localeCompare(b.name || '', undefined, { numeric: true }) || a.id.localeCompare(b.id);
  for (const w of state.ws.values()) {
    if (w.parent_id && state.ws.has(w.parent_id)) {
      if (!byParent.has(w.parent_id)) byParent.set(w.parent_id, []);
      byParent.get(w.parent_id).push(w);
    } else roots.push(w);
  }
  for (const l of byParent.values()) l.sort(byName);
  roots.sort(byName);
  const pos = new Map();
  const slotW = NODE_W + GAP_X, slotH = NODE_H + GAP_Y;
  const chartW = Math.max(4 * slotW, ($('chart').clientWidth || 1200) / state.zoom - 2 * PAD);
  const maxCols = Math.max(1, Math.floor(chartW / slotW));
  let bandTop = 0, col = 0, bandDepth = 0;

  function place(w, depth, visiting) {
    if (visiting.has(w.id)) return { first: col, last: col, depth };
    visiting.add(w.id);
    const kids = w.collapsed ? [] : (byParent.get(w.id) || []);
    let first, last, deepest = depth;
    const leaves = kids.length > 6 && kids.every((k) => k.collapsed || !(byParent.get(k.id) || []).length);
    if (kids.length === 0) {
      first = last = col++;
    } else if (leaves) {
      // Many leaves under one parent: a comb of rows instead of one very wide row.
      const cols = Math.max(4, Math.ceil(Math.sqrt(2 * kids.length)));
      kids.forEach((k, i) => {
        visiting.add(k.id);
        pos.set(k.id, { col: col + (i % cols), depth: depth + 1 + Math.floor(i / cols), comb: true });
      });
      first = col;
      last = col + Math.min(cols, kids.length) - 1;
      col += Math.min(cols, kids.length);
      deepest = depth + Math.ceil(kids.length / cols);
    } else {
      for (const k of kids) {
        const r = place(k, depth + 1, visiting);
        if (first === undefined) first = r.first;
        last = r.last;
        deepest = Math.max(deepest, r.depth);
      }
    }
    pos.set(w.id, { col: (first + last) / 2, depth });
    return { first, last, depth: deepest };
  }
  function width(w, seen) {
    if (seen.has(w.id)) return 1;
    seen.add(w.id);
    const kids = w.collapsed ? [] : (byParent.get(w.id) || []);
    return kids.length ? kids.reduce((n, k) => n + width(k, seen), 0) : 1;
  }
  for (const r of roots) {
    const wd = width(r, new Set());
    if (col > 0 && col + wd > maxCols) {
      bandTop += (bandDepth + 1) * slotH + GAP_Y;
      col = 0;
      bandDepth = 0;
    }
    const res = place(r, 0, new Set());
    bandDepth = Math.max(bandDepth, res.depth);
    for (const p of pos.values()) if (p.band === undefined) p.band = bandTop;
  }
  const out = new Map();
  let maxX = 0, maxY = 0;
  for (const [id, p] of pos) {
    const x = PAD + p.col * slotW, y = PAD + (p.band || 0) + p.depth * slotH;
    out.set(id, { x, y, comb: !!p.comb });
    maxX = Math.max(maxX, x + NODE_W);
    maxY = Math.max(maxY, y + NODE_H);
  }
  return { pos: out, byParent, width: maxX + PAD, height: maxY + PAD };
}

function hiddenByCollapse(w) {
  let p = w.parent_id ? state.ws.get(w.parent_id) : null;
  const seen = new Set();
  while (p && !seen.has(p.id)) {
    seen.add(p.id);
    if (p.collapsed) return true;
    p = p.parent_id ? state.ws.get(p.parent_id) : null;
  }
  return false;
}

// ---------------------------------------------------------------- rendering

function scheduleRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  requestAnimationFrame(() => {
    state.renderQueued = false;
    const t = performance.now();
    render();
    const ms = performance.now() - t;
    stats.renders++;
    stats.lastRenderMs = ms;
    stats.maxRenderMs = Math.max(stats.maxRenderMs, ms);
  });
}

function matches(w) {
  if (!state.filter) return true;
  const f = state.filter;
  return [w.name, w.role, w.status, w.runtime].some((s) => (s || '').toLowerCase().includes(f));
}

function nodeEl(w) {
  let el = state.els.get(w.id);
  if (!el) {
    el = document.createElement('div');
    el.className = 'node';
    el.dataset.id = w.id;
    el.innerHTML = '<div class="n-name"></div><div class="n-role"></div><div class="n-status"></div>';
    const fold = document.createElement('button');
    fold.className = 'n-fold';
    fold.type = 'button';
    fold.addEventListener('click', (e) => { e.stopPropagation(); toggleCollapse(el.dataset.id); });
    el.appendChild(fold);
    el.addEventListener('click', () => selectNode(el.dataset.id));
    $('nodes').appendChild(el);
    state.els.set(w.id, el);
  }
  return el;
}

function render() {
  const { pos, byParent, width, height } = layout();
  const stage = $('stage');
  stage.style.width = width + 'px';
  stage.style.height = height + 'px';
  stage.style.transform = 'scale(' + state.zoom + ')';
  const svg = $('edges');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  let paths = '';
  for (const [id, p] of pos) {
    const w = state.ws.get(id);
    if (!w || !w.parent_id || !pos.has(w.parent_id)) continue;
    const pp = pos.get(w.parent_id);
    const x1 = pp.x + NODE_W / 2, y1 = pp.y + NODE_H, x2 = p.x + NODE_W / 2, y2 = p.y;
    const my = pp.y + NODE_H + GAP_Y / 2;
    if (p.comb) {
      const gx = p.x - GAP_X / 2, cy = p.y + NODE_H / 2;
      paths += '<path d="M' + x1 + ' ' + y1 + ' V' + my + ' H' + gx + ' V' + cy + ' H' + p.x + '"/>';
    } else {
      paths += '<path d="M' + x1 + ' ' + y1 + ' V' + my + ' H' + x2 + ' V' + y2 + '"/>';
    }
  }
  svg.innerHTML = paths;

  let online = 0;
  for (const w of state.ws.values()) {
    if (w.status === 'online') online++;
    const el = nodeEl(w);
    const p = pos.get(w.id);
    el.hidden = !p || hiddenByCollapse(w);
    if (p) { el.style.left = p.x + 'px'; el.style.top = p.y + 'px'; }
    el.dataset.status = w.status;
    el.dataset.name = w.name;
    el.dataset.history = (state.history.get(w.id) || []).join(',');
    el.title = w.name + ' — ' + w.status + (w.message ? '\n' + w.message : '');
    el.querySelector('.n-name').textContent = w.name;
    el.querySelector('.n-role').textContent = [w.role, w.runtime].filter(Boolean).join(' · ');
    el.querySelector('.n-status').textContent = w.status;
    const kids = (byParent.get(w.id) || []).length;
    const fold = el.querySelector('.n-fold');
    fold.hidden = kids === 0 && !w.collapsed;
    fold.textContent = w.collapsed ? '▸ ' + countDescendants(w.id) : '▾';
    fold.title = w.collapsed ? 'Show the sub-workspaces' : 'Fold the sub-workspaces';
    el.classList.toggle('selected', state.selected === w.id);
    el.classList.toggle('dim', !matches(w));
  }
  for (const [id, el] of state.els) {
    if (!state.ws.has(id)) { el.remove(); state.els.delete(id); }
  }
  $('counts').textContent = online + ' online / ' + state.ws.size + ' workspaces';
  $('empty').hidden = state.ws.size > 0;
  if (state.selected) renderDetail();
}

function countDescendants(id) {
  let n = 0;
  const stack = [id], seen = new Set([id]);
  while (stack.length) {
    const cur = stack.pop();
    for (const w of state.ws.values()) {
      if (w.parent_id === cur && !seen.has(w.id)) { seen.add(w.id); n++; stack.push(w.id); }
    }
  }
  return n;
}

function descendants(id) {
  const out = [], seen = new Set([id]), queue = [id];
  while (queue.length) {
    const cur = queue.shift();
    for (const w of state.ws.values()) {
      if (w.parent_id === cur && !seen.has(w.id)) { seen.add(w.id); out.push(w); queue.push(w.id); }
    }
  }
  return out;
}

// ---------------------------------------------------------------- detail panel

function selectNode(id) {
  state.selected = id;
  $('detail').hidden = !id;
  for (const [k, el] of state.els) el.classList.toggle('selected', k === id);
  if (id) { renderDetail(); refreshDetailLists(); }
}

function renderDetail() {
  const w = state.ws.get(state.selected);
  if (!w) return;
  $('d-name').textContent = w.name;
  const st = $('d-status');
  st.textContent = w.status;
  st.dataset.status = w.status;
  $('d-phase').textContent = 'phase ' + w.phase;
  $('d-role').textContent = w.role || '—';
  $('d-runtime').textContent = w.runtime;
  $('d-tier').textContent = String(w.tier);
  $('d-record').textContent = (w.namespace || '') + '/' + (w.k8s_name || '');
  $('d-url').textContent = w.url || '—';
  $('d-tasks').textContent = w.active_tasks + (w.current_task ? ' · ' + w.current_task : '');
  const err = w.last_sample_error || (['failed', 'degraded', 'offline'].includes(w.status) ? w.message : '');
  $('d-error').textContent = err || 'none';
  $('d-error').classList.toggle('muted', !err);
  const tb = $('d-conditions');
  tb.textContent = '';
  for (const c of w.conditions || []) {
    const tr = document.createElement('tr');
    for (const v of [c.type, c.status, c.reason || '', c.message || '']) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.appendChild(td);
    }
    tb.appendChild(tr);
  }
  $('btn-pause').hidden = !!w.paused;
  $('btn-resume').hidden = !w.paused;
}

let detailTimer = null;
function refreshDetailLists() {
  clearTimeout(detailTimer);
  detailTimer = setTimeout(async () => {
    const id = state.selected;
    if (!id) return;
    const [events, plugins] = await Promise.all([
      api('GET', '/events/' + id + '?limit=15').catch(() => []),
      api('GET', '/workspaces/' + id + '/plugins').catch(() => []),
    ]);
    if (state.selected !== id) return;
    const ev = $('d-events');
    ev.textContent = '';
    for (const e of events) {
      const li = document.createElement('li');
      if (e.payload && e.payload.type === 'Warning') li.className = 'warning';
      const t = document.createElement('span');
      t.className = 't';
      t.textContent = new Date(e.created_at).toLocaleString();
      const b = document.createElement('b');
      b.textContent = e.event_type;
      li.append(t, b, document.createTextNode(' ' + ((e.payload && e.payload.message) || '')));
      ev.appendChild(li);
    }
    if (!events.length) ev.innerHTML = '<li class="muted">none yet</li>';
    const pl = $('d-plugins');
    pl.textContent = '';
    for (const p of plugins) {
      const li = document.createElement('li');
      li.textContent = p.name + ' — ' + p.status + (p.installed_sha ? ' @ ' + p.installed_sha.slice(0, 12) : '');
      pl.appendChild(li);
    }
    if (!plugins.length) pl.innerHTML = '<li class="muted">none</li>';
  }, 150);
}

async function act(path, done) {
  try {
    const r = await api('POST', path);
    toast(done + (r && r.status ? ' (' + r.status + ')' : ''));
  } catch (e) {
    toast(e.message, true);
  }
}

function askDelete() {
  const w = state.ws.get(state.selected);
  if (!w) return;
  const kids = descendants(w.id);
  $('c-name').textContent = w.name;
  $('c-text').textContent = kids.length
    ? 'This also deletes its ' + kids.length + ' sub-workspace' + (kids.length > 1 ? 's' : '') + ':'
    : 'It has no sub-workspaces. Its container and volume are removed.';
  const ul = $('c-children');
  ul.textContent = '';
  for (const k of kids) {
    const li = document.createElement('li');
    li.textContent = k.name + ' (' + k.status + ')';
    ul.appendChild(li);
  }
  const dlg = $('confirm-dialog');
  dlg.returnValue = '';
  dlg.onclose = async () => {
    if (dlg.returnValue !== 'ok') return;
    try {
      const r = await api('DELETE', '/workspaces/' + w.id + '?confirm=true');
      toast('Deleted ' + w.name + (r.cascade_deleted ? ' and ' + r.cascade_deleted + ' sub-workspaces' : ''));
    } catch (e) {
      toast(e.message, true);
    }
  };
  dlg.showModal();
}

async function toggleCollapse(id) {
  const w = state.ws.get(id);
  if (!w) return;
  try { await api('PATCH', '/workspaces/' + id, { collapsed: !w.collapsed }); } catch (e) { toast(e.message, true); }
}

// ---------------------------------------------------------------- import dialog

async function openImport() {
  const dlg = $('import-dialog');
  state.chosenTemplate = null;
  $('i-templates').textContent = '';
  $('i-env').hidden = true;
  $('i-force').hidden = true;
  $('i-ok').disabled = true;
  $('i-status').textContent = 'Loading templates…';
  dlg.showModal();
  let list;
  try {
    list = await api('GET', '/org/templates');
  } catch (e) {
    $('i-status').textContent = e.status === 404
      ? 'Org templates are not available on this server.'
      : 'Could not list the templates: ' + e.message;
    return;
  }
  $('i-status').textContent = list.length ? 'Choose a template:' : 'No templates in the org template root.';
  for (const t of list) {
    const li = document.createElement('li');
    li.dataset.dir = t.dir;
    const b = document.createElement('b');
    b.textContent = t.name || t.dir;
    const s = document.createElement('small');
    s.textContent = (t.description || '') + ' — ' + t.workspaces + ' workspace' + (t.workspaces === 1 ? '' : 's');
    li.append(b, s);
    li.addEventListener('click', () => chooseTemplate(t, li));
    $('i-templates').appendChild(li);
  }
}

function chooseTemplate(t, li) {
  state.chosenTemplate = t;
  for (const x of $('i-templates').children) x.classList.toggle('chosen', x === li);
  const req = $('i-required');
  req.textContent = '';
  for (const n of t.required_env || []) {
    const item = document.createElement('li');
    item.textContent = typeof n === 'string' ? n : 'one of: ' + ((n && n.any_of) || []).join(', ');
    req.appendChild(item);
  }
  if (!(t.required_env || []).length) req.innerHTML = '<li class="muted">none</li>';
  $('i-env').hidden = false;
  $('i-missing').hidden = true;
  $('i-force').hidden = true;
  $('i-ok').disabled = false;
}

async function runImport(force) {
  const t = state.chosenTemplate;
  if (!t) return;
  try {
    await api('POST', '/org/import', { dir: t.dir, mode: $('i-mode').value, force: !!force });
    $('import-dialog').close();
    toast('Importing ' + (t.name || t.dir) + '…');
  } catch (e) {
    if (e.status === 412 && e.body) {
      const m = $('i-missing');
      m.hidden = false;
      m.textContent = 'Missing env: ' + (e.body.missing_env || []).join(', ') +
        '. Set them as global secrets (Settings → secrets) or import anyway.';
      $('i-force').hidden = false;
    } else {
      toast(e.message, true);
    }
  }
}

// ---------------------------------------------------------------- viewport

let viewportTimer = null;
function saveViewport() {
  clearTimeout(viewportTimer);
  viewportTimer = setTimeout(() => {
    const c = $('chart');
    api('PUT', '/canvas/viewport', { x: c.scrollLeft, y: c.scrollTop, zoom: state.zoom }).catch(() => {});
  }, 1000);
}

function setZoom(z) {
  state.zoom = Math.min(2, Math.max(0.3, Math.round(z * 100) / 100));
  scheduleRender();
  saveViewport();
}

// ---------------------------------------------------------------- start

function wire() {
  $('d-close').addEventListener('click', () => selectNode(null));
  $('btn-restart').addEventListener('click', () => act('/workspaces/' + state.selected + '/restart', 'Restart requested'));
  $('btn-pause').addEventListener('click', () => act('/workspaces/' + state.selected + '/pause', 'Paused'));
  $('btn-resume').addEventListener('click', () => act('/workspaces/' + state.selected + '/resume', 'Resumed'));
  $('btn-delete').addEventListener('click', askDelete);
  $('btn-import').addEventListener('click', openImport);
  $('i-ok').addEventListener('click', () => runImport(false));
  $('i-force').addEventListener('click', () => runImport(true));
  $('zoom-in').addEventListener('click', () => setZoom(state.zoom * 1.15));
  $('zoom-out').addEventListener('click', () => setZoom(state.zoom / 1.15));
  $('chart').addEventListener('scroll', saveViewport, { passive: true });
  $('chart').addEventListener('wheel', (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    setZoom(state.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1));
  }, { passive: false });
  $('filter').addEventListener('input', (e) => { state.filter = e.target.value.trim().toLowerCase(); scheduleRender(); });
  $('btn-logout').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('login-token').value.trim());
    location.reload();
  });
  window.addEventListener('resize', scheduleRender);
}

async function start() {
  wire();
  state.token = readToken();
  if (!state.token) { showLogin(); setConn('disconnected', 'signed out'); return; }
  try {
    const v = await api('GET', '/canvas/viewport');
    state.zoom = Math.min(2, Math.max(0.3, Number(v.zoom) || 1));
    requestAnimationFrame(() => { $('chart').scrollLeft = v.x || 0; $('chart').scrollTop = v.y || 0; });
  } catch (e) {
    if (e.status === 401) { setConn('disconnected', 'signed out'); return; }
  }
  connect();
}

document.addEventListener('DOMContentLoaded', start);
