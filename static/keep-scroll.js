// Wide tables scroll inside their card; an HTMX refresh of the card must not throw the reader back to the left.
(function () {
  "use strict";
  const saved = new Map();
  document.addEventListener("htmx:beforeSwap", (event) => {
    event.detail.target.querySelectorAll(".scroll[id]").forEach((box) => {
      saved.set(box.id, [box.scrollLeft, box.scrollTop]);
    });
  });
  document.addEventListener("htmx:afterSettle", () => {
    saved.forEach(([left, top], id) => {
      const box = document.getElementById(id);
      if (box) { box.scrollLeft = left; box.scrollTop = top; }
    });
    saved.clear();
  });
})();
