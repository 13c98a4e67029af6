// The rating page: asks the server for this rater's state — the instructions until they agree, then
// their current set, then the end — shows it, and posts each answer (one request each); the reply to
// the last answer of a set is the next set. Everything it knows is opaque ids, the prompt and pixels.
// Keys: 1…K choose that image for the first unanswered question, U undecided, Enter next (or start,
// or close an enlarged image); a click on an image enlarges it.
"use strict";

const token = location.pathname.split("/").pop();
const letters = "ABCDEFGHIJ";
let current = null;

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

function showError(text) {
  const box = document.getElementById("error");
  box.textContent = text;
  box.hidden = !text;
  if (text) box.scrollIntoView({block: "center"});
}

async function call(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify(body),
  };
  const response = await fetch(`/api/${token}/${path}`, options);
  if (!response.ok) throw new Error((await response.text()).trim());
  return response.json();
}

function show(section) {
  for (const id of ["consent", "task", "done"]) document.getElementById(id).hidden = id !== section;
}

function zoom(src) {
  const dialog = document.getElementById("zoom");
  const image = document.getElementById("zoom-image");
  image.onload = () => {
    // enlarged past its own size, a small image is shown in its pixels on purpose; else smoothly
    image.classList.toggle("tiny", image.naturalWidth < 256);
  };
  image.src = src;
  dialog.showModal();
}

function render(state) {
  document.getElementById("bar").value = state.done ? 1 : Math.max(0, state.index - 1) / state.total;
  if (state.consent) {
    document.getElementById("progress").textContent = `${state.total} sets`;
    document.getElementById("instructions").textContent = state.instructions;
    show("consent");
    current = state;
    return;
  }
  if (state.done) {
    document.getElementById("progress").textContent = `${state.total} of ${state.total} sets answered`;
    const completion = state.completion || {};
    document.getElementById("code").hidden = !completion.code;
    document.getElementById("code-value").textContent = completion.code || "";
    document.getElementById("return").hidden = !completion.url;
    if (completion.url) document.getElementById("return-link").href = completion.url;
    document.getElementById("close").hidden = Boolean(completion.url);
    show("done");
    current = state;
    return;
  }
  document.getElementById("progress").textContent = `Set ${state.index} of ${state.total}`;
  if (!current || current.set !== state.set) {
    const refs = document.getElementById("references");
    refs.replaceChildren(...state.references.map((src) =>
      el("img", {src, alt: "reference image", onclick: () => zoom(src)})));
    document.getElementById("prompt").textContent = state.prompt;
    const candidates = document.getElementById("candidates");
    candidates.replaceChildren(...state.images.map((image, i) =>
      el("figure", {}, [
        el("img", {src: image.src, alt: `image ${letters[i]}`, onclick: () => zoom(image.src)}),
        el("figcaption", {textContent: `${letters[i]} (${i + 1})`}),
      ])));
    const form = document.getElementById("answers");
    form.replaceChildren(...state.questions.map((q) => {
      const options = [...state.images.map((image, i) => [image.id, `${letters[i]}`]), [state.undecided, "Undecided"]];
      return el("fieldset", {}, [
        el("legend", {textContent: q.text}),
        ...options.map(([value, label]) => el("label", {}, [
          el("input", {type: "radio", name: q.key, value}), ` ${label}`,
        ])),
      ]);
    }));
    form.onchange = updateNext;
    document.getElementById("keys").textContent =
      `Keys: 1–${state.images.length} choose an image for the first open question, U undecided, Enter next.`;
    window.scrollTo(0, 0);
  }
  for (const [question, choice] of Object.entries(state.answered)) {
    for (const input of document.querySelectorAll(`input[name="${question}"]`)) {
      input.checked = input.value === choice;
      input.disabled = true;
    }
  }
  current = state;
  show("task");
  updateNext();
}

function updateNext() {
  const ready = current && !current.done && !current.consent &&
    current.questions.every((q) => document.querySelector(`input[name="${q.key}"]:checked`));
  document.getElementById("next").disabled = !ready;
}

async function next() {
  const button = document.getElementById("next");
  if (button.disabled) return;
  button.disabled = true;
  showError("");
  try {
    let state = current;
    for (const q of current.questions) {
      if (q.key in current.answered) continue;
      const choice = document.querySelector(`input[name="${q.key}"]:checked`).value;
      state = await call("answer", {set: current.set, question: q.key, choice});
    }
    render(state);
  } catch (err) {
    showError(`Could not save the answer (${err.message}). Reload the page to continue.`);
  }
}

async function start() {
  const button = document.getElementById("start");
  if (button.disabled) return;
  button.disabled = true;
  showError("");
  // a recruiting platform's participant id in the link (Prolific: ?PROLIFIC_PID=…), kept with the rater
  const external = new URLSearchParams(location.search).get("PROLIFIC_PID");
  try {
    render(await call("consent", {external_id: external || null}));
  } catch (err) {
    showError(`Could not start (${err.message}). Reload the page to try again.`);
    button.disabled = false;
  }
}

function choose(value) {
  // the first question not yet chosen in the form takes the key's choice
  for (const q of current.questions) {
    if (q.key in current.answered) continue;
    if (document.querySelector(`input[name="${q.key}"]:checked`)) continue;
    const input = document.querySelector(`input[name="${q.key}"][value="${value}"]`);
    if (input) {
      input.checked = true;
      updateNext();
    }
    return;
  }
}

function onKey(event) {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  const dialog = document.getElementById("zoom");
  if (dialog.open) {
    if (event.key === "Enter") dialog.close();
    return;
  }
  if (!current) return;
  if (current.consent) {
    if (event.key === "Enter" && document.getElementById("agree").checked) start();
    return;
  }
  if (current.done) return;
  if (event.key === "Enter") {
    event.preventDefault();
    next();
  } else if (event.key === "u" || event.key === "U") {
    choose(current.undecided);
  } else if (/^[1-9]$/.test(event.key) && Number(event.key) <= current.images.length) {
    choose(current.images[Number(event.key) - 1].id);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("next").addEventListener("click", next);
  document.getElementById("start").addEventListener("click", start);
  document.getElementById("agree").addEventListener("change", (event) => {
    document.getElementById("start").disabled = !event.target.checked;
  });
  const dialog = document.getElementById("zoom");
  dialog.addEventListener("click", () => dialog.close());
  document.addEventListener("keydown", onKey);
  try {
    render(await call("state"));
  } catch (err) {
    showError(`Could not load the study (${err.message}).`);
  }
});
