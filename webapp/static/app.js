// The pages' keys and the verdicts written without leaving the page. Without JavaScript every
// verdict button is a plain form, and every image a link.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

async function writeVerdict(url, similarImageId, verdict) {
  const body = new URLSearchParams({ similar_image_id: similarImageId, verdict: verdict });
  const response = await fetch(url, {
    method: "POST",
    headers: { "X-CSRF-Token": csrfToken(), "Accept": "application/json" },
    body: body,
    credentials: "same-origin",
  });
  let answer = {};
  try { answer = await response.json(); } catch (e) { answer = { error: response.statusText }; }
  if (!response.ok) { throw new Error(answer.error || response.statusText); }
  return answer;
}

function showVerdict(item, verdict) {
  const place = item.querySelector(".verdict");
  if (!place) { return; }
  place.textContent = "";
  const badge = document.createElement("span");
  const shown = verdict.shown || (verdict.pending ? "withdrawn" : "");
  if (shown) {
    badge.className = "badge " + shown;
    badge.textContent = shown;
    place.appendChild(badge);
  }
  if (verdict.pending) {
    const note = document.createElement("span");
    note.className = "pending";
    note.textContent = "from the next night on";
    place.appendChild(note);
  }
}

function say(message) {
  let box = document.getElementById("message");
  if (!box) {
    box = document.createElement("p");
    box.id = "message";
    box.setAttribute("role", "status");
    document.querySelector("main").prepend(box);
  }
  box.textContent = message;
}

function typing(event) {
  const t = event.target;
  return event.ctrlKey || event.metaKey || event.altKey ||
    (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable));
}

const CHOICE = { r: "right", w: "wrong", u: "withdraw" };

function imagePage() {
  const list = document.getElementById("neighbours");
  if (!list) { return; }
  const items = Array.from(document.querySelectorAll(".neighbour[data-id]"));
  let at = 0;
  const select = (i) => {
    items[at].classList.remove("selected");
    at = Math.max(0, Math.min(items.length - 1, i));
    items[at].classList.add("selected");
    items[at].scrollIntoView({ block: "nearest" });
  };
  items.forEach((item, i) => item.addEventListener("mouseenter", () => select(i)));
  const judge = (item, verdict) => {
    writeVerdict(list.dataset.verdicts, item.dataset.id, verdict)
      .then((answer) => { showVerdict(item, answer.verdict); say(answer.message); })
      .catch((error) => say("Not written: " + error.message));
  };
  document.querySelectorAll(".neighbour form.judge").forEach((form) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const item = form.closest(".neighbour");
      judge(item, event.submitter ? event.submitter.value : "right");
    });
  });
  document.addEventListener("keydown", (event) => {
    if (typing(event) || !items.length) { return; }
    if (event.key === "ArrowDown") { select(at + 1); } else if (event.key === "ArrowUp") { select(at - 1); } else if (event.key === "ArrowRight") { window.location.href = items[at].dataset.href; } else if (event.key === "ArrowLeft") { history.back(); } else if (CHOICE[event.key]) { judge(items[at], CHOICE[event.key]); } else { return; }
    event.preventDefault();
  });
}

function reviewPage() {
  const pair = document.getElementById("pair");
  if (!pair) { return; }
  const judge = (verdict) => {
    writeVerdict(pair.dataset.verdicts, pair.dataset.other, verdict)
      .then(() => { window.location.href = pair.dataset.next; })
      .catch((error) => say("Not written: " + error.message));
  };
  const form = document.querySelector("form.judge");
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    judge(event.submitter ? event.submitter.value : "right");
  });
  document.addEventListener("keydown", (event) => {
    if (typing(event)) { return; }
    if (event.key === "r" || event.key === "w") { judge(CHOICE[event.key]); } else if (event.key === "ArrowRight" || event.key === "s") { window.location.href = pair.dataset.skip; } else if (event.key === "ArrowLeft") { window.location.href = pair.dataset.back; } else { return; }
    event.preventDefault();
  });
}

function uploadForm() {
  const drop = document.getElementById("drop");
  const form = document.getElementById("upload");
  if (!drop || !form) { return; }
  const input = form.querySelector('input[type="file"]');
  ["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      form.requestSubmit();
    }
  });
  input.addEventListener("change", () => { if (input.files.length) { form.requestSubmit(); } });
}

document.addEventListener("DOMContentLoaded", () => {
  imagePage();
  reviewPage();
  uploadForm();
});
