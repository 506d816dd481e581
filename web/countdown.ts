// <spot-countdown data-close="<Unix second>" data-complete="false">: time left until a candle closes.
//
// Renders into a shadow root (morphs only change its attributes): "m:ss", "h:mm:ss" or "Nd hh:mm";
// "closing…" once the close has passed and "closed" when data-complete="true". All instances share one
// timer, aligned to the wall-clock second, running only while at least one is connected.

const clocks = new Set<SpotCountdown>();
let timer: ReturnType<typeof setTimeout> | undefined;

function tick(): void {
  const now = Date.now();
  for (const clock of clocks) clock.render(now);
  // Next whole second, plus a little so the label never shows the second before.
  timer = setTimeout(tick, 1000 - (Date.now() % 1000) + 5);
}

export class SpotCountdown extends HTMLElement {
  static observedAttributes = ["data-close", "data-complete"];

  readonly #text: Text = document.createTextNode("");

  constructor() {
    super();
    const root = this.attachShadow({ mode: "open" });
    const style = document.createElement("style");
    style.textContent = ":host { display: inline-block; font-variant-numeric: tabular-nums; white-space: nowrap; }";
    root.append(style, this.#text);
  }

  /** The text shown. */
  get text(): string {
    return this.#text.data;
  }

  connectedCallback(): void {
    clocks.add(this);
    if (timer === undefined) tick();
    else this.render(Date.now());
  }

  connectedMoveCallback(): void {}

  disconnectedCallback(): void {
    clocks.delete(this);
    if (clocks.size === 0 && timer !== undefined) {
      clearTimeout(timer);
      timer = undefined;
    }
  }

  attributeChangedCallback(): void {
    if (this.isConnected) this.render(Date.now());
  }

  /** Shows the time left at `now` (milliseconds since the epoch). */
  render(now: number): void {
    const text = label(this.getAttribute("data-close"), this.getAttribute("data-complete") === "true", now);
    if (this.#text.data !== text) this.#text.data = text;
  }
}

function label(close: string | null, complete: boolean, now: number): string {
  if (complete) return "closed";
  const at = close === null || close.trim() === "" ? Number.NaN : Number(close);
  if (!Number.isFinite(at)) return "";
  const left = Math.ceil(at - now / 1000);
  if (left <= 0) return "closing…";
  const two = (n: number): string => String(n).padStart(2, "0");
  const days = Math.floor(left / 86_400);
  const hours = Math.floor((left % 86_400) / 3600);
  const minutes = Math.floor((left % 3600) / 60);
  const seconds = left % 60;
  if (days > 0) return `${days}d ${two(hours)}:${two(minutes)}`;
  if (hours > 0) return `${hours}:${two(minutes)}:${two(seconds)}`;
  return `${minutes}:${two(seconds)}`;
}
