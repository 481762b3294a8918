// Copy buttons: put the named field's text on the clipboard (or select it where no clipboard is allowed).
document.addEventListener("click", async (event) => {
  "use strict";
  const button = event.target.closest("button.copy");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  field.select();
  try {
    await navigator.clipboard.writeText(field.value);
  } catch {
    document.execCommand("copy");  // plain-HTTP pages have no navigator.clipboard
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
});
