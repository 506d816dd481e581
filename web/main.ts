// The page bundle (static/app.js): registers spot-canvas's custom elements and nothing else.

import { SpotBeat } from "./beat";
import { SpotBoard } from "./board";
import { SpotCandle } from "./candle";
import { SpotChart } from "./chart";
import { SpotCountdown } from "./countdown";

const elements: ReadonlyArray<readonly [string, CustomElementConstructor]> = [
  ["spot-candle", SpotCandle],
  ["spot-chart", SpotChart],
  ["spot-board", SpotBoard],
  ["spot-countdown", SpotCountdown],
  ["spot-beat", SpotBeat],
];

for (const [name, element] of elements) {
  if (!customElements.get(name)) customElements.define(name, element);
}
