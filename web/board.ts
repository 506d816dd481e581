// <spot-board sort="change" dir="desc" filter="">: filters and orders the market board's rows.
//
// In:  descendant rows `.board-row` with data-product and data-sort-<key> (decimal strings), morphed in
//      place by Datastar; the board's own sort / dir / filter attributes (bound to Datastar signals).
// Out: each row's `hidden` (filter) and `style.order` (sort; the rows sit in one grid or flex container,
//      DOM order is never changed). An element #board-empty inside the board is shown when no row
//      matches. Rows must list `style hidden` in data-preserve-attr so morphs keep both.
//
// Also: any element inside the board with data-flash="<number>" flashes green or red when that value
// rises or falls (Web Animations: no class or attribute for a morph to undo).

type SortKey = "product" | "change" | "volume" | "change24h" | "volume24h";
const NUMERIC_KEYS = ["change", "volume", "change24h", "volume24h"] as const;
const ROW = ".board-row";
/** Re-sorting on value changes happens at most this often, so rows do not jump on every trade. */
const RESORT_MS = 1000;

export class SpotBoard extends HTMLElement {
  static observedAttributes = ["sort", "dir", "filter"];

  #observer: MutationObserver | null = null;
  /** Rows on screen: only they flash (hundreds of off-screen animations would cost frames). */
  #onScreen = new Set<Element>();
  #viewport: IntersectionObserver | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #lastApplied = 0;
  #visible = 0;
  readonly #reducedMotion = window.matchMedia("(prefers-reduced-motion: reduce)");

  /** Rows currently matching the filter. */
  get visibleCount(): number {
    return this.#visible;
  }

  connectedCallback(): void {
    this.#viewport = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (entry.isIntersecting) this.#onScreen.add(entry.target);
        else this.#onScreen.delete(entry.target);
      }
    });
    this.#observer = new MutationObserver(this.#onMutations);
    this.#observer.observe(this, {
      childList: true,
      subtree: true,
      attributes: true,
      attributeOldValue: true,
      attributeFilter: ["data-product", "data-flash", ...NUMERIC_KEYS.map((key) => `data-sort-${key}`)],
    });
    this.apply();
  }

  /** Moved by a morph (moveBefore): nothing to redo. */
  connectedMoveCallback(): void {}

  disconnectedCallback(): void {
    this.#observer?.disconnect();
    this.#observer = null;
    this.#viewport?.disconnect();
    this.#viewport = null;
    this.#onScreen.clear();
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  attributeChangedCallback(_name: string, old: string | null, value: string | null): void {
    if (old !== value && this.isConnected) this.apply();
  }

  readonly #onMutations = (records: MutationRecord[]): void => {
    let now = false;
    let later = false;
    for (const record of records) {
      if (record.type === "childList") {
        // Rows added or removed: order and filter them at once. Morphs inside a row are not our business.
        now ||= [...record.addedNodes, ...record.removedNodes].some(isOrHasRow);
        for (const node of record.removedNodes) {
          if (!(node instanceof Element)) continue;
          for (const row of node.matches(ROW) ? [node] : node.querySelectorAll(ROW)) {
            this.#viewport?.unobserve(row);
            this.#onScreen.delete(row);
          }
        }
      } else if (record.attributeName === "data-flash") {
        const row = record.target instanceof Element ? record.target.closest(ROW) : null;
        if (row !== null && this.#onScreen.has(row)) {
          flash(record.target, record.oldValue, this.#reducedMotion.matches);
        }
      } else if (record.attributeName === "data-product") {
        now = true;
      } else {
        later = true;
      }
    }
    if (now) this.apply();
    else if (later) this.#applySoon();
  };

  /** Applies within RESORT_MS of the last application, not on every value change. */
  #applySoon(): void {
    if (this.#timer !== undefined) return;
    const wait = Math.max(0, this.#lastApplied + RESORT_MS - performance.now());
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.apply();
    }, wait);
  }

  /** Filters and sorts now. */
  apply(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#lastApplied = performance.now();

    const rows = [...this.querySelectorAll<HTMLElement>(ROW)];
    // Observing an observed row again is a no-op.
    for (const row of rows) this.#viewport?.observe(row);
    const needle = normalise(this.getAttribute("filter") ?? "");
    let visible = 0;
    for (const row of rows) {
      const match = needle === "" || normalise(row.dataset.product ?? "").includes(needle);
      if (row.hidden === match) row.hidden = !match;
      if (match) visible++;
    }
    this.#visible = visible;
    const empty = this.querySelector<HTMLElement>("#board-empty");
    if (empty && empty.hidden !== visible > 0) empty.hidden = visible > 0;

    const key = sortKey(this.getAttribute("sort"));
    const descending = this.getAttribute("dir") === "desc";
    const keyed = rows.map((row) => ({
      row,
      product: row.dataset.product ?? "",
      value: key === "product" ? 0 : sortValue(row.getAttribute(`data-sort-${key}`)),
    }));
    keyed.sort((a, b) => {
      let order = 0;
      if (key === "product") {
        order = a.product < b.product ? -1 : a.product > b.product ? 1 : 0;
        if (descending) order = -order;
      } else if (Number.isNaN(a.value) || Number.isNaN(b.value)) {
        // Rows without a value go last in either direction.
        order = Number(Number.isNaN(a.value)) - Number(Number.isNaN(b.value));
      } else {
        order = descending ? b.value - a.value : a.value - b.value;
      }
      // Ties: by product, so the order is stable between updates.
      return order || (a.product < b.product ? -1 : a.product > b.product ? 1 : 0);
    });
    keyed.forEach(({ row }, index) => {
      const order = String(index);
      if (row.style.order !== order) row.style.order = order;
    });
  }
}

function sortKey(value: string | null): SortKey {
  return value === "product" || (NUMERIC_KEYS as readonly string[]).includes(value ?? "")
    ? (value as SortKey)
    : "product";
}

/** A sort value; missing, empty or unreadable is NaN (sorted last). */
function sortValue(raw: string | null): number {
  if (raw === null || raw.trim() === "") return Number.NaN;
  const value = Number(raw);
  return Number.isFinite(value) ? value : Number.NaN;
}

/** Lower case, every run of other characters one dash: "btc usd", "BTC/USD" and "btc-usd" all match. */
function normalise(text: string): string {
  return text
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "");
}

function isOrHasRow(node: Node): boolean {
  return node instanceof Element && (node.matches(ROW) || node.querySelector(ROW) !== null);
}

/** Flashes an element green or red as its data-flash value rises or falls. */
function flash(target: Node, old: string | null, reduced: boolean): void {
  if (reduced || !(target instanceof HTMLElement)) return;
  const before = sortValue(old);
  const after = sortValue(target.getAttribute("data-flash"));
  if (Number.isNaN(before) || Number.isNaN(after) || before === after) return;
  const tone = after > before ? "--color-success" : "--color-error";
  target.animate(
    [{ backgroundColor: `color-mix(in oklab, var(${tone}) 35%, transparent)` }, { backgroundColor: "transparent" }],
    { duration: 900, easing: "ease-out" },
  );
}
