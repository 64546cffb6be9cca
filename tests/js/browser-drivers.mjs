// The two real browsers the dev page's checks (browser.mjs) run in, behind one small interface:
//
// - chromium: Debian's /usr/bin/chromium, driven by the pinned playwright-core (CDP);
// - firefox: Debian's /usr/bin/firefox-esr, driven by the pinned puppeteer-core over WebDriver
//   BiDi (Firefox's own remote protocol; playwright-core drives only its patched Firefox build,
//   which cannot be downloaded here, while puppeteer-core speaks BiDi to a stock Firefox).
//
// A driver: `open(name, viewport, errors)` → a page with fill, click, press, key, focus,
// waitFor(fn, arg, ms), evaluate(fn, arg), $$eval(sel, fn), waitForSelector(sel),
// screenshot(path); `close()`; `version`. Console errors and page errors land in `errors`.

export async function driver(name) {
  if (name === 'chromium') return chromium();
  if (name === 'firefox') return firefox();
  throw new Error(`unknown BROWSER ${name} (chromium or firefox)`);
}

async function chromium() {
  const { chromium: pw } = await import('playwright-core');
  const browser = await pw.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  return {
    name: 'chromium',
    version: `chromium ${browser.version()} (playwright-core)`,
    async open(who, viewport, errors) {
      const context = await browser.newContext({ viewport });
      const page = await context.newPage();
      page.on('console', (m) => { if (m.type() === 'error') errors.push(`${who}: console: ${m.text()}`); });
      page.on('pageerror', (e) => errors.push(`${who}: ${e.message}`));
      return {
        goto: (url) => page.goto(url),
        fill: (sel, v) => page.fill(sel, v),
        click: (sel) => page.click(sel),
        press: (sel, key) => page.press(sel, key),
        key: (key) => page.keyboard.press(key),
        focus: (sel) => page.focus(sel),
        waitFor: (fn, arg, timeout = 15_000) => page.waitForFunction(fn, arg, { timeout }),
        evaluate: (fn, arg) => page.evaluate(fn, arg),
        $$eval: (sel, fn) => page.$$eval(sel, fn),
        waitForSelector: (sel) => page.waitForSelector(sel),
        screenshot: (path) => page.screenshot({ path, fullPage: true }),
      };
    },
    close: () => browser.close(),
  };
}

async function firefox() {
  const { default: puppeteer } = await import('puppeteer-core');
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: process.env.FIREFOX || '/usr/bin/firefox-esr',
    headless: true,
    // No updates, telemetry or first-run pages in a test profile.
    extraPrefsFirefox: {
      'app.update.enabled': false,
      'browser.shell.checkDefaultBrowser': false,
      'datareporting.policy.dataSubmissionEnabled': false,
      'toolkit.telemetry.reportingpolicy.firstRun': false,
    },
  });
  return {
    name: 'firefox',
    version: `${await browser.version()} (puppeteer-core, WebDriver BiDi)`,
    async open(who, viewport, errors) {
      const context = await browser.createBrowserContext();
      const page = await context.newPage();
      await page.setViewport(viewport);
      page.on('console', (m) => { if (m.type() === 'error') errors.push(`${who}: console: ${m.text()}`); });
      page.on('pageerror', (e) => errors.push(`${who}: ${e.message}`));
      // Typed like a person: focus, clear (with an input event, as the filters listen for it), type.
      const fill = async (sel, v) => {
        await page.$eval(sel, (e) => { e.value = ''; e.dispatchEvent(new Event('input', { bubbles: true })); });
        if (v) await page.type(sel, v);
      };
      // A real pointer click at the element (scrolled into view): puppeteer's ElementHandle
      // click over BiDi took longer with every call here (0.9 s, then 1.5, 4, 7.6, 16, 31 s).
      const click = async (sel) => {
        const at = await page.$eval(sel, (e) => {
          e.scrollIntoView({ block: 'center' });
          const b = e.getBoundingClientRect();
          return { x: b.x + Math.min(b.width / 2, 20), y: b.y + b.height / 2 };
        });
        await page.mouse.click(at.x, at.y);
      };
      return {
        goto: (url) => page.goto(url),
        fill,
        click,
        press: async (sel, key) => { await page.focus(sel); await page.keyboard.press(key); },
        key: (key) => page.keyboard.press(key),
        focus: (sel) => page.focus(sel),
        waitFor: (fn, arg, timeout = 15_000) => page.waitForFunction(fn, { timeout, polling: 100 }, arg),
        evaluate: (fn, arg) => page.evaluate(fn, arg),
        $$eval: (sel, fn) => page.$$eval(sel, fn),
        waitForSelector: (sel) => page.waitForSelector(sel),
        screenshot: (path) => page.screenshot({ path, fullPage: true }),
      };
    },
    close: () => browser.close(),
  };
}
