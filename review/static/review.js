// Keyboard for the review page: each key presses the button that does the same thing.
(function () {
  "use strict";
  const search = document.getElementById("search");
  const override = document.getElementById("override-category");
  const help = document.getElementById("help");
  const heat = document.getElementById("heat");
  const toggle = document.getElementById("heat-toggle");
  const opacity = document.getElementById("heat-opacity");

  function showHeat() {
    if (!heat) return;
    heat.hidden = !toggle.checked;
    heat.style.opacity = String(Number(opacity.value) / 100);
  }
  if (heat) {
    toggle.addEventListener("change", showHeat);
    opacity.addEventListener("input", showHeat);
  }

  // An alternative's button carries its category; the override field takes it on the way out.
  document.querySelectorAll("button[data-category]").forEach(function (button) {
    button.addEventListener("click", function () { override.value = button.dataset.category; });
  });
  const overrideButton = document.getElementById("override-button");
  if (overrideButton) {
    overrideButton.addEventListener("click", function () { override.value = search.value; });
  }
  if (search) {
    search.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); overrideButton.click(); }
      if (event.key === "Escape") { search.blur(); }
    });
  }

  function press(key) {
    const button = document.querySelector('button[data-key="' + key + '"]');
    if (button) { button.click(); return true; }
    return false;
  }

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement) return;
    const key = event.key;
    if (key === "?") { help.hidden = !help.hidden; event.preventDefault(); return; }
    if (key === "/" && search) { search.focus(); event.preventDefault(); return; }
    if (key === "o" && toggle) { toggle.checked = !toggle.checked; showHeat(); return; }
    if (["a", "1", "2", "3", "s", "u"].includes(key) && press(key)) event.preventDefault();
  });
})();
