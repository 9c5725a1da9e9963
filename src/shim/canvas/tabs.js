// The team tabs of the workspace panel — Chat, Agent Comms, Activity, Schedules, Channels —
// and the A2A edge overlay on the chart. app.js owns the data and hands every stream message
// to `onMessage` here; ui.js switches the tabs and calls `refresh`. Plain JS, no build step
// (ADR 0052, section "The team tabs").
'use strict';

(() => {
  const C = window.moleculeCanvas;
  const { state, api, toast } = C;
  const $ = (id) => document.getElementById(id);
  const el = (tag, props, ...kids) => {
    const e = document.createElement(tag);
    Object.assign(e, props || {});
    for (const k of kids) e.append(k);
    return e;
  };
  const button = (text, onClick, props) => {
    const b = el('button', Object.assign({ type: 'button', textContent: text }, props || {}));
    b.addEventListener('click', onClick);
    return b;
  };
  const when = (t) => (t ? new Date(t).toLocaleString() : '—');
  const nameOf = (id) => (state.ws.get(id) || {}).name || id || '?';
  const offline = () => (state.live ? null : 'Offline: the server is unreachable');
  const PANES = ['pane-chat', 'pane-comms', 'pane-activity', 'pane-schedules', 'pane-channels'];
  const shown = (pane) => !$('detail').hidden && !$(pane).hidden;

  // ---------------------------------------------------------------- A2A text

  // The text of an A2A message, task or answer: parts of the message, of the task's status
  // message and of its artifacts, or the JSON-RPC error.
  function partsText(parts) {
    return (parts || []).map((p) => (p && (p.text || (p.kind === 'data' ? JSON.stringify(p.data) : ''))) || '').filter(Boolean).join('\n');
  }

  function replyText(body) {
    if (!body || typeof body !== 'object') return body ? String(body) : '';
    if (body.error) return 'Error: ' + (body.error.message || JSON.stringify(body.error));
    const r = body.result || body;
    const out = [partsText(r.parts)];
    if (r.status && r.status.message) out.push(partsText(r.status.message.parts));
    for (const a of r.artifacts || []) out.push(partsText(a.parts));
    if (r.message) out.push(partsText(r.message.parts));
    return out.filter(Boolean).join('\n');
  }

  function requestText(body) {
    const m = body && body.params && body.params.message;
    return m ? partsText(m.parts) : '';
  }

  // ---------------------------------------------------------------- chat

  let chatPending = 0;

  function chatLine(who, text, cls, label) {
    const li = el('li', { className: 'msg ' + (cls || who) },
      el('span', { className: 'who', textContent: label || (who === 'user' ? 'You' : nameOf(state.selected)) }),
      el('span', { className: 'text', textContent: text }));
    $('chat-log').appendChild(li);
    li.scrollIntoView({ block: 'nearest' });
    return li;
  }

  async function refreshChat() {
    const id = state.selected;
    if (!id || !shown('pane-chat') || chatPending) return;
    let rows;
    try {
      rows = await api('GET', '/workspaces/' + id + '/activity?type=a2a_receive&source=canvas&limit=50');
    } catch (e) {
      $('chat-status').textContent = 'Could not load the history: ' + e.message;
      return;
    }
    if (state.selected !== id || chatPending) return;
    const log = $('chat-log');
    log.textContent = '';
    for (const r of rows.slice().reverse()) {
      const q = requestText(r.request_body);
      // Messages the platform sent for a schedule or a channel name their origin.
      const origin = /^((?:schedule|channel):[^:]*): /.exec(r.summary || '');
      if (q) chatLine('user', q, origin ? 'user platform' : 'user', origin ? origin[1] : null);
      const a = replyText(r.response_body) || (r.error_detail ? 'Error: ' + r.error_detail : '');
      if (a) chatLine('agent', a, r.status === 'ok' ? 'agent' : 'agent err');
    }
    $('chat-status').textContent = rows.length ? '' : 'No messages yet.';
  }

  async function sendChat(e) {
    e.preventDefault();
    const id = state.selected;
    const input = $('chat-input');
    const text = input.value.trim();
    if (!id || !text) return;
    const why = offline();
    if (why) { toast(why, true); return; }
    input.value = '';
    chatLine('user', text);
    const waiting = chatLine('agent', '…', 'agent pending');
    $('chat-status').textContent = 'Waiting for ' + nameOf(id) + '…';
    chatPending++;
    const messageId = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
    try {
      const r = await api('POST', '/workspaces/' + id + '/a2a', {
        jsonrpc: '2.0', id: messageId, method: 'message/send',
        params: { message: { role: 'user', messageId, parts: [{ kind: 'text', text }] } },
      });
      waiting.querySelector('.text').textContent = replyText(r) || '(empty answer)';
      waiting.className = 'msg agent' + (r && r.error ? ' err' : '');
      $('chat-status').textContent = '';
    } catch (err) {
      waiting.querySelector('.text').textContent = 'Not delivered: ' + err.message;
      waiting.className = 'msg agent err';
      $('chat-status').textContent = '';
    } finally {
      chatPending--;
    }
  }

  // ---------------------------------------------------------------- agent comms

  async function refreshComms() {
    const id = state.selected;
    if (!id || !shown('pane-comms')) return;
    const ul = $('comms-list');
    let list;
    try {
      list = await api('GET', '/workspaces/' + id + '/delegations?limit=50');
    } catch (e) {
      ul.textContent = '';
      ul.append(el('li', { className: 'muted', textContent: e.status === 503 ? 'Delegations are not available on this server.' : 'Could not list the delegations: ' + e.message }));
      return;
    }
    if (state.selected !== id) return;
    ul.textContent = '';
    for (const d of list) {
      const out = d.direction === 'out';
      const li = el('li', { className: 'deleg' });
      li.dataset.direction = d.direction;
      li.dataset.status = d.status;
      li.dataset.peer = nameOf(out ? d.target_id : d.source_id);
      li.append(
        el('b', { textContent: (out ? '→ to ' : '← from ') + li.dataset.peer }), ' ',
        el('span', { className: 'badge st-' + d.status, textContent: d.status }),
        el('span', { className: 't', textContent: ' ' + when(d.updated_at || d.created_at) }),
        el('div', { className: 'task', textContent: d.task_preview || '' }));
      if (d.response_preview) li.append(el('div', { className: 'muted', textContent: '↳ ' + d.response_preview }));
      if (d.error) li.append(el('div', { className: 'error-text', textContent: d.error }));
      ul.appendChild(li);
    }
    if (!list.length) ul.append(el('li', { className: 'muted', textContent: 'no delegations yet' }));
  }

  // ---------------------------------------------------------------- activity

  async function refreshActivity() {
    const id = state.selected;
    if (!id || !shown('pane-activity')) return;
    const type = $('activity-type').value;
    const ul = $('activity-list');
    let rows;
    try {
      rows = await api('GET', '/workspaces/' + id + '/activity?limit=50' + (type ? '&type=' + encodeURIComponent(type) : ''));
    } catch (e) {
      ul.textContent = '';
      ul.append(el('li', { className: 'muted', textContent: 'Could not list the activity: ' + e.message }));
      return;
    }
    if (state.selected !== id || $('activity-type').value !== type) return;
    ul.textContent = '';
    for (const r of rows) {
      const li = el('li', { className: 'act' + (r.status && r.status !== 'ok' ? ' warning' : '') });
      li.dataset.type = r.activity_type;
      const peer = r.activity_type === 'a2a_send' ? ' → ' + nameOf(r.target_id)
        : r.activity_type === 'a2a_receive' ? ' ← ' + (r.source_id ? nameOf(r.source_id) : 'canvas') : '';
      li.append(el('span', { className: 't', textContent: when(r.created_at) + (r.duration_ms != null ? ' · ' + r.duration_ms + ' ms' : '') }),
        el('b', { textContent: r.activity_type + peer }), ' ',
        document.createTextNode(r.summary || ''));
      if (r.error_detail) li.append(el('div', { className: 'error-text', textContent: r.error_detail }));
      ul.appendChild(li);
    }
    if (!rows.length) ul.append(el('li', { className: 'muted', textContent: type ? 'no ' + type + ' rows' : 'no activity yet' }));
  }

  // ---------------------------------------------------------------- edge overlay

  // An A2A call between two workspaces on the chart draws a transient edge from the caller
  // to the callee; it fades out (CSS) and is removed after FLASH_MS.
  const FLASH_MS = 4000;
  const flashes = new Map(); // "source>target" -> {line, timer}

  // The node that stands for `id` on the chart: itself, or its nearest shown ancestor when it
  // sits in a folded subtree.
  function shownFor(id) {
    const seen = new Set();
    let w = state.ws.get(id);
    while (w && !seen.has(w.id)) {
      seen.add(w.id);
      const e = state.els.get(w.id);
      if (e && !e.hidden && state.pos.has(w.id)) return w.id;
      w = w.parent_id ? state.ws.get(w.parent_id) : null;
    }
    return null;
  }

  function flashEdge(from, to) {
    const source = shownFor(from), target = shownFor(to);
    if (!source || !target || source === target) return;
    const a = state.pos.get(source), b = state.pos.get(target);
    const ea = state.els.get(source), eb = state.els.get(target);
    if (!a || !b || !ea || !eb || ea.hidden || eb.hidden) return;
    const svg = $('flash-edges');
    const key = source + '>' + target;
    // The caller's a2a_send and the callee's a2a_receive of one call share one edge.
    if (flashes.has(key)) return;
    const line = document.createElementNS('http://www.w3.org/2000/svg', 'line');
    line.setAttribute('class', 'a2a-edge');
    line.setAttribute('x1', a.x + C.NODE_W / 2);
    line.setAttribute('y1', a.y + C.NODE_H / 2);
    line.setAttribute('x2', b.x + C.NODE_W / 2);
    line.setAttribute('y2', b.y + C.NODE_H / 2);
    line.dataset.source = source;
    line.dataset.target = target;
    svg.setAttribute('width', $('edges').getAttribute('width') || 0);
    svg.setAttribute('height', $('edges').getAttribute('height') || 0);
    svg.appendChild(line);
    const timer = setTimeout(() => { line.remove(); flashes.delete(key); }, FLASH_MS);
    flashes.set(key, { line, timer });
  }

  // ---------------------------------------------------------------- schedules

  let scheduleRoutes = true;

  function schedForm(s) {
    $('sched-id').value = s ? s.id : '';
    $('sched-name').value = s ? s.name || '' : '';
    $('sched-cron').value = s ? s.cron_expr || '' : '';
    $('sched-tz').value = s ? s.timezone || '' : '';
    $('sched-prompt').value = s ? s.prompt || '' : '';
    $('sched-enabled').checked = s ? !!s.enabled : true;
    $('sched-form-title').textContent = s ? 'Edit ' + s.name : 'New schedule';
    $('sched-save').textContent = s ? 'Save' : 'Create';
    $('sched-cancel').hidden = !s;
    schedError('');
  }

  // A 422 names the field (`field`, else in the message): it is marked invalid too.
  function schedError(msg, field) {
    const p = $('sched-error');
    p.hidden = !msg;
    p.textContent = msg;
    for (const f of ['sched-name', 'sched-cron', 'sched-tz', 'sched-prompt']) $(f).removeAttribute('aria-invalid');
    const fields = [[/cron_?expr/i, 'sched-cron'], [/timezone/i, 'sched-tz'], [/prompt/i, 'sched-prompt'], [/name/i, 'sched-name']];
    const hit = msg && fields.find(([re]) => re.test(field || msg));
    if (hit) $(hit[1]).setAttribute('aria-invalid', 'true');
  }

  async function saveSchedule(e) {
    e.preventDefault();
    const id = state.selected, sid = $('sched-id').value;
    const why = offline();
    if (why) { schedError(why); return; }
    const body = {
      name: $('sched-name').value.trim(), cron_expr: $('sched-cron').value.trim(),
      timezone: $('sched-tz').value.trim() || 'UTC', prompt: $('sched-prompt').value,
      enabled: $('sched-enabled').checked,
    };
    try {
      if (sid) await api('PATCH', '/workspaces/' + id + '/schedules/' + encodeURIComponent(sid), body);
      else await api('POST', '/workspaces/' + id + '/schedules', body);
      toast((sid ? 'Saved ' : 'Created ') + body.name);
      schedForm(null);
      refreshSchedules();
    } catch (err) {
      schedError(err.message, err.body && err.body.field);
    }
  }

  async function schedAction(method, s, suffix, done) {
    try {
      await api(method, '/workspaces/' + state.selected + '/schedules/' + encodeURIComponent(s.id) + (suffix || ''));
      toast(done);
      refreshSchedules();
    } catch (e) { toast(e.message, true); }
  }

  async function showHistory(s, box) {
    box.textContent = 'Loading…';
    try {
      const runs = await api('GET', '/workspaces/' + state.selected + '/schedules/' + encodeURIComponent(s.id) + '/history');
      box.textContent = '';
      const list = Array.isArray(runs) ? runs : (runs && runs.items) || [];
      for (const r of list.slice(0, 10)) {
        box.append(el('div', { className: 'muted', textContent: when(r.run_at || r.started_at || r.created_at) + ' · ' + (r.status || '') + (r.error || r.error_detail ? ' · ' + (r.error || r.error_detail) : '') }));
      }
      if (!list.length) box.textContent = 'no runs yet';
    } catch (e) { box.textContent = 'Could not load the history: ' + e.message; }
  }

  async function refreshSchedules() {
    const id = state.selected;
    if (!id || !shown('pane-schedules')) return;
    const ul = $('sched-list');
    let list;
    try {
      list = await api('GET', '/workspaces/' + id + '/schedules');
      scheduleRoutes = true;
    } catch (e) {
      ul.textContent = '';
      scheduleRoutes = e.status !== 404 && e.status !== 405;
      ul.append(el('li', { className: 'muted', textContent: scheduleRoutes ? 'Could not list the schedules: ' + e.message : 'Schedules are not available on this server.' }));
      $('sched-form').hidden = !scheduleRoutes;
      return;
    }
    $('sched-form').hidden = false;
    if (state.selected !== id) return;
    ul.textContent = '';
    for (const s of list) {
      const li = el('li', { className: 'sched' });
      li.dataset.name = s.name;
      li.dataset.status = s.last_status || '';
      li.append(el('b', { textContent: s.name }), ' ',
        el('code', { textContent: s.cron_expr }), el('span', { className: 'muted', textContent: ' ' + (s.timezone || 'UTC') + (s.enabled ? '' : ' · disabled') }),
        el('div', { className: 'muted', textContent: 'next ' + when(s.next_run_at) + ' · last ' + when(s.last_run_at) +
          (s.last_status ? ' (' + s.last_status + ')' : '') + ' · ' + (s.run_count || 0) + ' run' + (s.run_count === 1 ? '' : 's') }));
      if (s.last_error) li.append(el('div', { className: 'error-text', textContent: s.last_error }));
      const hist = el('div', { className: 'history' });
      const acts = el('div', { className: 'actions' },
        button('Run now', () => schedAction('POST', s, '/run', 'Running ' + s.name), { className: 'small needs-live' }),
        button('Edit', () => { schedForm(s); $('sched-name').focus(); }, { className: 'small' }),
        button('History', () => showHistory(s, hist), { className: 'small' }),
        button('Delete', () => { if (window.confirm('Delete the schedule ' + s.name + '?')) schedAction('DELETE', s, '', 'Deleted ' + s.name); }, { className: 'small danger needs-live' }));
      for (const b of acts.querySelectorAll('button')) {
        b.setAttribute('aria-label', b.textContent + ' ' + s.name);
        if (b.classList.contains('needs-live')) C.applyDisabled(b, offline());
      }
      li.append(acts, hist);
      ul.appendChild(li);
    }
    if (!list.length) ul.append(el('li', { className: 'muted', textContent: 'no schedules' }));
  }

  // ---------------------------------------------------------------- channels

  async function refreshChannels() {
    const id = state.selected;
    if (!id || !shown('pane-channels')) return;
    const ul = $('channels-list');
    let list;
    try {
      list = await api('GET', '/workspaces/' + id + '/channels');
    } catch (e) {
      ul.textContent = '';
      ul.append(el('li', { className: 'muted', textContent: e.status === 404 || e.status === 405 ? 'Channels are not available on this server.' : 'Could not list the channels: ' + e.message }));
      return;
    }
    if (state.selected !== id) return;
    ul.textContent = '';
    for (const ch of list) {
      const li = el('li', { className: 'channel' });
      li.dataset.index = ch.index;
      const st = String(ch.state || 'unknown').toLowerCase();
      li.dataset.state = ch.state || '';
      li.dataset.enabled = String(!!ch.enabled);
      li.append(el('b', { textContent: ch.type + ' #' + ch.index }), ' ',
        el('span', { className: 'badge st-' + st, textContent: ch.state || 'unknown' }),
        el('span', { className: 'muted', textContent: ' ' + (ch.enabled ? 'enabled' : 'disabled') + ' · ' + (ch.message_count || 0) + ' messages' +
          (ch.ignored_count ? ', ' + ch.ignored_count + ' ignored' : '') + ' · last ' + when(ch.last_message_at) }));
      if (ch.reason || ch.message) li.append(el('div', { className: st === 'failed' ? 'error-text' : 'muted', textContent: [ch.reason, ch.message].filter(Boolean).join(': ') }));
      const conf = Object.entries(ch.config || {}).map(([k, v]) => k + '=' + v);
      if (ch.token_from) conf.push('token from Secret ' + ch.token_from.secret + (ch.token_from.key ? '/' + ch.token_from.key : ''));
      if (conf.length) li.append(el('div', { className: 'muted', textContent: conf.join(' · ') }));
      if ((ch.allowed_users || []).length) li.append(el('div', { className: 'muted', textContent: 'allowed: ' + ch.allowed_users.join(', ') }));
      const t = button(ch.enabled ? 'Disable' : 'Enable', async () => {
        try {
          await api('PATCH', '/workspaces/' + id + '/channels/' + ch.index, { enabled: !ch.enabled });
          toast((ch.enabled ? 'Disabled ' : 'Enabled ') + ch.type + ' #' + ch.index);
          refreshChannels();
        } catch (e) { toast(e.message, true); }
      }, { className: 'small needs-live' });
      t.setAttribute('aria-label', (ch.enabled ? 'Disable ' : 'Enable ') + ch.type + ' channel ' + ch.index);
      C.applyDisabled(t, offline());
      li.append(' ', t);
      ul.appendChild(li);
    }
    if (!list.length) ul.append(el('li', { className: 'muted', textContent: 'no channels' }));
  }

  // ---------------------------------------------------------------- dispatch

  const REFRESH = {
    'pane-chat': refreshChat, 'pane-comms': refreshComms, 'pane-activity': refreshActivity,
    'pane-schedules': refreshSchedules, 'pane-channels': refreshChannels,
  };

  // Fetch the open tab again (a tab switch, a reconnect); `later` is the stream's way, debounced
  // per tab so a burst of stream messages costs one request.
  const timers = {};
  function refresh(pane) {
    const panes = pane ? [pane] : PANES;
    for (const p of panes) {
      if (!REFRESH[p] || !shown(p)) continue;
      clearTimeout(timers[p]);
      timers[p] = setTimeout(REFRESH[p], pane ? 0 : 120);
    }
  }

  function later(pane, ms) {
    if (!shown(pane)) return;
    clearTimeout(timers[pane]);
    timers[pane] = setTimeout(REFRESH[pane], ms);
  }

  function onMessage(msg) {
    const p = msg.payload || {};
    if (msg.event === 'ACTIVITY_LOGGED' && (p.activity_type === 'a2a_send' || p.activity_type === 'a2a_receive')) {
      flashEdge(p.source_id, p.target_id);
    }
    const sel = state.selected;
    if (!sel) return;
    const mine = msg.workspace_id === sel;
    if (msg.event === 'ACTIVITY_LOGGED' && mine) {
      later('pane-activity', 150);
      later('pane-schedules', 150);
      // The row of a call from outside any workspace (the canvas, a schedule, a channel) is
      // stored after its A2A_RESPONSE went out: the chat history reloads on the row too.
      if (p.activity_type === 'a2a_receive' && !p.source_id && !chatPending) later('pane-chat', 150);
      // A channel message: its counters land with the controller's next status flush (≤ 1 s).
      if (/^channel:/.test(p.summary || '')) later('pane-channels', 1500);
    }
    else if (msg.event === 'A2A_RESPONSE' && mine) { if (!chatPending) later('pane-chat', 150); }
    else if (msg.event.startsWith('DELEGATION_') && (mine || p.target_id === sel)) later('pane-comms', 150);
    // Schedules and channels live in the workspace's spec and status: its updates carry them.
    else if (msg.event.startsWith('WORKSPACE_') && msg.event !== 'WORKSPACE_HEARTBEAT' && mine) { later('pane-channels', 150); later('pane-schedules', 150); }
    else if (msg.event.startsWith('CRON_') && mine) later('pane-schedules', 150);
    else if (msg.event.startsWith('CHANNEL_') && mine) later('pane-channels', 150);
  }

  function wire() {
    $('chat-form').addEventListener('submit', sendChat);
    $('chat-input').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); $('chat-form').requestSubmit(); }
    });
    $('activity-type').addEventListener('change', () => refresh('pane-activity'));
    $('sched-form').addEventListener('submit', saveSchedule);
    $('sched-cancel').addEventListener('click', () => schedForm(null));
  }

  // A new selection starts with empty tabs (no other workspace's rows while loading).
  function reset() {
    for (const id of ['chat-log', 'comms-list', 'activity-list', 'sched-list', 'channels-list']) $(id).textContent = '';
    $('chat-status').textContent = '';
    schedForm(null);
  }

  window.moleculeTabs = { onMessage, refresh, reset, flashEdge, replyText };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wire); else wire();
})();
