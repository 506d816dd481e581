// <spot-candle>: one candle as the server streams it. The element only carries data in its attributes
// (Datastar morphs them in place); it draws nothing (app.css gives it display: none). This module also
// parses those attributes for <spot-chart>.
//
// Attributes: id, data-product, data-granularity, data-timestamp (bucket start, Unix seconds),
// data-open/-high/-low/-close/-volume (exact decimal strings), data-complete ("true"/"false"),
// data-trades, data-buy-volume, data-revision, data-version (hex), data-last-trade-id,
// data-last-trade-time, data-received.

/** A candle parsed for drawing. Amounts are JavaScript numbers: fine for pixels, never for sums. */
export interface CandleBar {
  /** Bucket start, Unix seconds. */
  time: number;
  open: number;
  high: number;
  low: number;
  close: number;
  volume: number;
  complete: boolean;
  /** data-version as sent (hex), "" when absent. */
  version: string;
}

export class SpotCandle extends HTMLElement {
  /** The candle's values, or null when an attribute is missing or not a number. */
  get bar(): CandleBar | null {
    const parsed = parseCandle(this);
    return typeof parsed === "string" ? null : parsed;
  }
}

/** Parses a decimal attribute; a missing or empty attribute is NaN (Number("") would be 0). */
function num(el: Element, name: string): number {
  const raw = el.getAttribute(name);
  if (raw === null || raw.trim() === "") return Number.NaN;
  return Number(raw);
}

/** Reads a candle element: the bar, or the reason it cannot be drawn. */
export function parseCandle(el: Element): CandleBar | string {
  const time = num(el, "data-timestamp");
  if (!Number.isSafeInteger(time) || time < 0) return "data-timestamp is not a Unix second";
  const open = num(el, "data-open");
  const high = num(el, "data-high");
  const low = num(el, "data-low");
  const close = num(el, "data-close");
  if (![open, high, low, close].every(Number.isFinite)) return "open, high, low or close is not a number";
  const volume = num(el, "data-volume");
  if (!Number.isFinite(volume) || volume < 0) return "data-volume is not a non-negative number";
  return {
    time,
    open,
    high,
    low,
    close,
    volume,
    complete: el.getAttribute("data-complete") === "true",
    version: el.getAttribute("data-version") ?? "",
  };
}

/**
 * Orders two hex versions. Equal lengths compare as strings; otherwise leading zeros are ignored and
 * the longer number is the greater.
 */
export function compareVersions(a: string, b: string): number {
  const x = a.trim().toLowerCase().replace(/^0+/, "");
  const y = b.trim().toLowerCase().replace(/^0+/, "");
  if (x.length !== y.length) return x.length - y.length;
  return x < y ? -1 : x > y ? 1 : 0;
}

const warned = new Set<string>();

/** console.warn once per element id (never console.error: bad data is not a page error). */
export function warnOnce(el: Element, reason: string): void {
  const key = el.id || "(no id)";
  if (warned.has(key) || warned.size > 1000) return;
  warned.add(key);
  console.warn(`spot-candle ${key} skipped: ${reason}`);
}
