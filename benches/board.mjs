// What the board costs a browser under load: Debian's Chromium (playwright-core) on the board
// of a running service, for a while, measuring what the page receives and what it costs the
// main thread. Not part of `task test`: run it by hand against `task demo` or a service fed by
// `spot-canvas sim --products N` (see BENCHMARKS.md for the command and figures).
//
//   node benches/board.mjs http://127.0.0.1:8080 60
//
// Prints: rows; the first load (the page's bytes and the stream's bytes until the page is
// live: its opening events), decoded and on the wire; the stream's bytes/s over the window,
// decoded (`dataLength`: what the page parses) and on the wire (`encodedDataLength`: what the
// network carries, compressed when the stream is); row morphs/s (attribute changes of the
// rows' <spot-candle> elements), long tasks (> 50 ms) and the share of the main thread they
// took, frames per second, and the JS heap at the end.

import { chromium } from 'playwright-core';

const base = process.argv[2] ?? 'http://127.0.0.1:8080';
const seconds = Number(process.argv[3] ?? 60);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--enable-precise-memory-info'],
});
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
if (process.env.NO_ANIMATE) await page.addInitScript(() => { Element.prototype.animate = function () { return { cancel() {}, finished: Promise.resolve() }; }; });
/** Bytes by kind of request: the page's document and its stream; decoded and on the wire. */
const bytes = {
  page: { decoded: 0, wire: 0 },
  stream: { decoded: 0, wire: 0 },
};
const kinds = new Map();
const client = await page.context().newCDPSession(page);
await client.send('Network.enable');
client.on('Network.requestWillBeSent', (e) => {
  const url = new URL(e.request.url);
  if (e.type === 'Document') kinds.set(e.requestId, 'page');
  else if (url.pathname.endsWith('/stream')) kinds.set(e.requestId, 'stream');
});
client.on('Network.dataReceived', (e) => {
  const kind = kinds.get(e.requestId);
  if (kind === undefined) return;
  bytes[kind].decoded += e.dataLength;
  bytes[kind].wire += e.encodedDataLength;
});
client.on('Network.loadingFinished', (e) => {
  // A finished document reports its wire bytes (headers included) here, not per chunk.
  if (kinds.get(e.requestId) === 'page') bytes.page.wire = e.encodedDataLength;
});
await page.goto(`${base}/`);
await page.waitForFunction(() => document.querySelector('#connection')?.dataset.state === 'live',
  undefined, { timeout: 60_000 });
const rows = await page.$$eval('#board-rows .board-row', (r) => r.length);
const firstLoad = { page: { ...bytes.page }, stream: { ...bytes.stream } };
bytes.stream = { decoded: 0, wire: 0 };
await page.evaluate(() => {
  window.__bench = { longTasks: 0, longMs: 0, frames: 0, morphs: 0 };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      window.__bench.longTasks += 1;
      window.__bench.longMs += entry.duration;
    }
  }).observe({ type: 'longtask', buffered: false });
  new MutationObserver((records) => {
    window.__bench.morphs += records.filter((r) => r.target.localName === 'spot-candle'
      && r.attributeName === 'data-version').length;
  }).observe(document.querySelector('#board-rows'), { subtree: true, attributes: true });
  const frame = () => { window.__bench.frames += 1; requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
});
const started = Date.now();
await page.waitForTimeout(seconds * 1000); // the measurement window itself
const elapsed = (Date.now() - started) / 1000;
const b = await page.evaluate(() => window.__bench);
const heap = await page.evaluate(() => performance.memory?.usedJSHeapSize ?? 0);
const kib = (n) => +(n / 1024).toFixed(1);
console.log(JSON.stringify({
  rows,
  seconds: Math.round(elapsed),
  first_load_page_kib: kib(firstLoad.page.decoded),
  first_load_page_wire_kib: kib(firstLoad.page.wire),
  first_load_stream_kib: kib(firstLoad.stream.decoded),
  first_load_stream_wire_kib: kib(firstLoad.stream.wire),
  stream_kib_per_s: +(bytes.stream.decoded / 1024 / elapsed).toFixed(1),
  stream_wire_kib_per_s: +(bytes.stream.wire / 1024 / elapsed).toFixed(1),
  row_morphs_per_s: +(b.morphs / elapsed).toFixed(1),
  long_tasks: b.longTasks,
  long_task_share: +(b.longMs / 1000 / elapsed).toFixed(3),
  fps: +(b.frames / elapsed).toFixed(1),
  js_heap_mib: +(heap / 1048576).toFixed(1),
}));
await browser.close();
