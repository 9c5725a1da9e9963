// The Molecule canvas: the org chart laid out from parent_id, live over /ws, with a detail
// panel and lifecycle actions. Dialogs, keyboard, drag and the context menu are in ui.js; the
// team tabs (chat, agent comms, activity, schedules, channels) and the A2A overlay in tabs.js.
// Plain JS, no build step (ADR 0052 records the choices of this page).
'use strict';

const NODE_W = 184, NODE_H = 62, GAP_X = 22, GAP_Y = 46, PAD = 24;
const TOKEN_KEY = 'molecule.token';
const VIEWPORT_KEY = 'molecule.viewport';
const BACKOFF_MIN = 500, BACKOFF_MAX = 5000;
const ZOOM_MIN = 0.1, ZOOM_MAX = 2;
const $ = (id) => document.getElementById(id);
// Render timings, read by the browser test and the benchmark.
const stats = window.moleculeCanvasStats = { renders: 0, lastRenderMs: 0, maxRenderMs: 0, firstRenderMs: 0 };

const state = {
  token: null,
  ws: new Map(),          // id -> workspace object (the REST shape)
  els: new Map(),         // id -> node element
  history: new Map(),     // id -> statuses seen, oldest first
  selected: null,
  focused: null,          // id of the node that takes Tab (roving tabindex)
  socket: null,
  live: false,            // the stream is open and the snapshot loaded
  backoff: BACKOFF_MIN,
  reconnectTimer: null,
  countdown: null,
  renderQueued: false,
  zoom: 1,
  filter: '',
  groupByOrg: false,
  chosenTemplate: null,
  pos: new Map(),         // id -> {x, y} of the last render
  names: new Map(),       // display name -> how many workspaces carry it
  dirty: new Set(),       // ids changed since the last render (status only)
  layoutDirty: true,      // the tree, a position or the view changed: lay out again
  tree: { byParent: new Map() },
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

async function request(method, path, body, contentType) {
  const opts = { method, headers: { Authorization: 'Bearer ' + state.token } };
  if (body !== undefined) {
    opts.headers['Content-Type'] = contentType || 'application/json';
    opts.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    // The server is unreachable: say so instead of "Failed to fetch".
    lostServer();
    throw new HttpError(0, { error: 'the server is unreachable; the page reconnects by itself' });
  }
  if (res.status === 401) showLogin('The token was refused.');
  return res;
}

async function api(method, path, body, contentType) {
  const res = await request(method, path, body, contentType);
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty or not JSON */ }
  if (!res.ok) throw new HttpError(res.status, data);
  return data;
}

async function apiText(path) {
  const res = await request('GET', path);
  const text = await res.text();
  if (!res.ok) {
    let data = null;
    try { data = JSON.parse(text); } catch (_) { /* not JSON */ }
    throw new HttpError(res.status, data);
  }
  return text;
}

// Terminal colour and cursor codes (CSI, OSC and single-character escapes) out of console text.
function stripAnsi(s) {
  return String(s)
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, '')
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '')
    .replace(/\x1b[@-Z\\-_]/g, '')
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]/g, '');
}

function toast(text, isError) {
  const t = document.createElement('div');
  t.className = 'toast' + (isError ? ' err' : '');
  t.setAttribute('role', isError ? 'alert' : 'status');
  t.textContent = text;
  $('toasts').appendChild(t);
  setTimeout(() => t.remove(), isError ? 7000 : 3500);
}

function showLogin(message) {
  $('login').hidden = false;
  const e = $('login-error');
  e.hidden = !message;
  e.textContent = message || '';
  $('login-token').focus();
}

// ---------------------------------------------------------------- health

// Worst first: what a folded parent shows for its subtree.
const SEVERITY = { failed: 6, degraded: 5, offline: 4, stuck: 3, provisioning: 2, paused: 1, online: 0 };

// Why a workspace is not ready: the first False condition (Ready first), as {reason, message}.
function notReady(w) {
  if (w.status === 'online' || w.status === 'paused') return null;
  const conds = (w.conditions || []).filter((c) => c.status === 'False');
  conds.sort((a, b) => (b.type === 'Ready') - (a.type === 'Ready'));
  const c = conds.find((x) => x.reason || x.message);
  if (c) return { reason: c.reason || c.type, message: c.message || '' };
  if (['failed', 'degraded', 'offline'].includes(w.status) && w.message) return { reason: '', message: w.message };
  return null;
}

// The health a node shows: its status, or `stuck` for a provisioning one with a failing reason.
function health(w) {
  if (w.status === 'provisioning' && notReady(w)) return 'stuck';
  return w.status;
}

function lastError(w) {
  const nr = notReady(w);
  // The failing condition says why in the controller's words; the agent's own sample error
  // is the fallback (an online agent that reports errors has no failing condition).
  return (nr ? [nr.reason, nr.message].filter(Boolean).join(': ') : '') || w.last_sample_error || '';
}

function ancestors(w) {
  const out = [], seen = new Set([w.id]);
  let p = w.parent_id ? state.ws.get(w.parent_id) : null;
  while (p && !seen.has(p.id)) { seen.add(p.id); out.push(p); p = p.parent_id ? state.ws.get(p.parent_id) : null; }
  return out;
}

// Which actions can work on `w`, each with the reason when it cannot (shown as the tooltip).
function actionsFor(w) {
  const off = !state.live ? 'Offline: the server is unreachable' : null;
  const pausedParent = ancestors(w).find((a) => a.paused);
  return {
    restart: off || (w.paused ? 'It is paused: resume it first' : null),
    pause: off || (w.paused ? 'It is already paused' : null),
    resume: off || (!w.paused ? 'It is not paused'
      : pausedParent ? 'Its parent ' + pausedParent.name + ' is paused: resume the parent first' : null),
    logs: off,
    delete: off,
  };
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
  // A node being dragged keeps the position under the pointer.
  if (cur && cur._dragging) { w._dragging = true; w.x = cur.x; w.y = cur.y; }
  if (!cur || cur.parent_id !== w.parent_id || cur.collapsed !== w.collapsed || cur.x !== w.x ||
      cur.y !== w.y || cur.name !== w.name || cur.org !== w.org) state.layoutDirty = true;
  else state.dirty.add(w.id);
  state.ws.set(w.id, w);
  remember(w.id, w.status);
  scheduleRender();
}

// The next render lays everything out again.
function relayout() {
  state.layoutDirty = true;
  scheduleRender();
}

function remove(id) {
  state.ws.delete(id);
  state.layoutDirty = true;
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

// Messages of the team (activity, A2A answers, delegations) are for the tabs (tabs.js).
const TEAM_EVENT = /^(ACTIVITY_LOGGED|A2A_RESPONSE|DELEGATION_|CRON_|CHANNEL_)/;

function onMessage(msg) {
  if (!msg || !msg.workspace_id) return;
  if (window.moleculeTabs) window.moleculeTabs.onMessage(msg);
  if (TEAM_EVENT.test(msg.event || '')) return;
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
  const down = st === 'disconnected';
  document.body.classList.toggle('disconnected', down);
  $('stale').hidden = !down || !state.token;
  $('btn-reconnect').hidden = !down || !state.token;
  setLive(st === 'connected');
}

// Live or not: every control that talks to the server is off while the stream is down.
function setLive(live) {
  if (state.live === live) return;
  state.live = live;
  for (const b of document.querySelectorAll('.needs-live')) applyDisabled(b, live ? null : 'Offline: the server is unreachable');
  if (state.selected) renderDetail();
}

function applyDisabled(b, why) {
  if (b.dataset.title === undefined) b.dataset.title = b.title || '';
  b.disabled = !!why;
  b.title = why || b.dataset.title;
}

// Called when a request cannot reach the server: the stream is most likely down as well.
function lostServer() {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) return;
  if (state.live) setConn('disconnected', 'disconnected');
}

function connect() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdown);
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  let sock;
  try {
    sock = new WebSocket(proto + '//' + location.host + '/ws',
      ['molecule.v1', 'base64url.bearer.authorization.k8s.io.' + b64url(state.token)]);
  } catch (e) {
    scheduleReconnect();
    return;
  }
  const old = state.socket;
  state.socket = sock;
  if (old) { old.onclose = null; try { old.close(); } catch (_) { /* already closed */ } }
  sock.onopen = async () => {
    state.backoff = BACKOFF_MIN;
    try {
      await loadAll();
    } catch (e) {
      toast('Could not load the workspaces: ' + e.message, true);
    }
    if (state.socket !== sock) return;
    setConn('connected', 'live');
    // Everything shown is fetched again: the panel's lists and any open dialog.
    if (state.selected) { renderDetail(); refreshDetailLists(); }
    if (window.moleculeUi) window.moleculeUi.refreshOpen();
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

// Exponential backoff capped at BACKOFF_MAX, with a "reconnect now" button meanwhile.
function scheduleReconnect() {
  clearTimeout(state.reconnectTimer);
  clearInterval(state.countdown);
  const delay = Math.min(state.backoff, BACKOFF_MAX);
  state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX);
  const until = Date.now() + delay;
  const tick = () => {
    const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
    setConn('disconnected', 'disconnected — reconnecting in ' + left + 's');
  };
  tick();
  state.countdown = setInterval(tick, 500);
  state.reconnectTimer = setTimeout(() => {
    clearInterval(state.countdown);
    setConn('connecting', 'reconnecting…');
    connect();
  }, delay + Math.random() * 250);
}

function reconnectNow() {
  state.backoff = BACKOFF_MIN;
  setConn('connecting', 'reconnecting…');
  connect();
}

// ---------------------------------------------------------------- layout

const byName = (a, b) => (a.name || '').localeCompare(b.name || '', undefined, { numeric: true }) || a.id.localeCompare(b.id);

// Tidy tree: leaves take consecutive columns, parents sit over their children; root subtrees
// wrap into bands. The band width depends only on the number of workspaces, never on the
// window, the panel or the zoom, so none of those moves a node. A position set by dragging
// or by the template (x/y not both 0) wins over the computed one.
function layout() {
  const byParent = new Map();
  const roots = [];
  for (const w of state.ws.values()) {
    if (w.parent_id && state.ws.has(w.parent_id)) {
      if (!byParent.has(w.parent_id)) byParent.set(w.parent_id, []);
      byParent.get(w.parent_id).push(w);
    } else roots.push(w);
  }
  for (const l of byParent.values()) l.sort(byName);
  const orgOf = (w) => (state.groupByOrg ? (w.org || '') : '');
  roots.sort((a, b) => orgOf(a).localeCompare(orgOf(b)) || byName(a, b));
  const pos = new Map();
  const slotW = NODE_W + GAP_X, slotH = NODE_H + GAP_Y;
  const maxCols = Math.max(6, Math.ceil(Math.sqrt(state.ws.size) * 1.6));
  let bandTop = 0, col = 0, bandDepth = 0, lastOrg = null;
  const groups = [];

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
  const groupGap = state.groupByOrg ? 28 : 0;
  for (const r of roots) {
    const wd = width(r, new Set());
    const newGroup = state.groupByOrg && orgOf(r) !== lastOrg;
    if ((col > 0 && col + wd > maxCols) || (newGroup && lastOrg !== null)) {
      bandTop += (bandDepth + 1) * slotH + GAP_Y;
      col = 0;
      bandDepth = 0;
    }
    if (newGroup) {
      bandTop += groupGap;
      groups.push({ org: orgOf(r), y: PAD + bandTop - groupGap + 4 });
      lastOrg = orgOf(r);
    }
    const res = place(r, 0, new Set());
    bandDepth = Math.max(bandDepth, res.depth);
    for (const p of pos.values()) if (p.band === undefined) p.band = bandTop;
  }
  const out = new Map();
  let maxX = 0, maxY = 0;
  for (const [id, p] of pos) {
    const w = state.ws.get(id);
    const placed = w && (w.x || w.y);
    const x = placed ? Math.max(0, w.x) : PAD + p.col * slotW;
    const y = placed ? Math.max(0, w.y) : PAD + (p.band || 0) + p.depth * slotH;
    out.set(id, { x, y, comb: !!p.comb && !placed });
    maxX = Math.max(maxX, x + NODE_W);
    maxY = Math.max(maxY, y + NODE_H);
  }
  return { pos: out, byParent, groups, width: maxX + PAD, height: maxY + PAD };
}

function hiddenByCollapse(w) {
  return ancestors(w).some((a) => a.collapsed);
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
    if (!stats.renders && state.ws.size) stats.firstRenderMs = ms;
    if (state.ws.size) stats.renders++;
    stats.lastRenderMs = ms;
    stats.maxRenderMs = Math.max(stats.maxRenderMs, ms);
  });
}

function matches(w) {
  if (!state.filter) return true;
  const f = state.filter;
  return [w.name, w.role, w.status, w.runtime, w.org, w.k8s_name].some((s) => (s || '').toLowerCase().includes(f));
}

function nodeEl(w) {
  let el = state.els.get(w.id);
  if (!el) {
    el = document.createElement('div');
    el.className = 'node';
    el.dataset.id = w.id;
    el.setAttribute('role', 'treeitem');
    el.tabIndex = -1;
    el.innerHTML = '<div class="n-name"></div><div class="n-role"></div><div class="n-status"></div>';
    const fold = document.createElement('button');
    fold.className = 'n-fold';
    fold.type = 'button';
    fold.tabIndex = -1;
    fold.addEventListener('click', (e) => { e.stopPropagation(); toggleCollapse(el.dataset.id); });
    el.appendChild(fold);
    el.addEventListener('click', () => {
      if (el.dataset.dragged) { delete el.dataset.dragged; return; }
      selectNode(el.dataset.id);
    });
    $('nodes').appendChild(el);
    state.els.set(w.id, el);
  }
  return el;
}

// The worst health in a subtree (the node itself included).
function worstOf(id, byParent) {
  let worst = health(state.ws.get(id)), n = 0;
  const stack = [id], seen = new Set([id]);
  while (stack.length) {
    for (const k of byParent.get(stack.pop()) || []) {
      if (seen.has(k.id)) continue;
      seen.add(k.id);
      n++;
      const h = health(k);
      if ((SEVERITY[h] || 0) > (SEVERITY[worst] || 0)) worst = h;
      stack.push(k.id);
    }
  }
  return { worst, count: n };
}

// A full render lays out and redraws everything; it runs when the tree's shape or a position
// changed. A status change alone only updates the changed nodes (and their folded ancestors),
// so a burst of changes on a large org stays within a frame.
function render() {
  if (state.layoutDirty || !state.pos.size) renderAll();
  else renderChanged();
  state.dirty.clear();
  let online = 0, failing = 0;
  for (const w of state.ws.values()) {
    if (w.status === 'online') online++;
    const h = health(w);
    if (h === 'failed' || h === 'degraded' || h === 'stuck') failing++;
  }
  $('counts').textContent = online + ' online / ' + state.ws.size + ' workspaces' + (failing ? ' · ' + failing + ' failing' : '');
  $('empty').hidden = state.ws.size > 0;
  if (state.selected) renderDetail();
}

function renderAll() {
  state.layoutDirty = false;
  firstIdCache = null;
  // Folded children are in `byParent` too (the layout just does not place them), so the
  // worst-health roll-up sees the whole subtree.
  const { pos, byParent, groups, width, height } = layout();
  state.pos = pos;
  state.tree = { byParent };
  const stage = $('stage');
  stage.style.width = width + 'px';
  stage.style.height = height + 'px';
  stage.style.transform = 'scale(' + state.zoom + ')';
  $('zoom-level').textContent = Math.round(state.zoom * 100) + '%';
  const svg = $('edges');
  svg.setAttribute('width', width);
  svg.setAttribute('height', height);
  let paths = '';
  for (const [id, p] of pos) {
    const w = state.ws.get(id);
    if (!w || !w.parent_id || !pos.has(w.parent_id)) continue;
    const pp = pos.get(w.parent_id);
    const x1 = pp.x + NODE_W / 2, y1 = pp.y + NODE_H, x2 = p.x + NODE_W / 2, y2 = p.y;
    const my = Math.min(pp.y + NODE_H + GAP_Y / 2, Math.max(y1, y2 - GAP_Y / 2));
    if (p.comb) {
      const gx = p.x - GAP_X / 2, cy = p.y + NODE_H / 2;
      paths += '<path d="M' + x1 + ' ' + y1 + ' V' + my + ' H' + gx + ' V' + cy + ' H' + p.x + '"/>';
    } else {
      paths += '<path d="M' + x1 + ' ' + y1 + ' V' + my + ' H' + x2 + ' V' + y2 + '"/>';
    }
  }
  svg.innerHTML = paths;
  renderGroups(groups);

  state.names = new Map();
  for (const w of state.ws.values()) state.names.set(w.name, (state.names.get(w.name) || 0) + 1);
  if (state.focused && !state.ws.has(state.focused)) state.focused = null;
  for (const w of state.ws.values()) {
    const el = nodeEl(w);
    const p = pos.get(w.id);
    el.hidden = !p || hiddenByCollapse(w);
    if (p && !w._dragging) { el.style.left = p.x + 'px'; el.style.top = p.y + 'px'; }
    updateNode(w, el);
  }
  for (const [id, el] of state.els) {
    if (!state.ws.has(id)) { el.remove(); state.els.delete(id); }
  }
}

function renderChanged() {
  const todo = new Set();
  for (const id of state.dirty) {
    const w = state.ws.get(id);
    if (!w) continue;
    todo.add(id);
    for (const a of ancestors(w)) if (a.collapsed) todo.add(a.id);
  }
  for (const id of todo) {
    const w = state.ws.get(id), el = state.els.get(id);
    if (w && el) updateNode(w, el);
  }
}

// Everything a node shows but its position.
function updateNode(w, el) {
  const byParent = state.tree.byParent;
  const h = health(w);
  el.dataset.status = w.status;
  el.dataset.health = h;
  el.dataset.name = w.name;
  el.dataset.org = w.org || '';
  el.dataset.history = (state.history.get(w.id) || []).join(',');
  const nr = notReady(w);
  el.dataset.reason = nr ? (nr.reason || nr.message) : '';
  const dup = state.names.get(w.name) > 1;
  const where = w.namespace + '/' + w.k8s_name;
  el.title = w.name + (dup ? ' (' + where + ')' : '') + ' — ' + w.status +
    (nr ? '\n' + [nr.reason, nr.message].filter(Boolean).join(': ') : (w.message ? '\n' + w.message : ''));
  el.querySelector('.n-name').textContent = w.name;
  el.querySelector('.n-role').textContent = dup ? where : [w.role, w.runtime].filter(Boolean).join(' · ');
  el.querySelector('.n-status').textContent = w.status + (nr && nr.reason ? ' · ' + nr.reason : '');
  const kids = (byParent.get(w.id) || []).length;
  const fold = el.querySelector('.n-fold');
  fold.hidden = kids === 0 && !w.collapsed;
  if (w.collapsed) {
    const { worst, count } = worstOf(w.id, byParent);
    el.dataset.worst = worst;
    fold.textContent = '▸ ' + count + (SEVERITY[worst] >= SEVERITY.stuck ? ' ⚠' : '');
    fold.title = 'Show the ' + count + ' sub-workspaces' + (SEVERITY[worst] >= SEVERITY.stuck ? ' (one is ' + worst + ')' : '');
  } else {
    delete el.dataset.worst;
    fold.textContent = '▾';
    fold.title = 'Fold the sub-workspaces';
  }
  fold.setAttribute('aria-label', fold.title);
  if (kids) el.setAttribute('aria-expanded', String(!w.collapsed)); else el.removeAttribute('aria-expanded');
  el.setAttribute('aria-level', String(ancestors(w).length + 1));
  el.setAttribute('aria-selected', String(state.selected === w.id));
  el.setAttribute('aria-label', w.name + (dup ? ', ' + where : '') + ', ' + w.status +
    (nr && nr.reason ? ', ' + nr.reason : '') + (w.collapsed ? ', folded, worst below: ' + el.dataset.worst : ''));
  el.tabIndex = (state.focused || state.selected || firstId()) === w.id ? 0 : -1;
  el.classList.toggle('selected', state.selected === w.id);
  el.classList.toggle('dim', !matches(w));
}

let firstIdCache = null;
function firstId() {
  if (firstIdCache && state.ws.has(firstIdCache)) return firstIdCache;
  let best = null;
  for (const [id, p] of state.pos) if (!best || p.y < best.p.y || (p.y === best.p.y && p.x < best.p.x)) best = { id, p };
  firstIdCache = best ? best.id : null;
  return firstIdCache;
}

function renderGroups(groups) {
  const box = $('nodes');
  for (const g of box.querySelectorAll('.group-label')) g.remove();
  for (const g of groups) {
    const d = document.createElement('div');
    d.className = 'group-label';
    d.style.top = g.y + 'px';
    d.style.left = PAD + 'px';
    d.textContent = g.org ? 'org ' + g.org : 'not in an org';
    box.appendChild(d);
  }
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

function selectNode(id, keepFocus) {
  const was = state.selected;
  state.selected = id;
  $('detail').hidden = !id;
  for (const [k, el] of state.els) {
    el.classList.toggle('selected', k === id);
    el.setAttribute('aria-selected', String(k === id));
  }
  if (id) {
    if (id !== was && window.moleculeTabs) window.moleculeTabs.reset();
    state.focused = id;
    renderDetail();
    refreshDetailLists();
    if (window.moleculeUi) window.moleculeUi.showTab('pane-details');
  } else if (was && !keepFocus && state.els.get(was)) {
    state.els.get(was).focus();
  }
}

function renderDetail() {
  const w = state.ws.get(state.selected);
  if (!w) return;
  $('d-name').textContent = w.name;
  const st = $('d-status');
  st.textContent = w.status;
  st.dataset.status = w.status;
  $('d-phase').textContent = 'phase ' + w.phase;
  const nr = notReady(w);
  const reason = $('d-reason');
  reason.hidden = !nr;
  reason.textContent = nr ? 'Not ready: ' + [nr.reason, nr.message].filter(Boolean).join(' — ') : '';
  $('d-role').textContent = w.role || '—';
  $('d-runtime').textContent = w.runtime;
  $('d-tier').textContent = String(w.tier);
  $('d-org').textContent = w.org ? w.org + ' (OrgImport: deleting this workspace alone brings it back)' : '—';
  $('d-record').textContent = (w.namespace || '') + '/' + (w.k8s_name || '');
  $('d-url').textContent = w.url || '—';
  $('d-tasks').textContent = w.active_tasks + (w.current_task ? ' · ' + w.current_task : '');
  const err = lastError(w);
  $('d-error').textContent = err || 'none';
  $('d-error').classList.toggle('muted', !err);
  const tb = $('d-conditions');
  tb.textContent = '';
  for (const c of w.conditions || []) {
    const tr = document.createElement('tr');
    if (c.status === 'False') tr.className = 'false';
    for (const v of [c.type, c.status, c.reason || '', c.message || '']) {
      const td = document.createElement('td');
      td.textContent = v;
      tr.appendChild(td);
    }
    tb.appendChild(tr);
  }
  renderBanner(w, nr);
  const can = actionsFor(w);
  applyDisabled($('btn-restart'), can.restart);
  applyDisabled($('btn-pause'), can.pause);
  applyDisabled($('btn-resume'), can.resume);
  applyDisabled($('btn-logs'), can.logs);
  applyDisabled($('btn-delete'), can.delete);
  $('btn-pause').hidden = !!w.paused;
  $('btn-resume').hidden = !w.paused;
}

// Failed, or provisioning with a failing reason: say so, and offer Retry, Cancel and the logs.
function renderBanner(w, nr) {
  const b = $('d-banner');
  const timedOut = w.status === 'failed';
  const stuck = w.status === 'provisioning' && nr;
  b.hidden = !(timedOut || stuck);
  if (b.hidden) return;
  const why = nr ? [nr.reason, nr.message].filter(Boolean).join(': ') : (w.message || '');
  const limit = w.provision_timeout_ms ? Math.round(w.provision_timeout_ms / 60000) + ' min' : 'the provision timeout';
  $('d-banner-text').textContent = timedOut
    ? 'Provisioning failed' + (why ? ' — ' + why : '') + '. Retry restarts it; Cancel pauses it.'
    : 'It cannot start: ' + why + '. It turns Failed after ' + limit + ' unless this is fixed.';
  applyDisabled($('b-retry'), actionsFor(w).restart);
  applyDisabled($('b-cancel'), actionsFor(w).pause);
  applyDisabled($('b-logs'), actionsFor(w).logs);
}

let detailTimer = null;
function refreshDetailLists() {
  clearTimeout(detailTimer);
  detailTimer = setTimeout(async () => {
    const id = state.selected;
    if (!id) return;
    const [events, plugins] = await Promise.all([
      api('GET', '/events/' + id + '?limit=15').catch(() => null),
      api('GET', '/workspaces/' + id + '/plugins').catch(() => null),
    ]);
    if (state.selected !== id) return;
    if (events && window.moleculeUi) window.moleculeUi.renderEvents(events);
    if (plugins && window.moleculeUi) window.moleculeUi.renderPlugins(id, plugins);
    if (window.moleculeUi) window.moleculeUi.refreshSecrets();
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

// The lifecycle actions by name, for the panel, the context menu and the shortcuts.
function runAction(name, id) {
  const w = state.ws.get(id || state.selected);
  if (!w) return;
  const why = actionsFor(w)[name];
  if (why) { toast(why, true); return; }
  if (name === 'restart') act('/workspaces/' + w.id + '/restart', 'Restart requested');
  else if (name === 'pause') act('/workspaces/' + w.id + '/pause', 'Paused');
  else if (name === 'resume') act('/workspaces/' + w.id + '/resume', 'Resumed');
  else if (name === 'logs') window.moleculeUi.openLogs(w.id);
  else if (name === 'delete') window.moleculeUi.askDelete(w.id);
}

async function toggleCollapse(id) {
  const w = state.ws.get(id);
  if (!w) return;
  try { await api('PATCH', '/workspaces/' + id, { collapsed: !w.collapsed }); } catch (e) { toast(e.message, true); }
}

// ---------------------------------------------------------------- viewport

// Kept per browser (localStorage): one person's zoom is not everyone's.
let viewportTimer = null;
function saveViewport() {
  clearTimeout(viewportTimer);
  viewportTimer = setTimeout(() => {
    const c = $('chart');
    localStorage.setItem(VIEWPORT_KEY, JSON.stringify({ x: c.scrollLeft, y: c.scrollTop, zoom: state.zoom }));
  }, 300);
}

function setZoom(z) {
  state.zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, Math.round(z * 100) / 100));
  relayout();
  saveViewport();
}

function zoomFit() {
  const c = $('chart');
  const s = $('stage');
  const w = parseFloat(s.style.width) || 1, h = parseFloat(s.style.height) || 1;
  setZoom(Math.min(1, (c.clientWidth - 8) / w, (c.clientHeight - 8) / h));
  requestAnimationFrame(() => { c.scrollLeft = 0; c.scrollTop = 0; });
}

function loadViewport() {
  let v = null;
  try { v = JSON.parse(localStorage.getItem(VIEWPORT_KEY) || 'null'); } catch (_) { /* unreadable */ }
  if (!v) return;
  state.zoom = Math.min(ZOOM_MAX, Math.max(ZOOM_MIN, Number(v.zoom) || 1));
  requestAnimationFrame(() => { $('chart').scrollLeft = v.x || 0; $('chart').scrollTop = v.y || 0; });
}

// ---------------------------------------------------------------- start

function wire() {
  $('d-close').addEventListener('click', () => selectNode(null));
  $('btn-restart').addEventListener('click', () => runAction('restart'));
  $('btn-pause').addEventListener('click', () => runAction('pause'));
  $('btn-resume').addEventListener('click', () => runAction('resume'));
  $('btn-logs').addEventListener('click', () => runAction('logs'));
  $('btn-delete').addEventListener('click', () => runAction('delete'));
  $('b-retry').addEventListener('click', () => runAction('restart'));
  $('b-cancel').addEventListener('click', () => runAction('pause'));
  $('b-logs').addEventListener('click', () => runAction('logs'));
  $('btn-reconnect').addEventListener('click', reconnectNow);
  $('zoom-in').addEventListener('click', () => setZoom(state.zoom * 1.15));
  $('zoom-out').addEventListener('click', () => setZoom(state.zoom / 1.15));
  $('zoom-fit').addEventListener('click', zoomFit);
  $('zoom-reset').addEventListener('click', () => setZoom(1));
  $('chart').addEventListener('scroll', saveViewport, { passive: true });
  $('chart').addEventListener('wheel', (e) => {
    if (!e.ctrlKey) return;
    e.preventDefault();
    setZoom(state.zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1));
  }, { passive: false });
  $('filter').addEventListener('input', (e) => { state.filter = e.target.value.trim().toLowerCase(); relayout(); });
  $('group-org').addEventListener('change', (e) => { state.groupByOrg = e.target.checked; relayout(); });
  $('btn-logout').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('login-token').value.trim());
    location.reload();
  });
}

async function start() {
  wire();
  for (const b of document.querySelectorAll('.needs-live')) applyDisabled(b, 'Not connected yet');
  state.token = readToken();
  if (!state.token) { showLogin(); setConn('disconnected', 'signed out'); return; }
  loadViewport();
  // A refused token shows the sign-in at once instead of a stream that never opens.
  try {
    await api('GET', '/canvas/viewport');
  } catch (e) {
    if (e.status === 401) { setConn('disconnected', 'signed out'); return; }
  }
  connect();
}

// What ui.js uses.
window.moleculeCanvas = {
  state, api, apiText, stripAnsi, toast, selectNode, runAction, actionsFor, applyDisabled,
  scheduleRender, relayout, setZoom, zoomFit, toggleCollapse, notReady, health, descendants, refreshDetailLists,
  NODE_W, NODE_H,
};

document.addEventListener('DOMContentLoaded', start);
