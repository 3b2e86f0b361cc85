// MathJax configuration for pymdownx.arithmatex (generic mode), as in mkdocs-material's docs.
// MathJax itself is served from the site (javascripts/mathjax/tex-chtml.js), not a CDN.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex"
  }
};

// Typeset again when mkdocs-material swaps in a page (instant navigation). MathJax typesets
// the first page by itself; clearing its output cache (MathJax.startup.output.clearCache(), as
// mkdocs-material's docs do) after that first typeset drops the CSS that draws the characters
// with MathJax 3.2, and every formula renders blank.
document$.subscribe(() => {
  MathJax.startup.promise.then(() => {
    MathJax.typesetClear();
    MathJax.texReset();
    return MathJax.typesetPromise();
  });
});
