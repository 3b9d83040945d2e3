// Render the math that pymdownx.arithmatex (generic mode) marks with class "arithmatex",
// with the KaTeX copy in docs/assets/katex (served with the site: no network needed).
function renderMath() {
  document.querySelectorAll(".arithmatex").forEach(function (el) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,
    });
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(renderMath); // the theme's instant navigation
} else {
  document.addEventListener("DOMContentLoaded", renderMath);
}
