// Hubflow operator console.
//
// Reads GET /events (server-sent events) with fetch, so the token can go in
// the Authorization header; draws everything with DOM calls and textContent
// (never HTML from data). The token lives in `token` only: no cookie, no
// storage; every control call sends it.
'use strict';

(function () {
  const $ = (id) => document.getElementById(id);

  /** The admin token, once accepted; null: read-only. */
  let token = null;
  /** The newest /status document. */
  let snapshot = null;
  /** Rate history per counter (records/s). */
  const SERIES = ['fetched', 'in_hub', 'landed', 'transformed'];
  const HISTORY = 120;
  const rates = Object.fromEntries(SERIES.map((k) => [k, []]));
  let previous = null; // {ts, progress}
  const collapsed = new Set();
  const rows = new Map(); // path -> row elements
  let treeOrder = '';
  let stream = null; // AbortController of the open /events request
  let retryMs = 500;

  // ---------------------------------------------------------------- helpers

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (k === 'class') node.className = v;
        else if (k === 'text') node.textContent = v;
        else if (k.startsWith('data-')) node.setAttribute(k, v);
        else node[k] = v;
      }
    }
    for (const c of children) node.append(c);
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function fmt(n) {
    if (n === null || n === undefined || Number.isNaN(n)) return '–';
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + 'M';
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + 'k';
    return String(Math.round(n));
  }

  function when(ms) {
    if (!ms) return '';
    try {
      return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
    } catch (e) {
      return String(ms);
    }
  }

  function say(text, kind) {
    const m = $('message');
    m.textContent = text;
    m.className = 'message ' + (kind || 'info');
  }

  function headers(json) {
    const h = {};
    if (token) h.Authorization = 'Bearer ' + token;
    if (json) h['Content-Type'] = 'application/json';
    return h;
  }

  /** A JSON call; resolves to {ok, status, body}. A refused token is said
   * once here for every caller. */
  async function api(method, path, body) {
    let resp;
    try {
      resp = await fetch(path, {
        method,
        headers: headers(body !== undefined),
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch (e) {
      say('cannot reach the admin port: ' + e.message, 'error');
      return { ok: false, status: 0, body: null };
    }
    let parsed = null;
    try {
      parsed = await resp.json();
    } catch (e) {
      parsed = null;
    }
    if (resp.status === 401 || resp.status === 403) {
      refused(parsed);
    }
    return { ok: resp.ok, status: resp.status, body: parsed };
  }

  function errorText(r) {
    const e = r.body && r.body.error;
    return e ? e.code + ': ' + e.message : 'HTTP ' + r.status;
  }

  function refused(body) {
    if (!token) {
      say('this call needs the admin token: enter it above', 'error');
      return;
    }
    const why = body && body.error ? body.error.message : '';
    setAuth('refused');
    say('token refused' + (why ? ' (' + why + ')' : ''), 'error');
  }

  function setAuth(state) {
    const a = $('auth');
    a.dataset.state = state;
    a.textContent = { control: 'control enabled', refused: 'token refused', readonly: 'read-only' }[state];
    a.className = 'badge ' + (state === 'control' ? 'ok' : state === 'refused' ? 'bad' : '');
    for (const b of document.querySelectorAll('button.control')) b.disabled = state !== 'control';
  }

  // ------------------------------------------------------------------ token

  async function useToken() {
    const typed = $('token').value.trim();
    $('token').value = '';
    if (!typed) {
      say('type the admin token first', 'error');
      return;
    }
    const previousToken = token;
    token = typed;
    const r = await api('GET', '/auth/check');
    if (r.ok) {
      setAuth('control');
      say('token accepted: control actions enabled', 'ok');
      connect();
      loadSources();
      loadDlq();
      loadTransform();
    } else {
      token = previousToken && r.status !== 401 ? previousToken : null;
      if (r.status !== 401 && r.status !== 403) {
        setAuth(token ? 'control' : 'readonly');
        say('cannot check the token: ' + errorText(r), 'error');
      }
    }
  }

  function forgetToken() {
    token = null;
    setAuth('readonly');
    say('token forgotten: read-only', 'info');
    connect();
  }

  // ----------------------------------------------------------------- events

  function connect() {
    if (stream) stream.abort();
    const ctrl = new AbortController();
    stream = ctrl;
    read(ctrl).then(
      () => reconnect(ctrl),
      (e) => {
        if (e && e.name === 'AbortError') return;
        reconnect(ctrl);
      },
    );
  }

  function reconnect(ctrl) {
    if (stream !== ctrl) return;
    setConn('disconnected', 'bad');
    setTimeout(() => {
      if (stream === ctrl) connect();
    }, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  }

  function setConn(text, kind) {
    const c = $('conn');
    c.textContent = text;
    c.className = 'badge ' + (kind || '');
  }

  async function read(ctrl) {
    const resp = await fetch('/events', { headers: headers(false), signal: ctrl.signal, cache: 'no-store' });
    if (resp.status === 401 || resp.status === 403) {
      let body = null;
      try {
        body = await resp.json();
      } catch (e) {
        body = null;
      }
      setConn('needs the token', 'bad');
      if (token) refused(body);
      else say('this address needs the admin token even to read: enter it above', 'error');
      // Wait for a token rather than retrying.
      if (stream === ctrl) stream = null;
      return new Promise(() => {});
    }
    if (!resp.ok || !resp.body) throw new Error('HTTP ' + resp.status);
    setConn('live', 'ok');
    retryMs = 500;
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r/g, '');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        handleBlock(block);
      }
    }
  }

  function handleBlock(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (event !== 'status' || data.length === 0) return;
    let doc;
    try {
      doc = JSON.parse(data.join('\n'));
    } catch (e) {
      return;
    }
    onStatus(doc);
  }

  // ----------------------------------------------------------------- status

  function onStatus(doc) {
    snapshot = doc;
    const ready = $('ready');
    ready.textContent = doc.ready ? 'ready' : 'not ready: ' + (doc.not_ready || '');
    ready.className = 'badge ' + (doc.ready ? 'ok' : 'bad');
    const v = doc.versions || {};
    $('versions').textContent = Object.entries(v)
      .map(([k, x]) => k + ' ' + x)
      .join(' · ');
    drawTree(doc.tree);
    drawFlow(doc);
    drawReplays(doc.replays || []);
    drawTransformState(doc.transform || {});
    document.body.dataset.updated = String(doc.ts_ms || Date.now());
  }

  // ------------------------------------------------------------------- tree

  /** As the server's events::STALLED_AFTER_MS. */
  const STALLED_AFTER_MS = 1000;
  const known = new Set();
  /** Groups with more children than this start collapsed (64 partitions). */
  const FOLD_ABOVE = 16;

  function flatten(node, depth, out) {
    if (!known.has(node.path)) {
      known.add(node.path);
      if ((node.children || []).length > FOLD_ABOVE) collapsed.add(node.path);
    }
    out.push({ node, depth });
    if (!collapsed.has(node.path)) {
      for (const c of node.children || []) flatten(c, depth + 1, out);
    }
    return out;
  }

  /** Whether the actor says it is paused (fetchers and consumers report
   * it in their observed state). */
  function isPaused(node) {
    return !!(node.observed && node.observed.paused === true);
  }

  /** The pause badges: ingest (every consumer paused, some, none) and the
   * paused fetchers. */
  function drawPaused(tree) {
    let consumers = 0;
    let pausedConsumers = 0;
    const sources = [];
    (function walk(node) {
      if (node.kind === 'worker' && node.name === 'consumer') {
        consumers += 1;
        if (isPaused(node)) pausedConsumers += 1;
      } else if (node.kind === 'worker' && node.name.startsWith('fetcher-') && isPaused(node)) {
        sources.push(node.name.slice('fetcher-'.length));
      }
      for (const c of node.children || []) walk(c);
    })(tree);
    const state = !consumers || !pausedConsumers ? 'running' : pausedConsumers === consumers ? 'paused' : 'partly paused';
    const b = $('ingest-state');
    b.dataset.state = state;
    b.textContent = 'ingest ' + state;
    b.className = 'badge ' + (state === 'running' ? 'ok' : 'warn');
    $('paused-sources').textContent = sources.length ? 'paused sources: ' + sources.join(', ') : '';
    return state;
  }

  function actionsFor(node) {
    const acts = [];
    if (!node.path.includes('/')) return acts; // the root: drain the node from ctl
    if (node.name.startsWith('fetcher-')) {
      acts.push(['pause', 'Pause'], ['resume', 'Resume']);
    }
    acts.push(['restart', 'Restart'], ['drain', 'Drain'], ['kill', 'Kill']);
    return acts;
  }

  function makeRow(node) {
    const cells = {};
    const tr = el('tr', { 'data-path': node.path });
    const name = el('td', { class: 'name' });
    const toggle = el('button', { type: 'button', class: 'toggle', text: '' });
    toggle.addEventListener('click', () => {
      if (collapsed.has(node.path)) collapsed.delete(node.path);
      else collapsed.add(node.path);
      treeOrder = '';
      if (snapshot) drawTree(snapshot.tree);
    });
    const label = el('span', { class: 'label', text: node.name, title: node.path });
    name.append(toggle, label);
    tr.append(name);
    for (const k of ['state', 'gen', 'restarts', 'queue', 'busy', 'version', 'error']) {
      cells[k] = el('td', { class: k });
      tr.append(cells[k]);
    }
    const actions = el('td', { class: 'actions' });
    for (const [act, text] of actionsFor(node)) {
      const b = el('button', { type: 'button', class: 'control', text, 'data-action': act });
      b.disabled = !token;
      b.addEventListener('click', () => actOn(node.path, node.name, act, b));
      actions.append(b);
    }
    tr.append(actions);
    return { tr, name, toggle, cells };
  }

  /** 'running', 'paused' or 'partly paused' (every consumer or some). */
  let ingestState = 'running';

  function drawTree(tree) {
    if (!tree) return;
    const filter = $('tree-filter').value.trim();
    let list = flatten(tree, 0, []);
    if (filter) list = list.filter(({ node }) => node.path.includes(filter));
    const body = $('tree-body');
    const order = list.map(({ node }) => node.path).join('\n');
    const seen = new Set();
    let running = 0;
    let workers = 0;
    for (const { node, depth } of list) {
      seen.add(node.path);
      let r = rows.get(node.path);
      if (!r) {
        r = makeRow(node);
        rows.set(node.path, r);
      }
      const kids = (node.children || []).length;
      r.toggle.textContent = kids ? (collapsed.has(node.path) ? '▸' : '▾') : '';
      r.toggle.disabled = !kids;
      r.name.className = 'name depth-' + Math.min(depth, 6);
      const stalled = node.stalled_ms >= STALLED_AFTER_MS;
      const paused = isPaused(node);
      // A paused actor still runs (it holds its cursor); it takes no work.
      const state = paused && node.state === 'running' ? 'paused' : node.state;
      setCell(r.cells.state, state, 'state s-' + state);
      r.tr.dataset.state = state;
      setCell(r.cells.gen, String(node.generation));
      setCell(r.cells.restarts, String(node.restarts), node.restarts > 0 ? 'restarts warn' : 'restarts');
      setCell(r.cells.queue, node.kind === 'worker' ? String(node.queue_depth) : '');
      setCell(
        r.cells.busy,
        node.kind !== 'worker' ? '' : stalled ? 'stalled ' + Math.round(node.stalled_ms / 1000) + 's' : node.busy ? 'busy' : 'idle',
        stalled ? 'busy bad' : 'busy',
      );
      setCell(r.cells.version, node.version || '');
      setCell(r.cells.error, node.last_error || '');
      r.cells.error.title = node.last_error || '';
    }
    (function count(node) {
      if (node.kind === 'worker') {
        workers += 1;
        if (node.state === 'running') running += 1;
      }
      for (const c of node.children || []) count(c);
    })(tree);
    if (order !== treeOrder) {
      treeOrder = order;
      for (const [path, r] of rows) if (!seen.has(path)) rows.delete(path);
      clear(body);
      for (const { node } of list) body.append(rows.get(node.path).tr);
    }
    $('tree-summary').textContent = running + ' of ' + workers + ' actors running';
    ingestState = drawPaused(tree);
  }

  function setCell(td, text, cls) {
    if (td.textContent !== text) td.textContent = text;
    if (cls !== undefined && td.className !== cls) td.className = cls;
  }

  async function actOn(path, name, act, button) {
    if (!token) {
      say('enter the admin token to ' + act, 'error');
      return;
    }
    button.disabled = true;
    let r;
    if (act === 'pause' || act === 'resume') {
      r = await api('POST', '/' + act, { source: name.replace(/^fetcher-/, '') });
    } else if (act === 'drain') {
      r = await api('POST', '/drain', { path });
    } else {
      r = await api('POST', '/actors/' + act, { path });
    }
    button.disabled = !token;
    if (r.ok) say(act + ' ' + path + ': done', 'ok');
    else if (r.status !== 401 && r.status !== 403) say(act + ' ' + path + ' failed: ' + errorText(r), 'error');
  }

  async function ingest(act) {
    const r = await api('POST', '/' + act, { ingest: true });
    if (r.ok) say('ingest ' + act + 'd', 'ok');
    else if (r.status !== 401 && r.status !== 403) say('ingest ' + act + ' failed: ' + errorText(r), 'error');
  }

  // ------------------------------------------------------------------- flow

  function drawFlow(doc) {
    const p = doc.progress;
    if (!p) {
      $('totals').textContent = doc.progress_error ? 'progress unavailable: ' + doc.progress_error : '';
      return;
    }
    const ts = doc.ts_ms || Date.now();
    if (previous && ts > previous.ts && previous.progress !== p) {
      const dt = (ts - previous.ts) / 1000;
      if (dt >= 0.5) {
        for (const k of SERIES) {
          const rate = Math.max(0, (p[k] - previous.progress[k]) / dt);
          rates[k].push(rate);
          if (rates[k].length > HISTORY) rates[k].shift();
        }
        previous = { ts, progress: p };
      }
    } else if (!previous) {
      previous = { ts, progress: p };
    }
    for (const k of SERIES) {
      const series = rates[k];
      $('rate-' + k).textContent = series.length ? fmt(series[series.length - 1]) + '/s' : '–';
      spark($('chart-' + k), series);
    }
    $('totals').textContent =
      'fetched ' + fmt(p.fetched) + ' · in hub ' + fmt(p.in_hub) + ' · landed ' + fmt(p.landed) +
      ' · curated ' + fmt(p.transformed) + (p.sources_caught_up ? ' · sources caught up' : '') +
      (ingestState !== 'running' ? ' · ingest ' + ingestState : '');
    drawLag(p.partitions || []);
  }

  function spark(canvas, series) {
    const ctx = canvas.getContext('2d');
    if (!ctx) return;
    const w = canvas.width;
    const h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = '#d8dee9';
    ctx.beginPath();
    ctx.moveTo(0, h - 0.5);
    ctx.lineTo(w, h - 0.5);
    ctx.stroke();
    if (series.length < 2) return;
    const max = Math.max(1, ...series);
    const step = w / (HISTORY - 1);
    const x0 = w - (series.length - 1) * step;
    ctx.beginPath();
    series.forEach((v, i) => {
      const x = x0 + i * step;
      const y = h - 2 - (v / max) * (h - 4);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = '#2b6cb0';
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(w, h);
    ctx.lineTo(x0, h);
    ctx.closePath();
    ctx.fillStyle = 'rgba(43,108,176,0.12)';
    ctx.fill();
  }

  const LAG_ROWS = 12;

  function drawLag(parts) {
    const lagging = parts
      .map((x) => ({
        partition: x.partition,
        in_hub: x.in_hub,
        landing: Math.max(0, x.in_hub - x.landed),
        curating: Math.max(0, x.in_hub - x.transformed),
      }))
      .sort((a, b) => b.curating + b.landing - (a.curating + a.landing) || a.partition - b.partition);
    const body = $('lag-body');
    clear(body);
    for (const x of lagging.slice(0, LAG_ROWS)) {
      body.append(
        el('tr', { 'data-partition': String(x.partition) },
          el('td', { text: 'p' + String(x.partition).padStart(4, '0') }),
          el('td', { text: fmt(x.in_hub) }),
          el('td', { text: fmt(x.landing), class: x.landing ? 'warn' : '' }),
          el('td', { text: fmt(x.curating), class: x.curating ? 'warn' : '' })),
      );
    }
    const rest = lagging.length - LAG_ROWS;
    $('lag-more').textContent = rest > 0 ? rest + ' more partitions (most lagging shown first)' : '';
  }

  // ---------------------------------------------------------------- replays

  function drawReplays(jobs) {
    const body = $('replay-body');
    clear(body);
    for (const j of jobs.slice().reverse()) {
      const done = j.state === 'completed';
      const max = Math.max(1, j.blobs_total);
      const bar = el('progress', { max, value: done ? max : j.blobs_done });
      const pct = j.blobs_total ? Math.round((100 * j.blobs_done) / j.blobs_total) : done ? 100 : 0;
      body.append(
        el('tr', { 'data-replay': String(j.id), 'data-state': j.state },
          el('td', { text: String(j.id) }),
          el('td', { text: String(j.request && j.request.partition) }),
          el('td', { text: j.transform_version || '' }),
          el('td', { text: j.state + (j.error ? ': ' + j.error : ''), class: 'state' + (j.state === 'failed' ? ' bad' : '') }),
          el('td', { class: 'progress' }, bar, el('span', { text: ' ' + j.blobs_done + '/' + j.blobs_total + ' blobs (' + pct + '%)' })),
          el('td', { text: fmt(j.rows) })),
      );
    }
  }

  async function startReplay() {
    const req = { partition: Number($('replay-partition').value || 0) };
    if ($('replay-from').value !== '') req.from_sequence = Number($('replay-from').value);
    if ($('replay-to').value !== '') req.to_sequence = Number($('replay-to').value);
    const r = await api('POST', '/replay', req);
    if (r.ok) {
      $('replays').dataset.last = String(r.body.id);
      say('replay ' + r.body.id + ' started with version ' + r.body.transform_version, 'ok');
    } else if (r.status !== 401 && r.status !== 403) say('replay refused: ' + errorText(r), 'error');
  }

  // -------------------------------------------------------------- transform

  let transformSeq = null;
  /** The end of the probation in the spec log, when one is running. */
  let probationUntil = 0;

  function drawTransformState(t) {
    $('transform-version').textContent = (t.version || '(none)') + ' (seq ' + t.seq + ')';
    const s = $('transform-state');
    const inProbation = probationUntil > Date.now();
    s.textContent = inProbation ? 'probation until ' + when(probationUntil) : t.swapping ? 'swapping' : '';
    s.className = inProbation || t.swapping ? 'badge warn' : 'badge';
    $('transform-drift').textContent = t.drift ? 'differs from the config file (' + t.config_version + ')' : '';
    if (t.seq !== transformSeq) {
      transformSeq = t.seq;
      loadTransform();
    }
  }

  async function loadTransform() {
    const r = await api('GET', '/transform');
    if (!r.ok || !r.body) return;
    const t = r.body;
    const sql = $('transform-sql');
    if (document.activeElement !== sql && !sql.dataset.edited) sql.value = (t.active && t.active.sql) || '';
    const body = $('transform-log-body');
    clear(body);
    const log = t.log;
    const probation = log && log.probation;
    probationUntil = probation ? probation.until_ms : 0;
    for (const e of ((log && log.entries) || []).slice().reverse()) {
      const dry = e.dry_run;
      const dryText = dry ? dry.rows_in + ' → ' + dry.rows_out + ' rows' + (dry.raw_blob ? '' : ' (no raw data yet)') : '';
      const outcome = e.outcome + (log.active === e.seq ? ' (active)' : '');
      body.append(
        el('tr', { 'data-seq': String(e.seq), 'data-version': e.version },
          el('td', { text: String(e.seq) }),
          el('td', { text: e.version }),
          el('td', { text: outcome, class: 'outcome o-' + e.outcome }),
          el('td', { text: e.origin }),
          el('td', { text: e.by }),
          el('td', { text: when(e.at_ms) }),
          el('td', { text: dryText, title: e.error || '' })),
      );
    }
  }

  function showSwap(box, r, what) {
    clear(box);
    if (!r.ok) {
      box.className = 'result bad';
      box.dataset.outcome = 'refused';
      box.append(el('p', { text: what + ' refused: ' + errorText(r) }));
      return;
    }
    const o = r.body || {};
    box.className = 'result ' + (o.outcome === 'promoted' ? 'ok' : 'bad');
    box.dataset.outcome = o.outcome || '';
    box.append(el('p', { class: 'outcome', text: o.outcome + ': ' + (o.version || '') + (o.restored ? ' (restored ' + o.restored + ')' : '') + (o.error ? ' — ' + o.error : '') }));
    const dry = o.dry_run;
    if (dry) {
      box.append(el('p', { text: 'dry run on ' + (dry.raw_blob || 'no raw blob yet (SQL checked only)') + ': ' + dry.rows_in + ' rows in, ' + dry.rows_out + ' out' }));
      for (const [source, cols] of dry.columns || []) {
        box.append(el('p', { class: 'muted', text: source + ': ' + cols.join(', ') }));
      }
    }
  }

  async function swapTransform() {
    const version = $('transform-label').value.trim();
    if (!version) {
      say('give the new version a label', 'error');
      return;
    }
    const sql = $('transform-sql').value.trim();
    const req = { version, probation_secs: Number($('transform-probation').value || 10) };
    if (sql) req.sql = sql;
    const box = $('transform-result');
    clear(box);
    box.className = 'result';
    box.dataset.outcome = 'running';
    box.append(el('p', { text: 'dry run, then swap and probation of ' + req.probation_secs + ' s…' }));
    const r = await api('POST', '/transform', req);
    showSwap(box, r, 'swap');
    delete $('transform-sql').dataset.edited;
    loadTransform();
  }

  // A cell's text: strings as they are, anything else as JSON (never HTML).
  function cellText(v) {
    if (v === undefined || v === null) return '';
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  // Rows (JSON objects) as a table; columns not in `known` are marked.
  function rowsTable(caption, rows, known) {
    const columns = [];
    for (const r of rows) for (const k of Object.keys(r)) if (!columns.includes(k)) columns.push(k);
    const head = el('tr', {}, ...columns.map((c) => el('th', { text: c, class: known && !known.includes(c) ? 'added' : '' })));
    const body = rows.map((r) => el('tr', {}, ...columns.map((c) => el('td', { text: cellText(r[c]), title: cellText(r[c]) }))));
    return el('table', { 'data-side': caption }, el('caption', { text: caption }), el('thead', {}, head), el('tbody', {}, ...body));
  }

  // POST /transform/dry-run: the first rows before and after the SQL,
  // nothing swapped.
  async function dryRunTransform() {
    const sql = $('transform-sql').value.trim();
    const req = { rows: 5 };
    if (sql) req.sql = sql;
    const box = $('transform-result');
    const preview = $('transform-preview');
    clear(box);
    clear(preview);
    box.className = 'result';
    box.dataset.outcome = '';
    preview.dataset.state = 'running';
    box.append(el('p', { text: 'dry run on the newest raw blob…' }));
    const r = await api('POST', '/transform/dry-run', req);
    clear(box);
    if (!r.ok) {
      box.className = 'result bad';
      preview.dataset.state = 'refused';
      box.append(el('p', { text: 'dry run refused: ' + errorText(r) }));
      return;
    }
    const d = r.body;
    box.className = 'result ok';
    box.append(el('p', { text: 'dry run on ' + (d.raw_blob || 'no raw blob yet (SQL checked only)') + ': ' + d.rows_in + ' rows in, ' + d.rows_out + ' out; nothing swapped' }));
    const before = d.before || [];
    const known = before.length ? Object.keys(before[0]) : null;
    preview.append(rowsTable('before (batch)', before, null), rowsTable('after', d.after || [], known));
    preview.dataset.state = 'done';
  }

  async function rollbackTransform() {
    const box = $('transform-result');
    clear(box);
    box.dataset.outcome = 'running';
    box.append(el('p', { text: 'rolling back…' }));
    const r = await api('POST', '/transform/rollback', { probation_secs: Number($('transform-probation').value || 10) });
    showSwap(box, r, 'rollback');
    loadTransform();
  }

  // ---------------------------------------------------------------- sources

  let sources = [];

  async function loadSources() {
    const r = await api('GET', '/sources');
    if (!r.ok || !r.body) return;
    sources = r.body.sources || [];
    const select = $('source-name');
    const chosen = select.value;
    clear(select);
    for (const s of sources) select.append(el('option', { value: s.name, text: s.name }));
    if (chosen) select.value = chosen;
    showSource();
  }

  function showSource() {
    const body = $('source-log-body');
    clear(body);
    const s = sources.find((x) => x.name === $('source-name').value);
    if (!s) {
      $('source-version').textContent = sources.length ? '' : 'no sources on this node';
      delete $('source-version').dataset.version;
      return;
    }
    const version = s.version || '(config)';
    const fixed = s.builtin ? ' (the built-in demo source: cannot be swapped)' : s.durable ? '' : ' (inline secrets: cannot be swapped)';
    $('source-version').textContent = 'running ' + version + fixed;
    $('source-version').dataset.version = version;
    const log = s.log;
    const active = log && (log.entries || []).find((e) => e.seq === log.active);
    const json = $('source-json');
    if (document.activeElement !== json && !json.dataset.edited) {
      json.value = JSON.stringify(active ? active.spec : { name: s.name }, null, 2);
    }
    for (const e of ((log && log.entries) || []).slice().reverse()) {
      body.append(
        el('tr', { 'data-seq': String(e.seq), 'data-version': e.version },
          el('td', { text: String(e.seq) }),
          el('td', { text: e.version }),
          el('td', { text: e.outcome + (log.active === e.seq ? ' (active)' : ''), class: 'outcome o-' + e.outcome }),
          el('td', { text: e.origin }),
          el('td', { text: e.by }),
          el('td', { text: when(e.at_ms) })),
      );
    }
  }

  async function swapSource() {
    const name = $('source-name').value;
    const version = $('source-label').value.trim();
    let source;
    try {
      source = JSON.parse($('source-json').value);
    } catch (e) {
      say('the settings are not JSON: ' + e.message, 'error');
      return;
    }
    if (!name || !version) {
      say('choose a source and give the settings a version label', 'error');
      return;
    }
    const box = $('source-result');
    clear(box);
    box.className = 'result';
    box.dataset.outcome = 'running';
    box.append(el('p', { text: 'swapping ' + name + '…' }));
    const r = await api('POST', '/sources/' + encodeURIComponent(name), {
      version,
      source,
      probation_secs: Number($('source-probation').value || 10),
    });
    showSwap(box, r, 'source swap');
    delete $('source-json').dataset.edited;
    loadSources();
  }

  // ----------------------------------------------------------- dead letters

  async function loadDlq() {
    const q = '/dlq?limit=100' + ($('dlq-pending').checked ? '&pending_only=true' : '');
    const r = await api('GET', q);
    const body = $('dlq-body');
    clear(body);
    if (!r.ok) {
      $('dlq-count').textContent = r.status === 401 ? '' : errorText(r);
      return;
    }
    const letters = r.body.dead_letters || [];
    $('dlq-count').textContent = letters.length + (letters.length === 100 ? '+' : '') + ' dead letters';
    for (const d of letters) {
      const inspect = el('button', { type: 'button', text: 'Inspect', 'data-action': 'inspect' });
      inspect.addEventListener('click', () => inspectDlq(d.id));
      const cell = el('td', { class: 'actions' }, inspect);
      if (d.redrive === 'republish' && !d.redriven_ms) {
        const redrive = el('button', { type: 'button', class: 'control', text: 'Redrive', 'data-action': 'redrive' });
        redrive.disabled = !token;
        redrive.addEventListener('click', () => redriveDlq(d.id));
        cell.append(redrive);
      }
      body.append(
        el('tr', { 'data-id': d.id, 'data-stage': d.stage, 'data-redriven': d.redriven_ms ? 'true' : 'false' },
          el('td', { text: d.id, class: 'id' }),
          el('td', { text: d.stage, class: 'stage' }),
          el('td', { text: d.reason, class: 'reason' }),
          el('td', { text: when(d.created_ms) + (d.redriven_ms ? ' (redriven)' : ''), class: 'created' }),
          cell),
      );
    }
  }

  /** The letter shown by Inspect: {id, stored} (its body as text). */
  let inspected = null;

  async function inspectDlq(id) {
    const r = await api('GET', '/dlq/' + id.split('/').map(encodeURIComponent).join('/'));
    const detail = $('dlq-detail');
    const box = $('dlq-redrive-box');
    detail.dataset.id = id;
    if (!r.ok) {
      detail.textContent = errorText(r);
      inspected = null;
      box.hidden = true;
      return;
    }
    const d = r.body;
    detail.textContent = JSON.stringify(d, null, 2);
    const pending = d.redrive === 'republish' && !d.redriven;
    inspected = pending && !d.body_truncated ? { id, stored: d.body_preview } : null;
    box.hidden = !inspected;
    if (inspected) {
      $('dlq-selected').textContent = id;
      $('dlq-payload').value = d.body_preview;
    }
  }

  /** Redrive `id`; `payload` (an object) replaces the stored body. */
  async function redriveDlq(id, payload) {
    const req = { id };
    if (payload !== undefined) req.payload = payload;
    const r = await api('POST', '/dlq/redrive', req);
    if (r.ok) {
      say('redriven ' + id + ' to partition ' + r.body.partition + (r.body.payload_replaced ? ' (corrected payload)' : ''), 'ok');
      if (inspected && inspected.id === id) {
        inspected = null;
        $('dlq-redrive-box').hidden = true;
        inspectDlq(id);
      }
    } else if (r.status !== 401 && r.status !== 403) say('redrive failed: ' + errorText(r), 'error');
    loadDlq();
  }

  function redriveInspected() {
    if (!inspected) return;
    const text = $('dlq-payload').value.trim();
    if (text === inspected.stored.trim()) {
      redriveDlq(inspected.id);
      return;
    }
    let payload;
    try {
      payload = JSON.parse(text);
    } catch (e) {
      say('the payload is not JSON: ' + e.message, 'error');
      return;
    }
    if (payload === null || typeof payload !== 'object' || Array.isArray(payload)) {
      say('the payload must be a JSON object', 'error');
      return;
    }
    redriveDlq(inspected.id, payload);
  }

  // ------------------------------------------------------------------ start

  function start() {
    $('token-use').addEventListener('click', useToken);
    $('token').addEventListener('keydown', (e) => {
      if (e.key === 'Enter') useToken();
    });
    $('token-forget').addEventListener('click', forgetToken);
    $('tree-filter').addEventListener('input', () => {
      treeOrder = '';
      if (snapshot) drawTree(snapshot.tree);
    });
    $('ingest-pause').addEventListener('click', () => ingest('pause'));
    $('ingest-resume').addEventListener('click', () => ingest('resume'));
    $('transform-sql').addEventListener('input', () => {
      $('transform-sql').dataset.edited = '1';
    });
    $('transform-dry-run').addEventListener('click', dryRunTransform);
    $('transform-swap').addEventListener('click', swapTransform);
    $('transform-rollback').addEventListener('click', rollbackTransform);
    $('source-name').addEventListener('change', () => {
      delete $('source-json').dataset.edited;
      showSource();
    });
    $('source-swap').addEventListener('click', swapSource);
    $('source-json').addEventListener('input', () => {
      $('source-json').dataset.edited = '1';
    });
    $('dlq-refresh').addEventListener('click', loadDlq);
    $('dlq-pending').addEventListener('change', loadDlq);
    $('dlq-redrive').addEventListener('click', redriveInspected);
    $('replay-start').addEventListener('click', startReplay);
    setAuth('readonly');
    connect();
    loadSources();
    loadDlq();
  }

  start();
})();
