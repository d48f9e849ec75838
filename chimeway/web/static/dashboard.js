// Chimeway dashboard: live refresh of [data-live] regions, select-all, confirmations.
// Every page works without this script; it only saves reloads and clicks.
(() => {
  "use strict";
  const seconds = Number.parseInt(document.body.dataset.refresh || "0", 10);
  const regions = () => Array.from(document.querySelectorAll("[data-live][id]"));
  const toggle = document.querySelector(".live-toggle");
  let live = seconds > 0 && regions().length > 0;
  try {
    if (window.localStorage.getItem("chimeway-live") === "off") live = false;
  } catch (_) { /* storage may be unavailable */ }

  const showToggle = () => {
    if (!toggle || seconds <= 0 || regions().length === 0) return;
    toggle.hidden = false;
    toggle.setAttribute("aria-pressed", String(live));
    toggle.textContent = live ? "Live updates on" : "Live updates off";
  };

  // A region the user is working in (focus inside, a box ticked) is left alone.
  const busy = (region) =>
    (region.contains(document.activeElement) && document.activeElement !== document.body) ||
    region.querySelector("input[type=checkbox]:checked") !== null ||
    region.querySelector("details[open]") !== null;

  let inFlight = false;
  const refresh = async () => {
    if (!live || inFlight || document.hidden) return;
    inFlight = true;
    try {
      const response = await fetch(window.location.href, {
        headers: { "X-Chimeway-Live": "1" }, credentials: "same-origin", cache: "no-store",
      });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of regions()) {
        const fresh = doc.getElementById(region.id);
        if (fresh && !busy(region) && fresh.innerHTML !== region.innerHTML) {
          region.innerHTML = fresh.innerHTML;
        }
      }
      document.body.dataset.refreshed = String(Date.now());
    } catch (_) {
      /* the next tick tries again */
    } finally {
      inFlight = false;
    }
  };

  if (toggle) {
    toggle.addEventListener("click", () => {
      live = !live;
      try { window.localStorage.setItem("chimeway-live", live ? "on" : "off"); } catch (_) { /* ignore */ }
      showToggle();
      if (live) refresh();
    });
  }
  showToggle();
  if (seconds > 0) window.setInterval(refresh, seconds * 1000);

  document.addEventListener("change", (event) => {
    const box = event.target;
    if (!(box instanceof HTMLInputElement) || !box.hasAttribute("data-select-all")) return;
    const form = box.form || box.closest("form");
    if (!form) return;
    for (const item of form.querySelectorAll("input[type=checkbox][name=ids]")) item.checked = box.checked;
  });

  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("[data-confirm]") : null;
    if (button && !window.confirm(button.getAttribute("data-confirm"))) event.preventDefault();
  });
})();
