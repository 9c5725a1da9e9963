// The canvas's interaction layer: keyboard (roving focus over the tree, shortcuts), drag to
// arrange, the context menu, the logs dialog, the import dialog with its inline secrets, the
// Settings dialog (global secrets, orgs, plugins) and the panel's Secrets tab. app.js owns the
// data; this file only reads `window.moleculeCanvas`. Plain JS, no build step (ADR 0052).
'use strict';

(() => {
  const C = window.moleculeCanvas;
  const { state, api, toast } = C;
  const $ = (id) => document.getElementById(id);
  const API = '/apis/molecule.ai/v1alpha1';
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

  // ---------------------------------------------------------------- keyboard

  const typing = (t) => t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName));

  function focusNode(id) {
    const n = state.els.get(id);
    if (!n || n.hidden) return;
    state.focused = id;
    for (const [k, x] of state.els) x.tabIndex = k === id ? 0 : -1;
    n.focus();
    n.scrollIntoView({ block: 'nearest', inline: 'nearest' });
  }

  function visibleKids(id) {
    const w = state.ws.get(id);
    if (!w || w.collapsed) return [];
    return (state.tree.byParent.get(id) || []).filter((k) => state.els.get(k.id) && !state.els.get(k.id).hidden);
  }

  function siblings(w) {
    if (w.parent_id && state.ws.has(w.parent_id)) return visibleKids(w.parent_id);
    return [...state.ws.values()].filter((x) => !(x.parent_id && state.ws.has(x.parent_id)))
      .sort((a, b) => (state.pos.get(a.id) || {}).y - (state.pos.get(b.id) || {}).y || (state.pos.get(a.id) || {}).x - (state.pos.get(b.id) || {}).x);
  }

  // Tree navigation: Up to the parent, Down to the first child, Left/Right between siblings,
  // Enter opens the panel, Shift+F10 or the menu key the context menu.
  function onNodeKey(e) {
    const node = e.target.closest('.node');
    if (!node || e.target !== node) return;
    const w = state.ws.get(node.dataset.id);
    if (!w) return;
    const sib = siblings(w);
    const i = sib.findIndex((x) => x.id === w.id);
    let to = null;
    switch (e.key) {
      case 'ArrowUp': to = w.parent_id && state.ws.has(w.parent_id) ? w.parent_id : null; break;
      case 'ArrowDown': to = (visibleKids(w.id)[0] || {}).id; break;
      case 'ArrowLeft': to = i > 0 ? sib[i - 1].id : null; break;
      case 'ArrowRight': to = i >= 0 && i < sib.length - 1 ? sib[i + 1].id : null; break;
      case 'Home': to = (sib[0] || {}).id; break;
      case 'End': to = (sib[sib.length - 1] || {}).id; break;
      case 'Enter': case ' ': e.preventDefault(); C.selectNode(w.id); return;
      case 'ContextMenu': e.preventDefault(); openMenu(w.id, node); return;
      case 'F10': if (e.shiftKey) { e.preventDefault(); openMenu(w.id, node); } return;
      default: return;
    }
    e.preventDefault();
    if (to) focusNode(to);
  }

  // Shortcuts act on the selected workspace (or the focused node): r restart, p pause,
  // u resume, l logs, Delete delete; i import, f fit, 0 reset zoom, +/- zoom, / filter; Esc closes.
  function onKey(e) {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
    if (document.querySelector('dialog[open]') || !$('login').hidden) return;
    if (e.key === 'Escape') {
      if (!$('ctx-menu').hidden) { closeMenu(); return; }
      if (state.selected) { e.preventDefault(); C.selectNode(null); }
      return;
    }
    if (typing(e.target)) return;
    const target = state.selected || (document.activeElement && document.activeElement.classList.contains('node') ? document.activeElement.dataset.id : null);
    const act = { r: 'restart', p: 'pause', u: 'resume', l: 'logs', Delete: 'delete' }[e.key];
    if (act && target) { e.preventDefault(); C.runAction(act, target); return; }
    if (e.key === 'i') { e.preventDefault(); if (!$('btn-import').disabled) openImport(); }
    else if (e.key === 'f') { e.preventDefault(); C.zoomFit(); }
    else if (e.key === '0') { e.preventDefault(); C.setZoom(1); }
    else if (e.key === '+' || e.key === '=') { e.preventDefault(); C.setZoom(state.zoom * 1.15); }
    else if (e.key === '-') { e.preventDefault(); C.setZoom(state.zoom / 1.15); }
    else if (e.key === '/') { e.preventDefault(); $('filter').focus(); }
  }

  // ---------------------------------------------------------------- drag

  // Dragging a node moves it under the pointer; on release the position is saved with
  // PATCH {x, y} (an annotation: it never restarts the workspace) and survives a reload.
  function onPointerDown(e) {
    const node = e.target.closest('.node');
    if (!node || e.button !== 0 || e.target.closest('.n-fold')) return;
    const w = state.ws.get(node.dataset.id);
    if (!w) return;
    const start = { px: e.clientX, py: e.clientY, x: parseFloat(node.style.left) || 0, y: parseFloat(node.style.top) || 0 };
    let moved = false;
    const move = (ev) => {
      const dx = (ev.clientX - start.px) / state.zoom, dy = (ev.clientY - start.py) / state.zoom;
      if (!moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      if (!moved) { moved = true; w._dragging = true; node.classList.add('dragging'); }
      const cur = state.ws.get(w.id) || w;
      cur._dragging = true;
      cur.x = Math.max(0, Math.round(start.x + dx));
      cur.y = Math.max(0, Math.round(start.y + dy));
      node.style.left = cur.x + 'px';
      node.style.top = cur.y + 'px';
    };
    const up = async () => {
      window.removeEventListener('pointermove', move);
      window.removeEventListener('pointerup', up);
      if (!moved) return;
      node.dataset.dragged = '1';
      node.classList.remove('dragging');
      const cur = state.ws.get(w.id) || w;
      delete cur._dragging;
      C.relayout();
      if (!state.live) { toast('Offline: the position is not saved', true); return; }
      try {
        await api('PATCH', '/workspaces/' + w.id, { x: cur.x, y: cur.y });
      } catch (err) {
        toast('Could not save the position: ' + err.message, true);
      }
    };
    window.addEventListener('pointermove', move);
    window.addEventListener('pointerup', up);
  }

  // ---------------------------------------------------------------- context menu

  function openMenu(id, anchor, x, y) {
    const w = state.ws.get(id);
    if (!w) return;
    const m = $('ctx-menu');
    m.textContent = '';
    const can = C.actionsFor(w);
    const items = [
      ['Open details', () => C.selectNode(id), null],
      ['Restart', () => C.runAction('restart', id), can.restart],
      w.paused ? ['Resume', () => C.runAction('resume', id), can.resume] : ['Pause', () => C.runAction('pause', id), can.pause],
      ['View logs', () => C.runAction('logs', id), can.logs],
      [w.collapsed ? 'Unfold' : 'Fold', () => C.toggleCollapse(id), (state.tree.byParent.get(id) || []).length || w.collapsed ? (state.live ? null : 'Offline') : 'No sub-workspaces'],
      ['Delete…', () => C.runAction('delete', id), can.delete],
    ];
    for (const [label, fn, why] of items) {
      const b = button(label, () => { closeMenu(); fn(); }, { role: 'menuitem', tabIndex: -1 });
      C.applyDisabled(b, why);
      m.appendChild(b);
    }
    const r = anchor.getBoundingClientRect();
    m.style.left = Math.min((x !== undefined ? x : r.left + 20), window.innerWidth - 200) + 'px';
    m.style.top = Math.min((y !== undefined ? y : r.bottom - 10), window.innerHeight - 240) + 'px';
    m.hidden = false;
    m.dataset.for = id;
    const first = m.querySelector('button:not(:disabled)');
    if (first) first.focus();
  }

  function closeMenu() {
    const m = $('ctx-menu');
    if (m.hidden) return;
    m.hidden = true;
    const n = state.els.get(m.dataset.for);
    if (n) n.focus();
  }

  function onMenuKey(e) {
    const items = [...$('ctx-menu').querySelectorAll('button:not(:disabled)')];
    const i = items.indexOf(document.activeElement);
    if (e.key === 'ArrowDown') { e.preventDefault(); (items[i + 1] || items[0]).focus(); }
    else if (e.key === 'ArrowUp') { e.preventDefault(); (items[i - 1] || items[items.length - 1]).focus(); }
    else if (e.key === 'Escape' || e.key === 'Tab') { e.preventDefault(); closeMenu(); }
  }

  // ---------------------------------------------------------------- events and delete

  function renderEvents(events) {
    const ev = $('d-events');
    ev.textContent = '';
    let warnings = 0, total = 0;
    for (const e of events) {
      const li = document.createElement('li');
      const count = Number((e.payload && e.payload.count) || 1);
      total += count;
      if (e.payload && e.payload.type === 'Warning') { li.className = 'warning'; warnings += count; }
      const t = document.createElement('span');
      t.className = 't';
      t.textContent = new Date(e.created_at).toLocaleString();
      const b = document.createElement('b');
      // The original's event name, and the Kubernetes reason when it says more.
      const reason = e.payload && e.payload.source === 'kubernetes' ? e.payload.reason : '';
      b.textContent = e.event_type + (reason && reason !== e.event_type ? ' · ' + reason : '');
      li.append(t, b);
      if (count > 1) {
        const c = document.createElement('span');
        c.className = 'count';
        c.textContent = '×' + count;
        c.title = 'seen ' + count + ' times';
        li.append(' ', c);
      }
      li.append(document.createTextNode(' ' + ((e.payload && e.payload.message) || '')));
      ev.appendChild(li);
    }
    if (!events.length) ev.innerHTML = '<li class="muted">none yet</li>';
    $('d-event-count').textContent = events.length ? '(' + total + (warnings ? ', ' + warnings + ' warning' + (warnings > 1 ? 's' : '') : '') + ')' : '';
  }

  function askDelete(id) {
    const w = state.ws.get(id || state.selected);
    if (!w) return;
    const kids = C.descendants(w.id);
    $('c-name').textContent = w.name;
    $('c-text').textContent = kids.length
      ? 'This also deletes its ' + kids.length + ' sub-workspace' + (kids.length > 1 ? 's' : '') + ':'
      : 'It has no sub-workspaces. Its container and volume are removed.';
    const org = $('c-org');
    org.hidden = !w.org;
    org.textContent = w.org
      ? 'It belongs to the org "' + w.org + '": a plain delete would come back, because the import recreates it. ' +
        'Remove from the org takes it (and its sub-workspaces) out of the import for good, then deletes it; or delete the whole org.'
      : '';
    $('c-org-delete').hidden = !w.org;
    $('c-org-remove').hidden = !w.org;
    $('c-ok').textContent = w.org ? 'Delete anyway (comes back)' : 'Delete';
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
      if (dlg.returnValue === 'org-delete') { deleteOrg(w.namespace, w.org); return; }
      if (dlg.returnValue === 'org-remove') { removeFromOrg(w); return; }
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

  // ---------------------------------------------------------------- logs

  let logsFor = null;
  async function loadLogs() {
    const pre = $('l-text');
    pre.textContent = 'Loading…';
    try {
      const text = C.stripAnsi(await C.apiText('/workspaces/' + logsFor + '/console'));
      pre.textContent = text.trim() ? text : '(no output yet)';
      pre.scrollTop = pre.scrollHeight;
    } catch (e) {
      pre.textContent = 'No logs: ' + e.message;
    }
  }

  function openLogs(id) {
    const w = state.ws.get(id);
    if (!w) return;
    logsFor = id;
    $('l-name').textContent = w.name;
    $('logs-dialog').showModal();
    loadLogs();
  }

  // ---------------------------------------------------------------- secrets

  async function globalSecrets() {
    const list = await api('GET', '/settings/secrets');
    return new Set(list.filter((s) => s.has_value).map((s) => s.key));
  }

  function secretList(ul, list, onDelete) {
    ul.textContent = '';
    for (const s of list) {
      const li = el('li', { className: 'secret' },
        el('code', { textContent: s.key }), ' ',
        el('span', { className: 'muted', textContent: s.has_value ? 'set' : 'empty' }), ' ');
      const del = button('Remove', () => onDelete(s.key), { className: 'small needs-live', title: 'Remove ' + s.key });
      del.setAttribute('aria-label', 'Remove ' + s.key);
      li.append(del);
      ul.appendChild(li);
    }
    if (!list.length) ul.append(el('li', { className: 'muted', textContent: 'none' }));
  }

  async function refreshGlobal() {
    try {
      const list = await api('GET', '/settings/secrets');
      secretList($('g-secrets'), list, async (key) => {
        try { await api('DELETE', '/settings/secrets/' + encodeURIComponent(key)); toast('Removed ' + key); refreshGlobal(); } catch (e) { toast(e.message, true); }
      });
    } catch (e) {
      $('g-secrets').textContent = 'Could not list the secrets: ' + e.message;
    }
  }

  async function refreshSecrets() {
    const id = state.selected;
    if (!id || $('pane-secrets').hidden) return;
    try {
      const list = await api('GET', '/workspaces/' + id + '/secrets');
      if (state.selected !== id) return;
      secretList($('ws-secrets'), list, async (key) => {
        try { await api('DELETE', '/workspaces/' + id + '/secrets/' + encodeURIComponent(key)); toast('Removed ' + key); refreshSecrets(); } catch (e) { toast(e.message, true); }
      });
    } catch (e) {
      $('ws-secrets').textContent = 'Could not list the secrets: ' + e.message;
    }
  }

  // ---------------------------------------------------------------- panel tabs and plugins

  function showTab(pane) {
    for (const t of document.querySelectorAll('#detail [role=tab]')) {
      const on = t.dataset.pane === pane;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.dataset.pane).hidden = !on;
    }
    if (pane === 'pane-secrets') refreshSecrets();
    else if (window.moleculeTabs) window.moleculeTabs.refresh(pane);
  }

  function renderPlugins(id, plugins) {
    const pl = $('d-plugins');
    pl.textContent = '';
    for (const p of plugins) {
      const li = el('li', {},
        el('b', { textContent: p.name }), ' — ' + p.status +
        (p.installed_sha ? ' @ ' + p.installed_sha.slice(0, 12) : '') +
        (p.restart_class ? ' · ' + p.restart_class + ' restart' : ''), ' ');
      const b = button('Uninstall', async () => {
        try { await api('DELETE', '/workspaces/' + id + '/plugins/' + encodeURIComponent(p.name)); toast('Uninstalling ' + p.name); C.refreshDetailLists(); } catch (e) { toast(e.message, true); }
      }, { className: 'small needs-live' });
      b.setAttribute('aria-label', 'Uninstall ' + p.name);
      C.applyDisabled(b, state.live ? null : 'Offline: the server is unreachable');
      li.append(b);
      pl.appendChild(li);
    }
    if (!plugins.length) pl.append(el('li', { className: 'muted', textContent: 'none' }));
  }

  // ---------------------------------------------------------------- import

  // `A|B` means any one of them.
  const envLabel = (n) => (n.includes('|') ? 'one of ' + n.split('|').join(', ') : n);
  const envMet = (n, have) => n.split('|').some((k) => have.has(k));

  async function openImport() {
    const dlg = $('import-dialog');
    state.chosenTemplate = null;
    $('i-templates').textContent = '';
    $('i-env').hidden = true;
    $('i-skipped').hidden = true;
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
    list.forEach((t, i) => {
      const id = 'tpl-' + i;
      const input = el('input', { type: 'radio', name: 'template', id, value: t.dir, disabled: !!t.error });
      const skipped = (t.workspaces || 0) - (t.spawning === undefined ? t.workspaces : t.spawning);
      const label = el('label', { htmlFor: id },
        el('b', { textContent: t.name || t.dir }),
        el('small', { textContent: (t.description ? t.description + ' — ' : '') + t.workspaces + ' workspace' + (t.workspaces === 1 ? '' : 's') +
          (skipped > 0 ? ', ' + (t.workspaces - skipped) + ' spawn (' + skipped + ' left out by spawning: false)' : '') +
          (t.unresolved_externals ? '; ' + t.unresolved_externals + ' !external not cached' : '') +
          (t.error ? ' — cannot import: ' + t.error : '') }));
      input.addEventListener('change', () => chooseTemplate(t, skipped));
      $('i-templates').append(el('div', { className: 'tpl' }, input, label));
    });
    const first = $('i-templates').querySelector('input:not(:disabled)');
    if (first) first.focus();
  }

  async function chooseTemplate(t, skipped) {
    state.chosenTemplate = t;
    const sk = $('i-skipped');
    sk.hidden = !(skipped > 0);
    sk.textContent = skipped > 0 ? 'Imports ' + (t.workspaces - skipped) + ' of ' + t.workspaces + ' workspaces: ' + skipped +
      ' sit under `spawning: false` and are left out until spawned.' : '';
    $('i-env').hidden = false;
    $('i-missing').hidden = true;
    let have = new Set();
    try { have = await globalSecrets(); } catch (_) { /* listed as missing */ }
    if (state.chosenTemplate !== t) return;
    renderRequired(t, have);
  }

  // Each requirement with an inline field while it is missing; set ones are struck out.
  // Import is enabled only when all are met; "Import anyway" stays, with its warning.
  function renderRequired(t, have) {
    const req = $('i-required');
    req.textContent = '';
    const needs = t.required_env || [];
    let missing = 0;
    for (const n of needs) {
      const met = envMet(n, have);
      if (!met) missing++;
      const li = el('li', { className: met ? 'met' : 'missing' });
      li.dataset.env = n;
      li.append(el(met ? 's' : 'span', { textContent: envLabel(n) }), met ? ' — set' : '');
      if (!met) {
        const keys = n.split('|');
        const key = el('select', { className: 'env-key' });
        key.setAttribute('aria-label', 'Which key to set for ' + envLabel(n));
        for (const k of keys) key.append(el('option', { value: k, textContent: k }));
        if (keys.length === 1) key.hidden = true;
        const val = el('input', { type: 'password', className: 'env-value', autocomplete: 'off', placeholder: 'value' });
        val.setAttribute('aria-label', 'Value of ' + keys[0] + (keys.length > 1 ? ' (or the chosen key)' : ''));
        const set = button('Set', async () => {
          if (!val.value) { val.focus(); return; }
          try {
            await api('PUT', '/settings/secrets', { key: key.value, value: val.value });
            have.add(key.value);
            toast('Set ' + key.value);
            renderRequired(t, have);
            const next = $('i-required').querySelector('.env-value');
            (next || $('i-ok')).focus();
          } catch (e) { toast(e.message, true); }
        }, { className: 'small needs-live' });
        val.addEventListener('keydown', (e) => { if (e.key === 'Enter') { e.preventDefault(); set.click(); } });
        li.append(' ', key, val, set);
      }
      req.appendChild(li);
    }
    if (!needs.length) req.append(el('li', { className: 'muted', textContent: 'none' }));
    const m = $('i-missing');
    m.hidden = !missing;
    m.textContent = missing ? missing + ' missing: set them here, or import anyway (those workspaces will not start).' : '';
    $('i-ok').disabled = !!missing || !!t.error;
    $('i-ok').title = missing ? 'Set the missing env first' : '';
    $('i-force').hidden = !missing;
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
        let have = new Set();
        try { have = await globalSecrets(); } catch (_) { /* listed as missing */ }
        renderRequired(t, have);
      } else {
        toast(e.message, true);
      }
    }
  }

  // ---------------------------------------------------------------- orgs

  async function deleteOrg(ns, name) {
    try {
      await api('DELETE', API + '/namespaces/' + encodeURIComponent(ns) + '/orgimports/' + encodeURIComponent(name));
      toast('Deleting the org ' + name + ' and its workspaces');
      if ($('settings-dialog').open) refreshOrgs();
    } catch (e) {
      toast(e.message, true);
    }
  }

  // "Remove from the org": the record's name goes into the OrgImport's spec.exclude (with
  // its resourceVersion: a concurrent change answers 409 instead of being lost), so the
  // import stops recreating it; then the workspace is deleted (ADR 0052).
  async function removeFromOrg(w) {
    const path = API + '/namespaces/' + encodeURIComponent(w.namespace) + '/orgimports/' + encodeURIComponent(w.org);
    try {
      const org = await api('GET', path);
      const exclude = (org.spec && org.spec.exclude) || [];
      if (!exclude.includes(w.k8s_name)) {
        await api('PATCH', path, { metadata: { resourceVersion: org.metadata.resourceVersion }, spec: { exclude: exclude.concat([w.k8s_name]) } },
          'application/merge-patch+json');
      }
      const r = await api('DELETE', '/workspaces/' + w.id + '?confirm=true');
      toast('Removed ' + w.name + ' from the org ' + w.org + (r && r.cascade_deleted ? ' with ' + r.cascade_deleted + ' sub-workspaces' : ''));
    } catch (e) {
      toast('Could not remove ' + w.name + ' from the org: ' + e.message, true);
    }
  }

  async function refreshOrgs() {
    const ul = $('s-orgs');
    let list;
    try {
      list = (await api('GET', API + '/orgimports')).items || [];
    } catch (e) {
      ul.textContent = 'Could not list the orgs: ' + e.message;
      return;
    }
    ul.textContent = '';
    for (const o of list) {
      const st = o.status || {}, c = st.counts || {};
      const ready = (st.conditions || []).find((x) => x.type === 'Ready');
      const li = el('li', { className: 'org' });
      li.dataset.org = o.metadata.name;
      li.append(el('b', { textContent: o.metadata.name }),
        el('span', { className: 'muted', textContent: ' ' + o.metadata.namespace + ' · ' + (c.desired || 0) + ' desired, ' + (c.skipped || 0) + ' skipped' +
          (c.refused ? ', ' + c.refused + ' refused' : '') + (ready ? ' · ' + (ready.reason || ready.status) : '') }));
      const warnings = st.warnings || [];
      if (warnings.length || (st.missing_env || st.missingEnv || []).length) {
        const d = el('details', {}, el('summary', { textContent: warnings.length + ' warning' + (warnings.length === 1 ? '' : 's') }));
        for (const w of warnings) d.append(el('div', { className: 'muted', textContent: w }));
        for (const m of st.missingEnv || []) d.append(el('div', { className: 'error-text', textContent: 'missing env ' + m }));
        li.append(d);
      }
      const dir = o.spec && o.spec.source && o.spec.source.dir;
      const re = button('Re-import', async () => {
        try {
          await api('POST', '/org/import', { dir, name: o.metadata.name, mode: (o.spec.mode || 'merge').toLowerCase(), force: !!o.spec.force });
          toast('Re-importing ' + o.metadata.name);
        } catch (e) { toast(e.message, true); }
      }, { className: 'small needs-live' });
      C.applyDisabled(re, !dir ? 'Only an import from the template root can be re-imported here' : (state.live ? null : 'Offline'));
      const del = button('Delete org…', () => {
        if (window.confirm('Delete the org ' + o.metadata.name + ' and every workspace it created?')) deleteOrg(o.metadata.namespace, o.metadata.name);
      }, { className: 'small danger needs-live' });
      li.append(' ', re, ' ', del);
      ul.appendChild(li);
    }
    if (!list.length) ul.append(el('li', { className: 'muted', textContent: 'no org imported' }));
  }

  // ---------------------------------------------------------------- plugins

  async function refreshPlugins() {
    const cat = $('s-catalog'), pend = $('s-pending');
    const target = state.ws.get(state.selected);
    try {
      const list = await api('GET', '/plugins');
      cat.textContent = '';
      for (const p of list) {
        const li = el('li', {}, el('b', { textContent: p.name }), el('span', { className: 'muted', textContent: ' ' + (p.version || '') + ' ' + (p.description || '') }), ' ');
        const b = button(target ? 'Install on ' + target.name : 'Install', async () => {
          try {
            await api('POST', '/workspaces/' + target.id + '/plugins', { source: 'local://' + p.name });
            toast('Installing ' + p.name + ' on ' + target.name);
            C.selectNode(target.id);
          } catch (e) { toast(e.message, true); }
        }, { className: 'small needs-live' });
        b.dataset.plugin = p.name;
        C.applyDisabled(b, !target ? 'Select a workspace on the chart first' : (state.live ? null : 'Offline'));
        li.append(b);
        cat.appendChild(li);
      }
      if (!list.length) cat.append(el('li', { className: 'muted', textContent: 'the plugin registry is empty' }));
    } catch (e) { cat.textContent = 'Could not list the plugins: ' + e.message; }
    try {
      const list = await api('GET', '/admin/plugin-updates-pending');
      pend.textContent = '';
      for (const u of list) {
        const w = state.ws.get(u.workspace_id);
        const li = el('li', {}, el('b', { textContent: u.plugin_name || u.plugin_install }),
          ' ' + (w ? 'on ' + w.name + ' ' : '') + (u.from_sha || '').slice(0, 8) + ' → ' + (u.to_sha || '').slice(0, 8) + ' ');
        li.dataset.update = u.k8s_name;
        const what = (u.plugin_name || u.plugin_install) + (w ? ' on ' + w.name : '');
        li.append(button('Approve', async () => {
          try { await api('POST', '/admin/plugin-updates/' + u.id + '/apply'); toast('Approved'); refreshPlugins(); } catch (e) { toast(e.message, true); }
        }, { className: 'small needs-live', ariaLabel: 'Approve the update of ' + what }), ' ', button('Dismiss', async () => {
          try {
            await api('PATCH', API + '/namespaces/' + encodeURIComponent(u.namespace) + '/pluginupdates/' + encodeURIComponent(u.k8s_name),
              { spec: { decision: 'Dismissed' } }, 'application/merge-patch+json');
            toast('Dismissed');
            refreshPlugins();
          } catch (e) { toast(e.message, true); }
        }, { className: 'small needs-live', ariaLabel: 'Dismiss the update of ' + what }));
        pend.appendChild(li);
      }
      if (!list.length) pend.append(el('li', { className: 'muted', textContent: 'none queued' }));
    } catch (e) { pend.textContent = 'Could not list the queued updates: ' + e.message; }
  }

  function openSettings() {
    $('settings-dialog').showModal();
    refreshGlobal();
    refreshOrgs();
    refreshPlugins();
  }

  // After a reconnect: fetch again what an open dialog shows.
  function refreshOpen() {
    if ($('settings-dialog').open) { refreshGlobal(); refreshOrgs(); refreshPlugins(); }
    if ($('logs-dialog').open) loadLogs();
    refreshSecrets();
    if (window.moleculeTabs) window.moleculeTabs.refresh();
  }

  // ---------------------------------------------------------------- wiring

  function wire() {
    $('nodes').addEventListener('keydown', onNodeKey);
    $('nodes').addEventListener('focusin', (e) => {
      const n = e.target.closest('.node');
      if (n) { state.focused = n.dataset.id; for (const [k, x] of state.els) x.tabIndex = k === n.dataset.id ? 0 : -1; }
    });
    $('nodes').addEventListener('pointerdown', onPointerDown);
    $('nodes').addEventListener('contextmenu', (e) => {
      const n = e.target.closest('.node');
      if (!n) return;
      e.preventDefault();
      openMenu(n.dataset.id, n, e.clientX, e.clientY);
    });
    $('ctx-menu').addEventListener('keydown', onMenuKey);
    document.addEventListener('pointerdown', (e) => { if (!e.target.closest('#ctx-menu')) closeMenu(); });
    document.addEventListener('keydown', onKey);
    $('btn-import').addEventListener('click', openImport);
    $('btn-settings').addEventListener('click', openSettings);
    $('i-ok').addEventListener('click', () => runImport(false));
    $('i-force').addEventListener('click', () => runImport(true));
    $('l-refresh').addEventListener('click', loadLogs);
    $('g-secret-set').addEventListener('click', async () => {
      const key = $('g-secret-key').value.trim(), value = $('g-secret-value').value;
      if (!key || !value) { toast('Give a name and a value', true); return; }
      try {
        await api('PUT', '/settings/secrets', { key, value });
        $('g-secret-key').value = ''; $('g-secret-value').value = '';
        toast('Set ' + key);
        refreshGlobal();
      } catch (e) { toast(e.message, true); }
    });
    $('ws-secret-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const id = state.selected;
      const key = $('ws-secret-key').value.trim(), value = $('ws-secret-value').value;
      try {
        await api('PUT', '/workspaces/' + id + '/secrets', { key, value });
        $('ws-secret-key').value = ''; $('ws-secret-value').value = '';
        toast('Set ' + key + ' (the workspace restarts to pick it up)');
        refreshSecrets();
      } catch (err) { toast(err.message, true); }
    });
    for (const t of document.querySelectorAll('#detail [role=tab]')) {
      t.addEventListener('click', () => showTab(t.dataset.pane));
      t.addEventListener('keydown', (e) => {
        if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
        const tabs = [...document.querySelectorAll('#detail [role=tab]')];
        const i = tabs.indexOf(t) + (e.key === 'ArrowRight' ? 1 : -1);
        const next = tabs[(i + tabs.length) % tabs.length];
        showTab(next.dataset.pane);
        next.focus();
      });
    }
    // The login overlay keeps the focus: the page behind it is inert while it shows.
    new MutationObserver(() => {
      const shown = !$('login').hidden;
      $('bar').inert = shown;
      $('main').inert = shown;
      if (shown) $('login-token').focus();
    }).observe($('login'), { attributes: true, attributeFilter: ['hidden'] });
    if (!$('login').hidden) { $('bar').inert = true; $('main').inert = true; $('login-token').focus(); }
  }

  window.moleculeUi = { openLogs, askDelete, renderEvents, openImport, renderPlugins, refreshSecrets, refreshOpen, showTab, deleteOrg, focusNode };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', wire); else wire();
})();
