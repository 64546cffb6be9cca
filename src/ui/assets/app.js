// hubhook dev page: chat client, live webhook inspector, the emulator's connections (or, against
// a real resource, the tunnel's state: connected or reconnecting, every drop and move).
// Plain browser JavaScript, compiled into the binary: no CDN, no build step.
//
// The chat speaks the `json.webpubsub.azure.v1` subprotocol over a plain WebSocket rather than
// bundling @azure/web-pubsub-client: the SDK ships as npm modules that need a bundler (a build
// step), and its reliable protocol and automatic reconnects would hide exactly what this page
// is for — every join, leave and message as the service and the handler see it. Five frame
// types (joinGroup is not even needed: the handler puts the connection in its room) fit here.
'use strict';

const $ = (sel) => document.querySelector(sel);
const token = (() => {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) sessionStorage.setItem('hubhook-token', decodeURIComponent(m[1]));
  return sessionStorage.getItem('hubhook-token') || '';
})();

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ''));
  return e;
}

function banner(text) {
  const b = $('#banner');
  b.textContent = text;
  b.hidden = !text;
}

// The page's own API: every call carries the per-run token.
async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { 'x-hubhook-token': token, ...(opts.headers || {}) } });
  if (r.status === 401 || r.status === 403) {
    banner(`${(await r.text()).trim()}`);
    throw new Error(`refused: ${r.status}`);
  }
  return r;
}

// ---------------------------------------------------------------- tabs
const tabs = ['chat', 'inspector', 'service'];
function show(name, focus) {
  for (const t of tabs) {
    const on = t === name;
    const tab = $(`#tab-${t}`);
    tab.setAttribute('aria-selected', String(on));
    tab.tabIndex = on ? 0 : -1;
    $(`#view-${t}`).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (name === 'service') service.start(); else service.stop();
}
for (const t of tabs) {
  const tab = $(`#tab-${t}`);
  tab.addEventListener('click', () => show(t));
  tab.addEventListener('keydown', (e) => {
    const i = tabs.indexOf(t);
    const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (next === undefined) return;
    e.preventDefault();
    show(tabs[(next + tabs.length) % tabs.length], true);
  });
}

// ---------------------------------------------------------------- chat
const chat = {
  ws: null, user: '', room: '', connectionId: '', ackId: 0, next: null, seen: new Set(),

  status(text) { $('#chat-status').textContent = text; },

  // One line in the log; `older` lines go to the top (history), live ones to the bottom.
  line(cls, parts, older) {
    const list = $('#messages');
    const li = el('li', { class: cls }, ...parts);
    if (older) list.prepend(li); else list.append(li);
    if (!older) li.scrollIntoView({ block: 'nearest' });
    return li;
  },

  message(m, older) {
    if (m.id && this.seen.has(m.id)) return; // the outbox delivers at least once
    if (m.id) this.seen.add(m.id);
    const mine = m.from === this.user;
    this.line(mine ? 'msg mine' : 'msg', [
      el('span', { class: 'who' }, m.from || '(anonymous)'), m.text, el('time', { class: 'at', datetime: m.at }, when(m.at)),
    ], older);
  },

  notice(n) {
    if (n.id && this.seen.has(n.id)) return;
    if (n.id) this.seen.add(n.id);
    const verb = n.type === 'joined' ? 'joined' : 'left';
    this.line('notice', [`${n.userId || n.connectionId} ${verb} ${n.room}`, el('time', { class: 'at' }, when(n.at))]);
  },

  async connect(user, room) {
    this.user = user; this.room = room;
    this.status('Negotiating…');
    const q = new URLSearchParams({ userId: user, room });
    const r = await fetch(`/negotiate?${q}`);
    if (!r.ok) { this.status(`negotiate refused: ${r.status} ${(await r.text()).trim()}`); return; }
    const { url } = await r.json();
    const ws = new WebSocket(url, 'json.webpubsub.azure.v1');
    this.ws = ws;
    this.status('Connecting…');
    setJoined(true);
    ws.onmessage = (e) => this.frame(JSON.parse(e.data));
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      setJoined(false);
      this.status(`Disconnected (${e.code}${e.reason ? `: ${e.reason}` : ''}).`);
      this.line('notice', [`you left ${room}`]);
    };
  },

  frame(f) {
    if (f.type === 'system' && f.event === 'connected') {
      this.connectionId = f.connectionId;
      this.status(`Connected as ${f.userId} in room ${this.room} (connection ${f.connectionId}).`);
      $('#text').focus();
      this.history(false);
    } else if (f.type === 'system' && f.event === 'disconnected') {
      this.status(`Closed by the service: ${f.message || ''}`);
    } else if (f.type === 'message' && f.from === 'group') {
      const d = f.data || {};
      if (d.type === 'message') this.message(d);
      else if (d.type === 'joined' || d.type === 'left') this.notice(d);
      else if (d.type === 'server') this.line('server', [el('span', { class: 'who' }, 'server'), d.text, el('time', { class: 'at' }, when(d.at))]);
      else this.line('notice', [JSON.stringify(d)]);
    } else if (f.type === 'message' && f.from === 'server') {
      // The handler's answer to our `message` event ("stored"): nothing to show.
    } else if (f.type === 'ack' && !f.success) {
      this.line('error', [`not sent: ${f.error ? `${f.error.name}: ${f.error.message}` : 'refused'}`]);
    }
  },

  send(text) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify({ type: 'event', event: 'message', dataType: 'json', data: { text }, ackId: ++this.ackId }));
    return true;
  },

  // Newest first from the API; `older` pages go above what is shown.
  async history(older) {
    const q = new URLSearchParams({ room: this.room, limit: '20' });
    if (older && this.next) q.set('before', this.next);
    const r = await fetch(`/api/messages?${q}`);
    if (!r.ok) { this.line('error', [`history: ${r.status}`]); return; }
    const page = await r.json();
    if (older) for (const m of page.messages) this.message(m, true);
    else for (const m of [...page.messages].reverse()) this.message(m, false);
    this.next = page.next || null;
    $('#older').hidden = !this.next;
  },
};

function when(at) {
  const d = at ? new Date(at) : new Date();
  return isNaN(d) ? '' : d.toLocaleTimeString();
}

function setJoined(on) {
  $('#connect').disabled = on; $('#leave').disabled = !on;
  $('#user').disabled = on; $('#room').disabled = on;
  $('#text').disabled = !on; $('#send-btn').disabled = !on;
}

$('#user').value = sessionStorage.getItem('hubhook-user') || `user-${Math.random().toString(36).slice(2, 6)}`;
$('#join').addEventListener('submit', (e) => {
  e.preventDefault();
  const user = $('#user').value.trim(), room = $('#room').value.trim();
  sessionStorage.setItem('hubhook-user', user);
  $('#messages').replaceChildren(); chat.seen.clear(); chat.next = null;
  chat.connect(user, room).catch((err) => { chat.status(`cannot connect: ${err.message}`); setJoined(false); });
});
$('#leave').addEventListener('click', () => chat.ws && chat.ws.close(1000, 'left'));
$('#send').addEventListener('submit', (e) => {
  e.preventDefault();
  const t = $('#text');
  if (t.value.trim() && chat.send(t.value)) t.value = '';
});
$('#older').addEventListener('click', () => chat.history(true));

// ---------------------------------------------------------------- inspector
const inspector = {
  hooks: [], selected: null,

  failed(h) { return h.status === null || h.status === undefined || h.status >= 400 || h.verified === false; },

  visible() {
    const ev = $('#filter-event').value.trim().toLowerCase();
    const conn = $('#filter-conn').value.trim().toLowerCase();
    return this.hooks.filter((h) => (!ev || h.event.toLowerCase().includes(ev))
      && (!conn || h.connectionId.toLowerCase().includes(conn)));
  },

  render() {
    const rows = this.visible().map((h) => {
      const open = () => this.open(h.id);
      return el('tr', {
        class: [this.failed(h) ? 'fail' : '', h.replayOf ? 'replay' : '', h.id === this.selected ? 'selected' : ''].join(' ').trim() || null,
        'data-id': h.id, 'data-event': h.event, 'data-status': h.status ?? 'failed', onclick: open,
      },
      el('td', {}, el('button', { class: 'rowbtn', type: 'button', 'aria-label': `webhook ${h.id}: ${h.event} ${h.status ?? 'failed'}` }, new Date(h.at).toLocaleTimeString())),
      el('td', {}, h.event),
      el('td', { title: h.connectionId }, short(h.connectionId)),
      el('td', { class: 'col-user' }, h.userId || ''),
      el('td', {}, h.status ?? `failed${h.error ? `: ${h.error}` : ''}`),
      el('td', { class: 'col-ms' }, h.ms.toFixed(1)));
    });
    $('#hooks tbody').replaceChildren(...rows);
    $('#hooks-empty').hidden = this.hooks.length > 0;
    $('#hook-count').textContent = this.hooks.length;
  },

  add(h) {
    if (this.hooks.some((x) => x.id === h.id)) return;
    this.hooks.unshift(h);
    if (this.hooks.length > 1000) this.hooks.length = 1000;
    this.render();
  },

  async load() {
    const r = await api('/ui/api/webhooks');
    this.hooks = await r.json();
    this.render();
  },

  live() {
    const es = new EventSource(`/ui/api/webhooks/live?token=${encodeURIComponent(token)}`);
    es.addEventListener('webhook', (e) => this.add(JSON.parse(e.data)));
    es.addEventListener('lagged', () => this.load());
    es.addEventListener('tunnel', (e) => tunnel.render(JSON.parse(e.data)));
    es.onopen = () => { $('#live').classList.remove('off'); $('#live').textContent = '● live'; };
    es.onerror = () => { $('#live').classList.add('off'); $('#live').textContent = '○ reconnecting'; };
  },

  open(id) {
    const h = this.hooks.find((x) => x.id === id);
    if (!h) return;
    this.selected = id;
    this.render();
    $('#detail').hidden = false;
    $('#detail-title').textContent = `#${h.id} ${h.event}${h.replayOf ? ` (replay of #${h.replayOf})` : ''}`;
    $('#detail-meta').textContent = `${h.at} · hub ${h.hub} · connection ${h.connectionId}${h.userId ? ` · user ${h.userId}` : ''} · ${h.ms.toFixed(1)} ms${h.attempt > 1 ? ` · attempt ${h.attempt}` : ''}`;
    const req = h.request;
    $('#req-url').textContent = req ? `${req.method || 'POST'} ${req.url || '(no upstream URL)'}` : `no request sent: ${h.error || ''}`;
    const sig = $('#sig');
    sig.textContent = h.verified === true ? 'verified' : h.verified === false ? 'NOT verified' : 'none';
    sig.className = `badge ${h.verified ? 'ok' : 'bad'}`;
    $('#req-headers').replaceChildren(...kv(req ? req.headers : []));
    $('#req-body').textContent = req ? pretty(req.body) : '';
    const rs = $('#resp-status');
    rs.textContent = h.status ?? `failed${h.error ? `: ${h.error}` : ''}`;
    rs.className = `badge ${this.failed(h) ? 'bad' : 'ok'}`;
    $('#resp-headers').replaceChildren(...kv(h.response ? h.response.headers : []));
    $('#resp-body').textContent = h.response ? pretty(h.response.body) || '(empty body)' : '(no answer)';
    $('#replay').disabled = !req;
  },

  async replay() {
    if (this.selected === null) return;
    const r = await api(`/ui/api/webhooks/${this.selected}/replay`, { method: 'POST' });
    if (!r.ok) { banner((await r.text()).trim()); return; }
    const h = await r.json();
    this.add(h);
    this.open(h.id);
  },
};

function short(id) { return id.length > 14 ? `${id.slice(0, 6)}…${id.slice(-6)}` : id; }
function pretty(body) {
  try { return JSON.stringify(JSON.parse(body), null, 2); } catch { return body; }
}
function kv(pairs) { return pairs.map(([k, v]) => el('tr', {}, el('td', {}, k), el('td', {}, v))); }

$('#filter-event').addEventListener('input', () => inspector.render());
$('#filter-conn').addEventListener('input', () => inspector.render());
$('#clear').addEventListener('click', async () => {
  await api('/ui/api/webhooks', { method: 'DELETE' });
  inspector.hooks = []; inspector.selected = null; $('#detail').hidden = true; inspector.render();
});
$('#replay').addEventListener('click', () => inspector.replay());

// ---------------------------------------------------------------- service
const service = {
  timer: null,
  start() { if (!this.timer) { this.refresh(); this.timer = setInterval(() => this.refresh(), 2000); } },
  stop() { clearInterval(this.timer); this.timer = null; },
  async refresh() {
    const r = await api('/ui/api/service');
    if (!r.ok) { $('#conns tbody').replaceChildren(el('tr', {}, el('td', { colspan: 4 }, (await r.text()).trim()))); return; }
    const s = await r.json();
    if (s.mode === 'tunnel') { tunnel.render(s.tunnel); return; }
    $('#conn-count').textContent = s.connections.length;
    $('#conns tbody').replaceChildren(...s.connections.map((c) => el('tr', {},
      el('td', { title: c.connectionId }, c.connectionId), el('td', {}, c.userId || ''),
      el('td', {}, c.groups.join(', ')), el('td', { class: 'col-ms' }, c.subprotocol || 'plain'))));
    $('#groups').replaceChildren(...Object.entries(s.groups).map(([g, members]) =>
      el('li', {}, `${g} — ${members.length} connection${members.length === 1 ? '' : 's'}`)));
  },
};
// ---------------------------------------------------------------- tunnel (a real resource)
// Its state comes with the page's info, then live (the event stream's `tunnel` events). Drops
// and moves stand out: the pill in the header says "reconnecting" on every tab.
const tunnel = {
  render(t) {
    if (!t) return;
    const pill = $('#tunnel-pill');
    const n = t.reconnects;
    pill.hidden = false;
    pill.textContent = `tunnel ${t.state}${n ? ` · ${n} reconnect${n === 1 ? '' : 's'}` : ''}`;
    pill.className = `pill${t.state === 'connected' ? '' : ' warn'}`;
    pill.dataset.state = t.state;
    const badge = $('#t-state');
    badge.textContent = t.state;
    badge.className = `badge ${t.state === 'connected' ? 'ok' : 'warn'}`;
    $('#t-endpoint').textContent = t.endpoint;
    $('#t-hub').textContent = t.hub;
    $('#t-upstream').textContent = t.upstream;
    $('#t-reconnects').textContent = String(n);
    const conns = Object.entries(t.connections);
    $('#t-conns').textContent = conns.length ? conns.map(([id, where]) => `${id} (${where})`).join(', ') : 'none up';
    $('#t-log').replaceChildren(...[...t.log].reverse().map((l) => el('li', { class: l.kind, 'data-kind': l.kind },
      el('time', { datetime: l.at }, when(l.at)), l.text)));
  },
};

$('#broadcast').addEventListener('submit', async (e) => {
  e.preventDefault();
  const room = $('#b-room').value.trim(), text = $('#b-text').value;
  const r = await api('/ui/api/service/send', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ room, text }),
  });
  $('#b-status').textContent = r.ok ? `Sent to room ${room}.` : `Refused: ${(await r.text()).trim()}`;
  if (r.ok) $('#b-text').value = '';
});

// ---------------------------------------------------------------- start
(async () => {
  if (!token) { banner('This page needs the URL `hubhook dev` printed (it ends with #token=…).'); return; }
  const r = await api('/ui/api/info');
  const info = await r.json();
  if (info.mode === 'tunnel') {
    $('#svc-emulator').hidden = true;
    $('#svc-tunnel').hidden = false;
    tunnel.render(info.tunnel);
  }
  $('#room').value = sessionStorage.getItem('hubhook-room') || info.room;
  $('#b-room').value = info.room;
  $('#room').addEventListener('change', () => sessionStorage.setItem('hubhook-room', $('#room').value));
  await inspector.load();
  inspector.live();
})().catch(() => {});
