// <spot-chart data-product data-granularity data-price-increment>: draws the <spot-candle> elements it
// contains as candles and volume with lightweight-charts, and follows them live.
//
// In:  light-DOM <spot-candle> descendants (history first, then live buckets appended and morphed by
//      Datastar), and the element's own data-product / data-granularity / data-price-increment.
// Out: a chart in a shadow root (morphs never touch it); lastBar(), barCount() and ready for tests.
//
// Every mutation schedules one redraw per animation frame. A redraw re-reads the children (a few hundred
// elements), keeps per bucket start the candle with the greatest data-version, and sends the series only
// what changed: update() for the moving tail, setData() when older history changed shape.

import {
  CandlestickSeries,
  ColorType,
  CrosshairMode,
  HistogramSeries,
  createChart,
  type CandlestickData,
  type HistogramData,
  type IChartApi,
  type ISeriesApi,
  type MouseEventParams,
  type PriceFormatBuiltIn,
  type Time,
  type UTCTimestamp,
} from "lightweight-charts";
import { type CandleBar, compareVersions, parseCandle, warnOnce } from "./candle";
import { GRANULARITY_LABELS, type Palette, formatPrice, formatVolume, palette, priceFormat } from "./chart-format";

/** What lastBar() reports: the newest bar as the series hold it. */
export type DrawnBar = Omit<CandleBar, "version">;

/** Past this many changed bars in one frame, one setData() is cheaper than many update() calls. */
const MAX_INCREMENTAL = 32;
/** Up to this many bars, a new series is fitted to the width; beyond, it opens on the newest. */
const FIT_BARS = 200;

const SHADOW_CSS = `
:host { display: block; position: relative; height: 420px; min-height: 16rem; }
.plot { position: absolute; inset: 0; }
.legend {
  position: absolute; top: 4px; left: 8px; right: 72px; z-index: 3; pointer-events: none;
  display: flex; flex-wrap: wrap; align-items: baseline; gap: 0 0.8em;
  font: 12px/1.5 ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  font-variant-numeric: tabular-nums; white-space: nowrap;
}
.legend .name { font-weight: 600; }
.legend .label { opacity: 0.65; margin-right: 0.25em; }
.legend .tag {
  font-size: 10px; letter-spacing: 0.04em; text-transform: uppercase;
  border: 1px solid currentColor; border-radius: 4px; padding: 0 0.4em;
}
`;

export class SpotChart extends HTMLElement {
  static observedAttributes = ["data-product", "data-granularity", "data-price-increment"];

  readonly #plot: HTMLDivElement;
  readonly #legend: HTMLDivElement;
  readonly #scheme: MediaQueryList = window.matchMedia("(prefers-color-scheme: dark)");
  #chart: IChartApi | null = null;
  #candles: ISeriesApi<"Candlestick"> | null = null;
  #volume: ISeriesApi<"Histogram"> | null = null;
  #observer: MutationObserver | null = null;
  #frame = 0;
  /** Set when every bar must be sent again (new product or granularity, new colours). */
  #rebuild = true;
  /** Set when the view must be fitted to the bars again (first draw, new product or granularity). */
  #refit = true;
  /** The bars as drawn, ascending by time, parallel to the series' data. */
  #drawn: CandleBar[] = [];
  #byTime = new Map<number, CandleBar>();
  #hovered: number | null = null;
  #format: PriceFormatBuiltIn = priceFormat(null);
  #ready = false;

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    const style = document.createElement("style");
    style.textContent = SHADOW_CSS;
    this.#plot = document.createElement("div");
    this.#plot.className = "plot";
    this.#plot.setAttribute("part", "plot");
    this.#legend = document.createElement("div");
    this.#legend.className = "legend";
    this.#legend.setAttribute("part", "legend");
    root.append(style, this.#plot, this.#legend);
  }

  /** True once the chart exists and has drawn the children present at that time. */
  get ready(): boolean {
    return this.#ready;
  }

  /** Number of bars in the candle series. */
  barCount(): number {
    return this.#candles?.data().length ?? 0;
  }

  /** The newest bar as the series hold it (not as the DOM says), or null when there is none. */
  lastBar(): DrawnBar | null {
    const candle = this.#candles?.data().at(-1);
    return candle ? this.barAt(candle.time as number) : null;
  }

  /** The bar of the bucket starting at `time` (Unix seconds) as the series hold it, or null. */
  barAt(time: number): DrawnBar | null {
    const candles = this.#candles?.data() ?? [];
    const index = binarySearch(candles, time);
    const candle = index < 0 ? undefined : candles[index];
    if (!isCandle(candle)) return null;
    const volumes = this.#volume?.data() ?? [];
    const volume = volumes[binarySearch(volumes, time)];
    return {
      time,
      open: candle.open,
      high: candle.high,
      low: candle.low,
      close: candle.close,
      volume: volume && "value" in volume ? volume.value : 0,
      complete: this.#byTime.get(time)?.complete ?? false,
    };
  }

  connectedCallback(): void {
    if (this.#chart) return;
    const colors = palette(this.#scheme.matches);
    this.#format = priceFormat(this.getAttribute("data-price-increment"));
    const chart = createChart(this.#plot, {
      autoSize: true,
      layout: {
        background: { type: ColorType.Solid, color: "transparent" },
        textColor: colors.text,
        fontFamily: 'ui-sans-serif, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif',
      },
      grid: { vertLines: { color: colors.grid }, horzLines: { color: colors.grid } },
      crosshair: { mode: CrosshairMode.Normal },
      rightPriceScale: { borderColor: colors.border, scaleMargins: { top: 0.1, bottom: 0.25 } },
      timeScale: { borderColor: colors.border, rightOffset: 4, maxBarSpacing: 40, ...this.#timeOptions() },
    });
    this.#candles = chart.addSeries(CandlestickSeries, {
      ...this.#candleColors(colors),
      priceFormat: this.#format,
    });
    // Volume on its own overlay scale, squeezed into the bottom fifth under the candles.
    this.#volume = chart.addSeries(HistogramSeries, {
      priceScaleId: "volume",
      priceFormat: { type: "custom", formatter: formatVolume, minMove: 1e-8 },
      lastValueVisible: false,
      priceLineVisible: false,
    });
    chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    chart.subscribeCrosshairMove(this.#onCrosshair);
    this.#chart = chart;

    this.#scheme.addEventListener("change", this.#onScheme);
    this.#observer = new MutationObserver(this.#schedule);
    this.#observer.observe(this, { childList: true, subtree: true, attributes: true });
    this.#rebuild = true;
    this.#refit = true;
    this.#flush();
    this.#ready = true;
  }

  /** Moved by a morph (moveBefore): keep the chart as it is. */
  connectedMoveCallback(): void {}

  disconnectedCallback(): void {
    this.#observer?.disconnect();
    this.#observer = null;
    this.#scheme.removeEventListener("change", this.#onScheme);
    if (this.#frame) cancelAnimationFrame(this.#frame);
    this.#frame = 0;
    this.#chart?.remove();
    this.#chart = null;
    this.#candles = null;
    this.#volume = null;
    this.#drawn = [];
    this.#byTime.clear();
    this.#ready = false;
  }

  attributeChangedCallback(name: string, old: string | null, value: string | null): void {
    if (old === value) return;
    if (name === "data-price-increment") {
      this.#format = priceFormat(value);
      this.#candles?.applyOptions({ priceFormat: this.#format });
    } else {
      // Another product or granularity: the drawn bars are all stale.
      this.#rebuild = true;
      this.#refit = true;
      this.#chart?.timeScale().applyOptions(this.#timeOptions());
    }
    this.#schedule();
  }

  #timeOptions(): { timeVisible: boolean; secondsVisible: boolean } {
    return { timeVisible: this.getAttribute("data-granularity") !== "ONE_DAY", secondsVisible: false };
  }

  #candleColors(colors: Palette) {
    return {
      upColor: colors.up,
      downColor: colors.down,
      borderUpColor: colors.up,
      borderDownColor: colors.down,
      wickUpColor: colors.up,
      wickDownColor: colors.down,
    };
  }

  readonly #schedule = (): void => {
    if (!this.#frame && this.#chart) this.#frame = requestAnimationFrame(this.#flush);
  };

  readonly #onScheme = (): void => {
    const colors = palette(this.#scheme.matches);
    this.#chart?.applyOptions({
      layout: { textColor: colors.text },
      grid: { vertLines: { color: colors.grid }, horzLines: { color: colors.grid } },
      rightPriceScale: { borderColor: colors.border },
      timeScale: { borderColor: colors.border },
    });
    this.#candles?.applyOptions(this.#candleColors(colors));
    // Forming and volume bars carry their own colours: send them again.
    this.#rebuild = true;
    this.#schedule();
  };

  readonly #onCrosshair = (param: MouseEventParams<Time>): void => {
    this.#hovered = typeof param.time === "number" ? param.time : null;
    this.#renderLegend();
  };

  /** The children's candles for this product and granularity, one per bucket start, ascending. */
  #collect(): CandleBar[] {
    const product = this.getAttribute("data-product");
    const granularity = this.getAttribute("data-granularity");
    const byTime = new Map<number, CandleBar>();
    for (const el of this.querySelectorAll("spot-candle")) {
      // During a switch the old product's or granularity's candles may linger for a frame.
      const p = el.getAttribute("data-product");
      const g = el.getAttribute("data-granularity");
      if ((product && p && p !== product) || (granularity && g && g !== granularity)) continue;
      const bar = parseCandle(el);
      if (typeof bar === "string") {
        warnOnce(el, bar);
        continue;
      }
      const seen = byTime.get(bar.time);
      if (!seen || compareVersions(bar.version, seen.version) >= 0) byTime.set(bar.time, bar);
    }
    return [...byTime.values()].sort((a, b) => a.time - b.time);
  }

  readonly #flush = (): void => {
    this.#frame = 0;
    const candles = this.#candles;
    const volume = this.#volume;
    if (!candles || !volume) return;
    const next = this.#collect();
    const drawn = this.#drawn;
    const colors = palette(this.#scheme.matches);

    // Incremental only when the drawn times are a prefix of the new ones (the tail moved or grew).
    let incremental = !this.#rebuild && next.length >= drawn.length;
    const changed: number[] = [];
    for (let i = 0; incremental && i < next.length; i++) {
      const old = drawn[i];
      const bar = next[i] as CandleBar;
      if (old && old.time !== bar.time) incremental = false;
      else if (!old || !sameBar(old, bar)) changed.push(i);
    }
    if (changed.length > MAX_INCREMENTAL) incremental = false;

    if (incremental) {
      for (const i of changed) {
        const bar = next[i] as CandleBar;
        // Older than the newest drawn bar: a revision of history.
        const historical = i < drawn.length - 1;
        candles.update(candleData(bar, colors), historical);
        volume.update(volumeData(bar, colors), historical);
      }
    } else {
      candles.setData(next.map((bar) => candleData(bar, colors)));
      volume.setData(next.map((bar) => volumeData(bar, colors)));
    }
    if (this.#refit && next.length > 0) {
      // Few bars fill the width; many show the newest at the default spacing.
      const timeScale = this.#chart?.timeScale();
      if (next.length <= FIT_BARS) timeScale?.fitContent();
      else timeScale?.scrollToRealTime();
      this.#refit = false;
    }
    this.#rebuild = false;
    this.#drawn = next;
    this.#byTime = new Map(next.map((bar) => [bar.time, bar]));
    this.#renderLegend();
  };

  /** Product, granularity and the hovered (or newest) bar's values above the plot. */
  #renderLegend(): void {
    const colors = palette(this.#scheme.matches);
    const bar = (this.#hovered !== null ? this.#byTime.get(this.#hovered) : undefined) ?? this.#drawn.at(-1);
    const parts: HTMLElement[] = [];
    const span = (text: string, className = "", color = ""): HTMLSpanElement => {
      const el = document.createElement("span");
      el.textContent = text;
      if (className) el.className = className;
      if (color) el.style.color = color;
      return el;
    };
    const field = (label: string, value: string, color = ""): HTMLSpanElement => {
      const el = span("", "", color);
      el.append(span(label, "label"), value);
      return el;
    };
    const granularity = this.getAttribute("data-granularity") ?? "";
    parts.push(span(`${this.getAttribute("data-product") ?? ""} · ${GRANULARITY_LABELS[granularity] ?? granularity}`, "name"));
    if (bar) {
      const tone = bar.close >= bar.open ? colors.up : colors.down;
      const f = (v: number): string => formatPrice(v, this.#format);
      const change = bar.open !== 0 ? ((bar.close - bar.open) / bar.open) * 100 : 0;
      parts.push(
        field("O", f(bar.open)),
        field("H", f(bar.high)),
        field("L", f(bar.low)),
        field("C", f(bar.close), tone),
        span(`${change >= 0 ? "+" : ""}${change.toFixed(2)}%`, "", tone),
        field("V", formatVolume(bar.volume)),
        span(bar.complete ? "closed" : "forming", "tag", bar.complete ? colors.muted : tone),
      );
    }
    this.#legend.style.color = colors.text;
    this.#legend.replaceChildren(...parts);
  }
}

function isCandle(item: unknown): item is CandlestickData<Time> {
  return typeof item === "object" && item !== null && "open" in item && "close" in item;
}

/** Index of the item with this time in data sorted by time, or -1. */
function binarySearch(data: readonly { time: Time }[], time: number): number {
  let low = 0;
  let high = data.length - 1;
  while (low <= high) {
    const mid = (low + high) >> 1;
    const at = (data[mid] as { time: Time }).time as number;
    if (at === time) return mid;
    if (at < time) low = mid + 1;
    else high = mid - 1;
  }
  return -1;
}

function sameBar(a: CandleBar, b: CandleBar): boolean {
  return (
    a.open === b.open &&
    a.high === b.high &&
    a.low === b.low &&
    a.close === b.close &&
    a.volume === b.volume &&
    a.complete === b.complete
  );
}

function candleData(bar: CandleBar, colors: Palette): CandlestickData<Time> {
  const data: CandlestickData<Time> = {
    time: bar.time as UTCTimestamp,
    open: bar.open,
    high: bar.high,
    low: bar.low,
    close: bar.close,
  };
  if (!bar.complete) {
    // The forming candle: translucent body, solid outline and wick.
    const up = bar.close >= bar.open;
    data.color = up ? colors.upForming : colors.downForming;
    data.borderColor = up ? colors.up : colors.down;
    data.wickColor = up ? colors.up : colors.down;
  }
  return data;
}

function volumeData(bar: CandleBar, colors: Palette): HistogramData<Time> {
  const up = bar.close >= bar.open;
  const color = bar.complete
    ? up ? colors.upVolume : colors.downVolume
    : up ? colors.upVolumeForming : colors.downVolumeForming;
  return { time: bar.time as UTCTimestamp, value: bar.volume, color };
}
