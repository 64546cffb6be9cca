// The dev page in a real headless browser — BROWSER=chromium (Debian's /usr/bin/chromium,
// playwright-core) or BROWSER=firefox (Debian's /usr/bin/firefox-esr, puppeteer-core over
// WebDriver BiDi); see browser-drivers.mjs. Two users chat in one room, the inspector shows their
// webhooks, a replay gets the "duplicate" answer, the service view sends to the room, a request
// without the token is refused, no console errors, phone and desktop widths.
// MODE=emulator (`hubhook dev` with its own emulator: the Service view lists its connections) or
// MODE=tunnel (`hubhook dev` tunnelling another service, RESOURCE its endpoint: the same
// inspector shows the tunnelled webhooks, the Service view the tunnel, reconnects included).
// Screenshots of each view go to $SHOTS, names prefixed with $PREFIX. Input: DEV_URL (the URL
// `hubhook dev` printed). Output: one JSON line, {"ok": true, ...} or {"ok": false, "error"}.
import { mkdirSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { driver } from './browser-drivers.mjs';

const devUrl = process.env.DEV_URL;
const shots = process.env.SHOTS || 'target/browser';
const prefix = process.env.PREFIX || '';
const mode = process.env.MODE || 'emulator';
const watchdog = setTimeout(() => finish({ ok: false, error: 'watchdog: still running after 80 s' }), 80_000);
let browser;

function finish(result) {
  clearTimeout(watchdog);
  console.log(JSON.stringify(result));
  const close = browser ? Promise.resolve(browser.close()).catch(() => {}) : Promise.resolve();
  close.then(() => process.exit(result.ok ? 0 : 1));
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

// A raw request (custom Host header), for the refusals.
function raw(path, headers = {}) {
  const u = new URL(devUrl);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path, headers }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body: body.trim() }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function user(name, room, viewport, errors) {
  const page = await browser.open(name, viewport, errors);
  await page.goto(devUrl);
  // The page's start-up (token check, info) is done when the room has its default.
  await page.waitFor(() => document.querySelector('#room').value !== '');
  await page.fill('#user', name);
  await page.fill('#room', room);
  await page.key('Tab');
  await page.click('#connect');
  await page.waitFor(() => /Connected as/.test(document.querySelector('#chat-status').textContent));
  return page;
}

const lines = (page) => page.$$eval('#messages li', (lis) => lis.map((li) => li.textContent));
async function sees(page, text) {
  await page.waitFor((t) => [...document.querySelectorAll('#messages li')].some((li) => li.textContent.includes(t)), text, 15_000)
    .catch(async () => { throw new Error(`${text} not seen; messages: ${JSON.stringify(await lines(page))}`); });
}

async function main() {
  check(devUrl && devUrl.includes('#token='), `DEV_URL is not a dev-page URL: ${devUrl}`);
  mkdirSync(shots, { recursive: true });
  const token = devUrl.split('#token=')[1];
  const base = new URL(devUrl);
  const host = `${base.hostname}:${base.port}`;

  // Refusals: no token, wrong token, another Origin, a DNS-rebound Host.
  const noToken = await raw('/ui/api/webhooks');
  check(noToken.status === 401 && /token/.test(noToken.body), `no token: ${JSON.stringify(noToken)}`);
  const wrong = await raw('/ui/api/webhooks', { 'x-hubhook-token': 'nope' });
  check(wrong.status === 401, `wrong token: ${wrong.status}`);
  const origin = await raw('/ui/api/webhooks', { 'x-hubhook-token': token, origin: 'http://evil.example' });
  check(origin.status === 403, `foreign Origin: ${origin.status}`);
  const rebound = await raw('/', { host: `evil.example:${base.port}` });
  check(rebound.status === 403, `rebound Host: ${rebound.status}`);
  const ok = await raw('/ui/api/webhooks', { 'x-hubhook-token': token, host });
  check(ok.status === 200, `with the token: ${ok.status}`);

  browser = await driver(process.env.BROWSER || 'chromium');
  const errors = [];
  const room = `browser-${Date.now().toString(36)}`;
  const alice = await user('alice', room, { width: 1280, height: 860 }, errors);
  const bob = await user('bob', room, { width: 390, height: 844 }, errors);

  // Both see bob's join notice, then both messages.
  await sees(alice, `bob joined ${room}`);
  await sees(bob, `bob joined ${room}`);
  await alice.fill('#text', 'hello from alice');
  await alice.press('#text', 'Enter');
  await sees(bob, 'hello from alice');
  await bob.fill('#text', 'hi from bob');
  await bob.click('#send-btn');
  for (const p of [alice, bob]) {
    await sees(p, 'hello from alice');
    await sees(p, 'hi from bob');
  }
  await alice.screenshot(`${shots}/${prefix}chat-alice.png`);
  await bob.screenshot(`${shots}/${prefix}chat-bob-phone.png`);

  // Inspector: alice's webhooks in order, with the right details.
  const aliceConn = await alice.evaluate(() => chat.connectionId);
  check(aliceConn, 'alice has no connection id');
  await alice.click('#tab-inspector');
  await alice.fill('#filter-conn', aliceConn);
  await alice.waitFor(() => [...document.querySelectorAll('#hooks tbody tr')].some((r) => r.dataset.event === 'message'));
  const rows = await alice.$$eval('#hooks tbody tr', (trs) => trs.map((r) => ({ id: Number(r.dataset.id), event: r.dataset.event, status: r.dataset.status, text: r.textContent })));
  const oldestFirst = [...rows].reverse();
  const events = oldestFirst.map((r) => r.event);
  check(JSON.stringify(events.slice(0, 3)) === JSON.stringify(['connect', 'connected', 'message']), `alice's webhooks: ${JSON.stringify(oldestFirst)}`);
  check(oldestFirst.every((r) => r.status === '200'), `statuses: ${JSON.stringify(oldestFirst)}`);
  check(rows.every((r) => r.text.includes('alice')), `user column: ${JSON.stringify(rows)}`);
  const message = oldestFirst[2];
  await alice.click(`#hooks tbody tr[data-id="${message.id}"]`);
  await alice.waitForSelector('#detail:not([hidden])');
  const detail = await alice.evaluate(() => ({
    title: document.querySelector('#detail-title').textContent,
    url: document.querySelector('#req-url').textContent,
    sig: document.querySelector('#sig').textContent,
    req: document.querySelector('#req-body').textContent,
    resp: document.querySelector('#resp-body').textContent,
    status: document.querySelector('#resp-status').textContent,
  }));
  check(detail.sig === 'verified', `signature: ${detail.sig}`);
  check(/POST http:\/\/127\.0\.0\.1:\d+\/eventhandler/.test(detail.url), `url: ${detail.url}`);
  check(detail.req.includes('"text": "hello from alice"'), `request body not pretty JSON: ${detail.req}`);
  check(detail.status === '200' && /"type": "stored"/.test(detail.resp) && !/duplicate/.test(detail.resp), `response: ${detail.status} ${detail.resp}`);

  // Replay: the same delivery again, re-signed: the handler answers "duplicate".
  await alice.click('#replay');
  await alice.waitFor(() => /replay of/.test(document.querySelector('#detail-title').textContent));
  const replayed = await alice.evaluate(() => ({
    title: document.querySelector('#detail-title').textContent,
    resp: document.querySelector('#resp-body').textContent,
    status: document.querySelector('#resp-status').textContent,
    sig: document.querySelector('#sig').textContent,
  }));
  check(replayed.title.includes(`replay of #${message.id}`), `replay title: ${replayed.title}`);
  check(replayed.status === '200' && /"duplicate": true/.test(replayed.resp) && replayed.sig === 'verified', `replay: ${JSON.stringify(replayed)}`);
  await alice.screenshot(`${shots}/${prefix}inspector.png`);
  // The replay stored nothing new: bob sees the message once.
  const bobLines = await lines(bob);
  check(bobLines.filter((l) => l.includes('hello from alice')).length === 1, `bob's messages: ${JSON.stringify(bobLines)}`);

  // Service: with the emulator, both connections in the room; with a tunnel, the tunnel's state
  // (the resource's endpoint without its key, the hub, connected, the reconnects the test made).
  // Either way "send to room" (the service's REST API) reaches both chats.
  await alice.click('#tab-service');
  let tunnel = null;
  if (mode === 'tunnel') {
    await alice.waitFor(() => document.querySelector('#t-state').textContent === 'connected');
    tunnel = await alice.evaluate(() => ({
      emulatorView: !document.querySelector('#svc-emulator').hidden,
      endpoint: document.querySelector('#t-endpoint').textContent,
      hub: document.querySelector('#t-hub').textContent,
      reconnects: Number(document.querySelector('#t-reconnects').textContent),
      log: [...document.querySelectorAll('#t-log li')].map((li) => li.dataset.kind),
      pill: document.querySelector('#tunnel-pill').textContent,
      pillShown: !document.querySelector('#tunnel-pill').hidden,
    }));
    const want = Number(process.env.RECONNECTS || '0');
    check(!tunnel.emulatorView, 'the emulator view is shown in tunnel mode');
    check(tunnel.endpoint === process.env.RESOURCE && !/AccessKey|access_token/i.test(tunnel.endpoint), `endpoint: ${tunnel.endpoint}`);
    check(tunnel.hub === 'chat', `hub: ${tunnel.hub}`);
    check(tunnel.reconnects === want && tunnel.log.filter((k) => k === 'moved').length === want, `reconnects: ${JSON.stringify(tunnel)}`);
    check(tunnel.pillShown && tunnel.pill.startsWith('tunnel connected') && (want === 0 || tunnel.pill.includes(`${want} reconnect`)), `header: ${tunnel.pill}`);
    // Live: the test moves the tunnel again while this page is open (it waits for this file);
    // the header and the Service view follow without a reload.
    if (process.env.RECONNECT_SIGNAL) {
      writeFileSync(process.env.RECONNECT_SIGNAL, 'ready\n');
      await alice.waitFor((n) => {
        const pill = document.querySelector('#tunnel-pill').textContent;
        return pill.startsWith('tunnel connected') && pill.includes(`${n} reconnects`)
          && document.querySelectorAll('#t-log li[data-kind="moved"]').length === n;
      }, want + 1, 20_000);
      tunnel.liveReconnects = Number(await alice.evaluate(() => document.querySelector('#t-reconnects').textContent));
    }
  } else {
    check(await alice.evaluate(() => document.querySelector('#tunnel-pill').hidden), 'a tunnel pill without a tunnel');
    await alice.waitFor((r) => {
      const text = document.querySelector('#conns tbody').textContent;
      return text.includes('alice') && text.includes('bob') && text.includes(r);
    }, room);
  }
  await alice.fill('#b-room', room);
  await alice.fill('#b-text', 'server says hi');
  await alice.click('#broadcast button');
  await alice.waitFor(() => /Sent to room/.test(document.querySelector('#b-status').textContent));
  await alice.screenshot(`${shots}/${prefix}service.png`);
  await sees(bob, 'server says hi');
  await sees(alice, 'server says hi');

  // Leaving: alice sees bob leave; the inspector gets bob's disconnected webhook.
  await bob.click('#leave');
  await sees(alice, `bob left ${room}`);
  await alice.click('#tab-inspector');
  await alice.fill('#filter-conn', '');
  await alice.fill('#filter-event', 'disconnected');
  await alice.waitForSelector('#hooks tbody tr[data-event="disconnected"]');

  // Keyboard: the tabs answer the arrow keys.
  await alice.focus('#tab-inspector');
  await alice.key('ArrowRight');
  check(await alice.evaluate(() => document.activeElement.id === 'tab-service' && !document.querySelector('#view-service').hidden), 'ArrowRight did not move to the Service tab');
  await alice.key('ArrowLeft');
  await alice.key('ArrowLeft');
  check(await alice.evaluate(() => !document.querySelector('#view-chat').hidden), 'ArrowLeft did not reach the Chat tab');

  check(errors.length === 0, `console errors: ${JSON.stringify(errors)}`);
  return { ok: true, browser: browser.version, mode, room, webhooks: events, tunnel, screenshots: shots };
}

main().then(finish, (e) => finish({ ok: false, error: e.message }));
