// Tailwind CSS v4 reads this legacy config through `@config` in web/app.css. The CSS imports Tailwind
// with `source(none)`, so these globs are the only places scanned for class names.
/** @type {import('tailwindcss').Config} */
export default {
  content: [
    "./templates/**/*.html",
    "./web/**/*.ts",
    // Rust code renders some class names (board cells, badges).
    "./src/web/**/*.rs",
  ],
};
