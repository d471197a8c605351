// The review desk. Without this script the page is plain forms; with it the desk keeps the next
// few claimed items ready (rendered by the server, their images preloaded), shows the next one as
// soon as a key is pressed, and posts the decision in the background, with a visible retry when a
// post fails. Every handler is here: the page's CSP allows no inline script.
(function () {
  "use strict";
  const app = document.getElementById("desk-app");
  if (!app) return;
  const desk = document.getElementById("desk");
  const filtersForm = document.getElementById("filters");
  const undoForm = document.getElementById("undo-form");
  const notice = document.getElementById("notice");
  const retryBox = document.getElementById("retry");
  const help = document.getElementById("help");
  const csrf = undoForm.querySelector('input[name="csrf_token"]').value;
  const leaseSeconds = Number(app.dataset.leaseSeconds) || 600;

  const AHEAD = 3; // items kept ready beyond the one shown
  const MIN_GAP_MS = 150; // a second press sooner than this is a bounce, not a decision
  const ready = []; // [{external_id, html}] claimed, not yet shown
  const outbox = []; // decisions not yet accepted by the server, oldest first
  let fetching = false;
  let sending = false;
  let lastPress = 0;
  let retryTimer = null;
  let retryDelay = 1000;

  function currentId() {
    const item = desk.querySelector(".desk-item");
    return item ? item.dataset.externalId : null;
  }

  function filterFields() {
    const fields = new URLSearchParams();
    for (const [name, value] of new FormData(filtersForm)) {
      if (value !== "") fields.append(name, value);
    }
    return fields;
  }

  function post(url, fields) {
    fields.set("csrf_token", csrf);
    return fetch(url, {
      method: "POST",
      body: fields,
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    });
  }

  // An item on the desk: its id, its HTML, and the ids of its group's members (leased with it).
  function itemOf(article) {
    return {
      external_id: article.dataset.externalId,
      html: article.outerHTML,
      members: JSON.parse(article.dataset.members || "[]"),
    };
  }

  // Every id the desk holds a lease on: the item shown, those kept ready, their groups.
  function held() {
    const items = ready.slice();
    const shown = desk.querySelector(".desk-item");
    if (shown) items.unshift(itemOf(shown));
    return items.flatMap((item) => [item.external_id].concat(item.members || []));
  }

  // The browser fetches and decodes an item's images before it is shown, so showing it is a swap.
  function preload(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    template.content.querySelectorAll("img").forEach(function (img) {
      const image = new Image();
      image.src = img.getAttribute("src");
      if (image.decode) image.decode().catch(function () {});
    });
  }

  function topUp() {
    if (fetching || ready.length >= AHEAD) return;
    fetching = true;
    const fields = filterFields();
    fields.set("n", String(AHEAD - ready.length));
    const posting = outbox.flatMap((d) => d.fields.filter(([k]) => k === "external_id" || k === "member"));
    held().concat(posting.map(([, id]) => id)).forEach((id) => fields.append("exclude", id));
    post("/review/next", fields)
      .then((response) => (response.ok ? response.json() : { items: [] }))
      .then(function (body) {
        body.items.forEach(function (item) {
          if (!held().includes(item.external_id)) {
            preload(item.html);
            ready.push(item);
          }
        });
        if (!currentId() && ready.length) show(ready.shift());
      })
      .catch(function () {})
      .finally(function () { fetching = false; });
  }

  function show(item) {
    if (item) {
      desk.innerHTML = item.html;
      bindItem();
    } else {
      const empty = document.createElement("h1");
      empty.id = "empty";
      empty.textContent = "Nothing waits for review.";
      desk.replaceChildren(empty);
    }
    topUp();
  }

  function say(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function showProgress(progress) {
    if (!progress) return;
    document.getElementById("waiting-total").textContent = String(progress.waiting);
    document.getElementById("skipped").textContent = String(progress.skipped_by_you);
    document.getElementById("decided-today").textContent = String(progress.decided_today);
    document.getElementById("per-hour").textContent = String(progress.per_hour);
    const perReason = document.getElementById("per-reason");
    perReason.replaceChildren();
    Object.keys(progress.per_reason).sort().forEach(function (reason) {
      const pill = document.createElement("span");
      pill.className = "pill reason-" + reason;
      pill.textContent = reason.replace(/_/g, " ") + ": " + progress.per_reason[reason];
      perReason.append(pill, " ");
    });
    showLast(progress.last);
  }

  function showLast(last) {
    undoForm.hidden = !last;
    if (!last) return;
    document.getElementById("undo-id").value = last.external_id;
    document.getElementById("undo-source").value = last.source;
    const text = document.getElementById("last-text");
    text.replaceChildren(last.action + (last.category ? " → " + last.category : "") + " on ");
    const em = document.createElement("em");
    em.textContent = last.title || last.external_id;
    text.append(em);
  }

  // Decisions go out one at a time, in order; a failed one is retried (and shown) until it lands.
  function send() {
    if (sending || retryTimer !== null || !outbox.length) return;
    sending = true;
    const decision = outbox[0];
    post("/review/decide", new URLSearchParams(decision.fields))
      .then(function (response) {
        return response.json().catch(() => ({})).then((body) => ({ response, body }));
      })
      .then(function ({ response, body }) {
        if (response.status >= 500) throw new Error("the server answered " + response.status);
        outbox.shift();
        retryDelay = 1000;
        if (response.ok) showProgress(body.progress);
        // Refused (decided by someone else, lease lost): said once, not retried.
        else say(body.detail || "The decision on " + decision.external_id + " was refused.");
        if (!outbox.length) retryBox.hidden = true;
      })
      .catch(function (error) {
        document.getElementById("retry-text").textContent =
          outbox.length + " decision(s) not saved yet (" + error.message + "); retrying.";
        retryBox.hidden = false;
        retryTimer = setTimeout(function () { retryTimer = null; send(); }, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      })
      .finally(function () {
        sending = false;
        send();
      });
  }

  function decide(action, category) {
    const form = document.getElementById("decide-form");
    if (!form) return;
    const fields = new URLSearchParams(new FormData(form));
    fields.set("action", action);
    if (category) fields.set("category", category);
    else fields.delete("category");
    const shown = desk.querySelector(".desk-item");
    outbox.push({
      external_id: fields.get("external_id"),
      fields: Array.from(fields.entries()),
      item: shown ? itemOf(shown) : { external_id: fields.get("external_id"), html: "", members: [] },
    });
    say("");
    show(ready.shift());
    send();
  }

  function putBack() {
    const shown = desk.querySelector(".desk-item");
    if (shown) ready.unshift(itemOf(shown));
  }

  function undo() {
    // Not sent yet: taken back here (the lease is still this moderator's), nothing to ask.
    const unsent = outbox.length && !(sending && outbox.length === 1) ? outbox.pop() : null;
    if (unsent) {
      putBack();
      show(unsent.item);
      say("");
      return;
    }
    if (sending || outbox.length) { setTimeout(undo, 50); return; } // the decision lands first
    const fields = new URLSearchParams(new FormData(undoForm));
    post("/review/undo", fields)
      .then((r) => r.json().then((body) => ({ ok: r.ok, body })))
      .then(function ({ ok, body }) {
        if (!ok) { say(body.detail || "Nothing to undo."); return; }
        showProgress(body.progress);
        const item = (body.items || [])[0];
        if (item) { putBack(); show(item); }
      })
      .catch(() => say("Undo failed; try again."));
  }

  function bindItem() {
    const heat = document.getElementById("heat");
    const toggle = document.getElementById("heat-toggle");
    const opacity = document.getElementById("heat-opacity");
    if (heat && toggle && opacity) {
      const showHeat = function () {
        heat.hidden = !toggle.checked;
        heat.style.opacity = String(Number(opacity.value) / 100);
      };
      toggle.addEventListener("change", showHeat);
      opacity.addEventListener("input", showHeat);
      showHeat();
    }
    const box = document.getElementById("photo-box");
    if (box) box.addEventListener("click", () => box.classList.toggle("zoomed"));
    const form = document.getElementById("decide-form");
    const search = document.getElementById("search");
    const note = document.getElementById("note");
    if (!form) return;
    // Every button of the form decides through the desk, not by a page load.
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      const button = event.submitter;
      if (!button) return;
      if (button.id === "override-button") {
        if (search.value.trim()) decide("override", search.value.trim());
        return;
      }
      decide(button.value, button.dataset.category || null);
    });
    search.addEventListener("keydown", function (event) {
      if (event.key === "Enter") {
        event.preventDefault();
        if (search.value.trim()) decide("override", search.value.trim());
      }
      if (event.key === "Escape") search.blur();
    });
    note.addEventListener("keydown", function (event) {
      if (event.key !== "Enter") return;
      // Enter alone never decides (a note is typed, then the action chosen); Ctrl+Enter does.
      event.preventDefault();
      if (event.ctrlKey || event.metaKey) {
        if (search.value.trim()) decide("override", search.value.trim());
        else if (form.querySelector('button[data-key="a"]')) decide("accept", null);
      }
    });
    note.addEventListener("keyup", function (event) { if (event.key === "Escape") note.blur(); });
  }

  // Filters: a change takes effect at once and hands the keyboard back to the desk.
  function applyFilters() {
    const fields = new URLSearchParams();
    held().forEach((id) => fields.append("external_id", id));
    ready.length = 0;
    const query = filterFields().toString();
    history.replaceState(null, "", "/review" + (query ? "?" + query : ""));
    post("/review/release", fields).finally(function () {
      desk.replaceChildren();
      topUp();
    });
    if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
  }
  filtersForm.addEventListener("submit", function (event) { event.preventDefault(); applyFilters(); });
  filtersForm.querySelectorAll("select").forEach((select) => select.addEventListener("change", applyFilters));
  filtersForm.querySelectorAll("input").forEach(function (input) {
    input.addEventListener("keydown", function (event) {
      if (event.key === "Enter") { event.preventDefault(); applyFilters(); }
      if (event.key === "Escape") input.blur();
    });
  });
  filtersForm.querySelectorAll("select").forEach(function (select) {
    select.addEventListener("keydown", function (event) { if (event.key === "Escape") select.blur(); });
  });

  undoForm.addEventListener("submit", function (event) { event.preventDefault(); undo(); });
  document.getElementById("retry-button").addEventListener("click", function () {
    clearTimeout(retryTimer);
    retryTimer = null;
    retryDelay = 1000;
    send();
  });

  document.addEventListener("keydown", function (event) {
    const target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement || target instanceof HTMLTextAreaElement) return;
    const key = event.key;
    if (key === "?") { help.hidden = !help.hidden; event.preventDefault(); return; }
    if (key === "f") { document.getElementById("filter-category").focus(); event.preventDefault(); return; }
    if (key === "/") {
      const search = document.getElementById("search");
      if (search) { search.focus(); event.preventDefault(); }
      return;
    }
    if (key === "o") {
      const toggle = document.getElementById("heat-toggle");
      if (toggle) { toggle.click(); }
      return;
    }
    if (key === "z" || (key === "Escape" && document.querySelector(".photo.zoomed"))) {
      const box = document.getElementById("photo-box");
      if (box) box.classList.toggle("zoomed");
      return;
    }
    if (key === "x") {
      // This item alone: the group's members are left for later.
      desk.querySelectorAll('#group input[name="member"]').forEach((box) => { box.checked = !box.checked; });
      return;
    }
    if (key === "u") { event.preventDefault(); if (!undoForm.hidden || outbox.length) undo(); return; }
    if (!["a", "1", "2", "3", "s"].includes(key)) return;
    const button = desk.querySelector('button[data-key="' + key + '"]');
    if (!button) return;
    event.preventDefault();
    const now = performance.now();
    if (now - lastPress < MIN_GAP_MS) return;
    lastPress = now;
    decide(button.value, button.dataset.category || null);
  });

  // Leases: renewed while the desk is open; those of items kept ready are given back on leaving.
  // The item on screen keeps its lease, so a reload shows it again.
  setInterval(function () {
    const fields = new URLSearchParams();
    held().forEach((id) => fields.append("external_id", id));
    if (fields.has("external_id")) post("/review/renew", fields).catch(function () {});
  }, (leaseSeconds * 1000) / 3);
  window.addEventListener("pagehide", function () {
    const ids = ready.flatMap((item) => [item.external_id].concat(item.members || []));
    if (!ids.length) return;
    const fields = new URLSearchParams([["csrf_token", csrf]]);
    ids.forEach((id) => fields.append("external_id", id));
    // keepalive: the request outlives the page.
    fetch("/review/release", { method: "POST", body: fields, keepalive: true, credentials: "same-origin" });
  });

  if (currentId()) bindItem();
  topUp();
})();
