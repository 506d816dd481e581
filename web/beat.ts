/**
 * <spot-beat id="beat" data-n="…" data-every="15">: the page stream's heartbeat.
 *
 * The server patches it on every keep-alive period (data-n moves). When no patch comes for three
 * periods, the connection is presumed dead (a laptop that slept, a proxy that dropped it without
 * a word) and the element dispatches a bubbling `stream-stale` event, once per silence; the page
 * marks itself disconnected and opens its stream again.
 */
export class SpotBeat extends HTMLElement {
  static observedAttributes = ["data-n"];

  #last = performance.now();
  #timer: ReturnType<typeof setInterval> | undefined;
  #fired = false;

  connectedCallback(): void {
    this.#last = performance.now();
    clearInterval(this.#timer);
    this.#timer = setInterval(() => this.#check(), 1000);
  }

  /** Moved by a morph (moveBefore): keep the timer. */
  connectedMoveCallback(): void {}

  disconnectedCallback(): void {
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  attributeChangedCallback(): void {
    this.#last = performance.now();
    this.#fired = false;
  }

  #check(): void {
    const every = Number(this.dataset.every ?? "15");
    const period = Number.isFinite(every) && every > 0 ? every * 1000 : 15_000;
    if (!this.#fired && performance.now() - this.#last > 3 * period) {
      this.#fired = true;
      this.dispatchEvent(new CustomEvent("stream-stale", { bubbles: true }));
    }
  }
}
