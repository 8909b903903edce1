// Typeset the math of a page with the vendored KaTeX (docs/assets/katex): no network is needed.
// pymdownx.arithmatex (generic mode) wraps each formula of the Markdown and of the docstrings in an element of
// class "arithmatex" holding \( ... \) (inline) or \[ ... \] (display); each is replaced by KaTeX's rendering.
// A formula KaTeX cannot parse is shown in red (class katex-error), which the docs session's check rejects.
(function () {
  function typeset(root) {
    root.querySelectorAll(".arithmatex").forEach(function (element) {
      var source = element.textContent.trim();
      var display = source.startsWith("\\[");
      var tex = source.replace(/^\\[(\[]/, "").replace(/\\[)\]]$/, "");
      katex.render(tex, element, { displayMode: display, throwOnError: false });
    });
  }
  if (typeof document$ !== "undefined") {
    document$.subscribe(function () { typeset(document.body); }); // Material's page-load observable
  } else {
    document.addEventListener("DOMContentLoaded", function () { typeset(document.body); });
  }
})();
