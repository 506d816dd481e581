// Number formats and colours of <spot-chart>.

import type { PriceFormatBuiltIn } from "lightweight-charts";

/**
 * The price format of a product from its price increment ("0.01", "0.00001", "0.5"): as many decimals as
 * the increment has (trailing zeros ignored) and a minimum move of the increment itself. Anything
 * unreadable falls back to cents.
 */
export function priceFormat(increment: string | null): PriceFormatBuiltIn {
  const fallback: PriceFormatBuiltIn = { type: "price", precision: 2, minMove: 0.01 };
  const text = (increment ?? "").trim();
  const minMove = Number(text);
  if (text === "" || !Number.isFinite(minMove) || minMove <= 0) return fallback;
  let precision: number;
  const decimal = /^\d*(?:\.(\d*))?$/.exec(text);
  if (decimal) {
    precision = (decimal[1] ?? "").replace(/0+$/, "").length;
  } else {
    // Exponent notation such as 1e-8: the decimals needed to show one increment.
    precision = Math.max(0, Math.ceil(-Math.log10(minMove) - 1e-9));
  }
  precision = Math.min(precision, 15);
  const format: PriceFormatBuiltIn = { type: "price", precision, minMove };
  // An exact integer base avoids float rounding with tiny increments (1 / 1e-8).
  const base = Math.round(1 / minMove);
  if (base >= 1 && Math.abs(base * minMove - 1) < 1e-9) format.base = base;
  return format;
}

/** Formats a price with the product's decimals. */
export function formatPrice(value: number, format: PriceFormatBuiltIn): string {
  return value.toFixed(format.precision);
}

/** Compact volume: 1.23K, 4.56M, 7.89B; three significant digits below one. */
export function formatVolume(value: number): string {
  const size = Math.abs(value);
  if (size >= 1e9) return `${(value / 1e9).toFixed(2)}B`;
  if (size >= 1e6) return `${(value / 1e6).toFixed(2)}M`;
  if (size >= 1e4) return `${(value / 1e3).toFixed(2)}K`;
  if (size >= 1) return value.toFixed(2);
  if (size === 0) return "0";
  return value.toPrecision(3);
}

/** Short label of a granularity for the legend. */
export const GRANULARITY_LABELS: Readonly<Record<string, string>> = {
  ONE_MINUTE: "1m",
  FIVE_MINUTE: "5m",
  FIFTEEN_MINUTE: "15m",
  THIRTY_MINUTE: "30m",
  ONE_HOUR: "1h",
  TWO_HOUR: "2h",
  SIX_HOUR: "6h",
  ONE_DAY: "1D",
};

export interface Palette {
  text: string;
  muted: string;
  grid: string;
  border: string;
  up: string;
  down: string;
  /** Bodies of the forming candle: the same hues, translucent. */
  upForming: string;
  downForming: string;
  upVolume: string;
  downVolume: string;
  upVolumeForming: string;
  downVolumeForming: string;
}

const LIGHT: Palette = {
  text: "#1f2937",
  muted: "#6b7280",
  grid: "#e5e7eb",
  border: "#d1d5db",
  up: "#089981",
  down: "#e0283a",
  upForming: "#0899814d",
  downForming: "#e0283a4d",
  upVolume: "#08998166",
  downVolume: "#e0283a66",
  upVolumeForming: "#08998133",
  downVolumeForming: "#e0283a33",
};

const DARK: Palette = {
  text: "#d1d5db",
  muted: "#9ca3af",
  grid: "#1f2937",
  border: "#374151",
  up: "#2ebd85",
  down: "#f6465d",
  upForming: "#2ebd8559",
  downForming: "#f6465d59",
  upVolume: "#2ebd8573",
  downVolume: "#f6465d73",
  upVolumeForming: "#2ebd8533",
  downVolumeForming: "#f6465d33",
};

export function palette(dark: boolean): Palette {
  return dark ? DARK : LIGHT;
}
