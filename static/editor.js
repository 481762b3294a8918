// The strategy editor: line numbers that follow the text and mark the lines the last check found errors on.
(function () {
  "use strict";
  const textarea = document.getElementById("strategy");
  const gutter = document.querySelector(".editor .gutter");
  if (!textarea || !gutter) return;
  let errorLines = new Set();

  function readErrorLines() {
    const box = document.getElementById("validation");
    const lines = box ? (box.dataset.errorLines || "").split(" ") : [];
    errorLines = new Set(lines.filter(Boolean).map(Number));
  }

  function renderGutter() {
    const count = textarea.value.split("\n").length;
    const numbers = document.createDocumentFragment();
    for (let line = 1; line <= count; line++) {
      const span = document.createElement("span");
      span.textContent = line;
      if (errorLines.has(line)) span.className = "bad";
      numbers.append(span, "\n");
    }
    gutter.replaceChildren(numbers);
    gutter.scrollTop = textarea.scrollTop;
  }

  // Put the caret on an error's line and column when its link is clicked.
  function goTo(line, column) {
    const lines = textarea.value.split("\n");
    let offset = 0;
    for (let i = 0; i < line - 1 && i < lines.length; i++) offset += lines[i].length + 1;
    offset += Math.max(0, column - 1);
    textarea.focus();
    textarea.setSelectionRange(offset, Math.min(offset + 1, textarea.value.length));
    const lineHeight = parseFloat(getComputedStyle(textarea).lineHeight) || 20;
    textarea.scrollTop = Math.max(0, (line - 3) * lineHeight);
  }

  // Unsaved edits: marked at the title, the "worker runs the saved version" line hidden, and leaving asks.
  const savedText = textarea.dataset.saved === "yes" ? textarea.value : null;
  function isUnsaved() { return savedText === null || textarea.value !== savedText; }
  function markUnsaved() {
    const unsaved = isUnsaved();
    ["unsaved", "unsaved-mark"].forEach((id) => { const el = document.getElementById(id); if (el) el.hidden = !unsaved; });
    document.body.classList.toggle("is-unsaved", unsaved);
  }
  window.addEventListener("beforeunload", (event) => {
    if (isUnsaved() && !window.omniwiseSaving) { event.preventDefault(); event.returnValue = ""; }
  });
  const form = document.getElementById("editor-form");
  if (form) form.addEventListener("submit", () => { window.omniwiseSaving = true; });

  textarea.addEventListener("input", () => { renderGutter(); markUnsaved(); });
  markUnsaved();
  textarea.addEventListener("scroll", () => { gutter.scrollTop = textarea.scrollTop; });
  document.body.addEventListener("htmx:afterSettle", () => {
    readErrorLines();
    renderGutter();
    // "Not saved" was about the errors: once the text is valid, only the Save button is left to press.
    const refused = document.getElementById("not-saved");
    const box = document.getElementById("validation");
    if (refused && box && box.classList.contains("is-valid")) refused.remove();
  });
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a.goto");
    if (!link) return;
    event.preventDefault();
    goTo(Number(link.dataset.line), Number(link.dataset.column));
  });
  readErrorLines();
  renderGutter();
})();
