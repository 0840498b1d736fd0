// Small progressive enhancements; every page works without this file.
(function () {
  "use strict";

  // Copy buttons: <button data-copy="element-id" hidden>. Shown only where the clipboard API exists.
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    if (!navigator.clipboard) return;
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.dataset.copy);
      if (!source) return;
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        var status = document.getElementById(button.dataset.copy + "-status");
        button.textContent = "Copied";
        if (status) status.textContent = "Copied to the clipboard.";
      });
    });
  });

  // Drop-down menus (<details class="menu">): close on Escape or a click elsewhere.
  var menus = document.querySelectorAll("details.menu");
  document.addEventListener("click", function (event) {
    menus.forEach(function (menu) {
      if (menu.open && !menu.contains(event.target)) menu.open = false;
    });
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    menus.forEach(function (menu) {
      if (menu.open) {
        menu.open = false;
        menu.querySelector("summary").focus();
      }
    });
  });
})();
