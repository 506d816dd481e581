// The dashboard in a real browser: Debian's Chromium, driven by playwright-core (never a
// downloaded browser), against the service fed by the exchange simulator. `tests/suite/browser.rs`
// starts the simulator and the service, then runs this script with:
//   BASE_URL     the service, e.g. http://127.0.0.1:8080
//   SERVICE_PID  the service's process: the last check stops it (SIGTERM)
//   PRODUCTS     JSON array of every product id the service lists
//   SCREENSHOTS  directory for one screenshot per check
//   CHROMIUM     the browser (default /usr/bin/chromium)
// Every check waits for a condition with a deadline; none sleeps in its place. The script
// prints one line per check and exits 1 if any failed.

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = process.env.BASE_URL;
const PID = Number(process.env.SERVICE_PID);
const PRODUCTS = JSON.parse(process.env.PRODUCTS ?? '[]');
const SHOTS = process.env.SCREENSHOTS ?? 'target/screenshots';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
if (!BASE || !PID || PRODUCTS.length === 0) {
  console.error('BASE_URL, SERVICE_PID and PRODUCTS are required');
  process.exit(2);
}
mkdirSync(SHOTS, { recursive: true });

const CHART_PRODUCT = PRODUCTS.includes('BTC-USD') ? 'BTC-USD' : PRODUCTS[0];
const results = [];
const consoleErrors = [];
let recordErrors = true;

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  timeout: 120_000,
  args: [
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

function watch(page, label) {
  page.on('console', (message) => {
    if (recordErrors && message.type() === 'error') {
      consoleErrors.push(`${label}: ${message.text()}`);
    }
  });
  page.on('pageerror', (error) => {
    if (recordErrors) consoleErrors.push(`${label}: uncaught ${error.message}`);
  });
}

async function check(name, page, body) {
  const started = Date.now();
  try {
    await body();
    results.push({ name, ok: true });
    console.log(`ok    ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    results.push({ name, ok: false });
    console.log(`FAIL  ${name}: ${error.stack ?? error}`);
  } finally {
    if (page) {
      const file = join(SHOTS, `${name.replace(/[^a-z0-9]+/gi, '-').toLowerCase()}.png`);
      await page.screenshot({ path: file }).catch(() => {});
    }
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits until `fn(arg)` is truthy in the page; returns its value. */
async function until(page, what, fn, arg, timeout = 30_000) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling: 200 });
    return await handle.jsonValue();
  } catch (error) {
    throw new Error(`${what}: not within ${timeout} ms (${error.message.split('\n')[0]})`);
  }
}

const light = await browser.newContext({ viewport: { width: 1280, height: 900 }, colorScheme: 'light' });
// Generous for a loaded 2-core CI.
light.setDefaultNavigationTimeout(120_000);
const board = await light.newPage();
watch(board, 'board');

await check('board loads with every product', board, async () => {
  await board.goto(`${BASE}/?granularity=ONE_MINUTE`);
  await until(board, 'the stream connects', () =>
    document.querySelector('#connection')?.dataset.state === 'live');
  await until(board, 'every row', (n) => document.querySelectorAll('#board-rows .board-row').length === n, PRODUCTS.length);
  const ids = await board.$$eval('#board-rows .board-row', (rows) => rows.map((r) => r.dataset.product));
  assert(JSON.stringify([...ids].sort()) === JSON.stringify([...PRODUCTS].sort()),
    `rows ${ids} are not the products ${PRODUCTS}`);
  assert(await board.isVisible('#simulated-badge'), 'the SIMULATED FEED badge shows');
  assert(await board.isVisible('#feed-health'), 'the feed health panel shows');
});

await check('rows change as the simulator trades', board, async () => {
  const before = await board.$$eval('#board-rows spot-candle', (els) =>
    Object.fromEntries(els.map((e) => [e.dataset.product, e.dataset.version])));
  assert(Object.keys(before).length > 0, 'rows hold candles');
  const want = Math.max(1, Math.min(5, Math.floor(PRODUCTS.length / 2)));
  await until(board, `${want} rows to change`, ([prev, n]) => {
    const now = [...document.querySelectorAll('#board-rows spot-candle')];
    return now.filter((e) => prev[e.dataset.product] !== e.dataset.version).length >= n;
  }, [before, want]);
  // What a row shows is its candle: the last price equals the element's close, exactly.
  const mismatches = await board.$$eval('#board-rows .board-row', (rows) => rows.flatMap((row) => {
    const candle = row.querySelector('spot-candle');
    if (!candle) return [];
    const shown = row.querySelector('[data-field=last]').textContent.replaceAll(',', '').trim();
    return Number(shown) === Number(candle.dataset.close) ? [] : [`${row.dataset.product}: ${shown} vs ${candle.dataset.close}`];
  }));
  // A row may be between its candle's morph and its text's: allow a retry.
  if (mismatches.length > 0) {
    await until(board, `rows to show their close (${mismatches})`, () =>
      [...document.querySelectorAll('#board-rows .board-row')].every((row) => {
        const candle = row.querySelector('spot-candle');
        if (!candle) return true;
        const shown = row.querySelector('[data-field=last]').textContent.replaceAll(',', '').trim();
        return Number(shown) === Number(candle.dataset.close);
      }), undefined, 10_000);
  }
});

await check('switching granularity', board, async () => {
  await board.click('#granularity button[data-granularity=ONE_HOUR]');
  await until(board, 'every row on one-hour candles', (n) => {
    const candles = [...document.querySelectorAll('#board-rows spot-candle')];
    return candles.length === n && candles.every((c) => c.dataset.granularity === 'ONE_HOUR');
  }, PRODUCTS.length);
  assert(new URL(board.url()).searchParams.get('granularity') === 'ONE_HOUR', 'the URL follows');
  assert(await board.$$eval('#board-rows .board-row', (r) => r.length) === PRODUCTS.length, 'every row stays');
  await board.click('#granularity button[data-granularity=ONE_MINUTE]');
  await until(board, 'back on one-minute candles', () =>
    [...document.querySelectorAll('#board-rows spot-candle')].every((c) => c.dataset.granularity === 'ONE_MINUTE'));
});

await check('filtering', board, async () => {
  const visible = () => [...document.querySelectorAll('#board-rows .board-row')]
    .filter((r) => !r.hidden && r.offsetParent !== null).map((r) => r.dataset.product).sort();
  const wanted = PRODUCTS.filter((p) => p.toLowerCase().includes('btc')).sort();
  await board.fill('#filter', 'btc');
  await until(board, 'only the BTC markets', ([w, f]) => JSON.stringify(new Function(`return (${f})()`)()) === JSON.stringify(w),
    [wanted, visible.toString()]);
  await board.fill('#filter', 'no-such-market');
  await until(board, 'the empty note', () => !document.querySelector('#board-empty').hidden);
  await board.fill('#filter', '');
  await until(board, 'every market again', ([n, f]) => new Function(`return (${f})()`)().length === n,
    [PRODUCTS.length, visible.toString()]);
});

await check('sorting by change', board, async () => {
  await board.click('#sort button[data-sort=change24h]');
  await until(board, 'rows in descending 24h change', () => {
    const rows = [...document.querySelectorAll('#board-rows .board-row')]
      .map((r) => ({ order: Number(r.style.order), key: r.dataset.sortChange24h }))
      .sort((a, b) => a.order - b.order)
      .filter((r) => r.key !== '')
      .map((r) => Number(r.key));
    return rows.length > 1 && rows.every((k, i) => i === 0 || rows[i - 1] >= k)
      && document.querySelector('spot-board').getAttribute('sort') === 'change24h';
  });
  const first = await board.evaluate(() => [...document.querySelectorAll('#board-rows .board-row')]
    .sort((a, b) => Number(a.style.order) - Number(b.style.order))[0].getBoundingClientRect().top);
  const header = await board.evaluate(() => document.querySelector('.board-head').getBoundingClientRect().bottom);
  assert(first >= header - 1, 'the first row is drawn under the header');
});

const market = await light.newPage();
watch(market, 'market');

/** The chart's last bar and its newest <spot-candle>, read in one go. */
const lastBarAgrees = () => {
  const chart = document.querySelector('spot-chart#chart');
  if (!chart || !chart.ready) return false;
  const candles = [...chart.querySelectorAll('spot-candle')];
  if (candles.length === 0) return false;
  const newest = candles.reduce((a, b) => {
    const ta = Number(a.dataset.timestamp), tb = Number(b.dataset.timestamp);
    return tb > ta || (tb === ta && b.dataset.version > a.dataset.version) ? b : a;
  });
  const bar = chart.lastBar();
  if (!bar) return false;
  const d = newest.dataset;
  return bar.time === Number(d.timestamp) && bar.open === Number(d.open) && bar.high === Number(d.high)
    && bar.low === Number(d.low) && bar.close === Number(d.close) && bar.volume === Number(d.volume)
    && bar.complete === (d.complete === 'true') ? { bar, id: newest.id } : false;
};

await check('the chart draws its history and its last bar is the latest candle', market, async () => {
  await market.goto(`${BASE}/markets/${CHART_PRODUCT}?granularity=ONE_MINUTE`);
  await until(market, 'the stream connects', () => document.querySelector('#connection')?.dataset.state === 'live');
  await until(market, 'a chart with history', () => {
    const chart = document.querySelector('spot-chart#chart');
    return chart?.ready && chart.barCount() > 5 && chart.querySelectorAll('spot-candle').length > 5;
  });
  const { id } = await until(market, 'the last bar equals the newest candle', lastBarAgrees);
  assert(id.startsWith(`${CHART_PRODUCT}-ONE_MINUTE-`), `bucket ids (${id})`);
  // The price scale follows the product's increment, not two decimals.
  const increment = await market.getAttribute('spot-chart#chart', 'data-price-increment');
  assert(increment !== null && increment !== '', 'the chart knows the price increment');
});

await check('the canvas changes as trades arrive', market, async () => {
  const pixels = () => [...document.querySelector('spot-chart#chart').shadowRoot.querySelectorAll('canvas')]
    .map((c) => c.toDataURL()).join('|');
  const before = await market.evaluate(pixels);
  assert(before.length > 1000, 'the chart drew on its canvases');
  await until(market, 'the pixels to change', ([prev, f]) => new Function(`return (${f})()`)() !== prev,
    [before, pixels.toString()], 60_000);
  // And it still agrees with the newest candle after the live updates.
  await until(market, 'the last bar equals the newest candle', lastBarAgrees);
});

await check('switching the chart granularity reloads its history in place', market, async () => {
  await market.evaluate(() => { window.__samePage = true; });
  await market.click('#granularity button[data-granularity=FIVE_MINUTES]');
  await until(market, 'five-minute history', () => {
    const chart = document.querySelector('spot-chart#chart');
    const candles = [...(chart?.querySelectorAll('spot-candle') ?? [])];
    return chart?.dataset.granularity === 'FIVE_MINUTES' && candles.length > 0
      && candles.every((c) => c.dataset.granularity === 'FIVE_MINUTES') && chart.barCount() > 0;
  });
  await until(market, 'the last bar equals the newest candle', lastBarAgrees);
  assert(await market.evaluate(() => window.__samePage === true), 'no page reload');
  assert(new URL(market.url()).searchParams.get('granularity') === 'FIVE_MINUTES', 'the URL follows');
});

const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, colorScheme: 'dark', isMobile: true });
phone.setDefaultNavigationTimeout(120_000);
for (const [label, path] of [['board', '/'], ['market', `/markets/${CHART_PRODUCT}`]]) {
  const page = await phone.newPage();
  watch(page, `phone ${label}`);
  await check(`${label} at phone width in dark mode`, page, async () => {
    await page.goto(`${BASE}${path}`);
    await until(page, 'the stream connects', () => document.querySelector('#connection')?.dataset.state === 'live');
    if (label === 'market') {
      await until(page, 'the chart', () => document.querySelector('spot-chart#chart')?.barCount() > 0);
    }
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert(overflow <= 1, `no sideways scrolling (${overflow}px too wide)`);
    // Nothing drawn past the right edge either (a clipped column is as bad as a scrollbar).
    const clipped = await page.evaluate(() => [...document.querySelectorAll('.board-grid > *, #market-summary *')]
      .filter((el) => el.offsetParent !== null && el.getBoundingClientRect().width > 0)
      .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
      .map((el) => `${el.tagName.toLowerCase()}[${el.dataset.field ?? el.className}]`));
    assert(clipped.length === 0, `cut off at the right edge: ${clipped.slice(0, 5)}`);
    const background = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
    const rgb = await page.evaluate((c) => {
      const el = document.createElement('div');
      el.style.color = c;
      document.body.append(el);
      const canvas = document.createElement('canvas').getContext('2d');
      canvas.fillStyle = getComputedStyle(el).color;
      canvas.fillRect(0, 0, 1, 1);
      el.remove();
      return [...canvas.getImageData(0, 0, 1, 1).data].slice(0, 3);
    }, background);
    const luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255;
    assert(luminance < 0.35, `a dark background (${background} → ${rgb})`);
  });
}

await check('a silent stream is noticed and opened again', board, async () => {
  await until(board, 'connected', () => document.querySelector('#connection')?.dataset.state === 'live');
  // Frozen, the service keeps its sockets open but sends nothing: only the page's heartbeat
  // check can tell (tests/suite/browser.rs sets a 2 s heartbeat).
  process.kill(PID, 'SIGSTOP');
  try {
    await until(board, 'disconnected after three silent heartbeats', () =>
      document.querySelector('#connection')?.dataset.state === 'disconnected', undefined, 30_000);
  } finally {
    process.kill(PID, 'SIGCONT');
  }
  await until(board, 'live again', () => document.querySelector('#connection')?.dataset.state === 'live',
    undefined, 60_000);
});

await check('no console errors', null, async () => {
  assert(consoleErrors.length === 0, `console errors:\n  ${consoleErrors.join('\n  ')}`);
});

await check('the disconnected state shows when the service stops', board, async () => {
  recordErrors = false; // the reconnect attempts to a stopped service fail, as they should
  await until(board, 'connected before the stop', () => document.querySelector('#connection')?.dataset.state === 'live');
  process.kill(PID, 'SIGTERM');
  await until(board, 'the disconnected state', () =>
    document.querySelector('#connection')?.dataset.state === 'disconnected'
    && getComputedStyle(document.querySelector('#offline-banner')).display !== 'none', undefined, 30_000);
});

await browser.close();
const failed = results.filter((r) => !r.ok);
console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length === 0 ? 0 : 1);
