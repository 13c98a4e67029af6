// The rating page: asks the server for this rater's current set, shows it, and posts each answer
// (one request each); the reply to the last answer of a set is the next set. Everything it knows
// is opaque ids, the prompt and pixels.
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

function render(state) {
  document.getElementById("bar").value = state.done ? 1 : (state.index - 1) / state.total;
  if (state.done) {
    document.getElementById("progress").textContent = `${state.total} of ${state.total} sets answered`;
    document.getElementById("task").hidden = true;
    document.getElementById("done").hidden = false;
    current = state;
    return;
  }
  document.getElementById("progress").textContent = `Set ${state.index} of ${state.total}`;
  if (!current || current.set !== state.set) {
    const refs = document.getElementById("references");
    refs.replaceChildren(...state.references.map((src) => el("img", {src, alt: "reference image"})));
    document.getElementById("prompt").textContent = state.prompt;
    document.getElementById("candidates").replaceChildren(...state.images.map((image, i) =>
      el("figure", {}, [el("img", {src: image.src, alt: `image ${letters[i]}`}), el("figcaption", {textContent: letters[i]})])));
    const form = document.getElementById("answers");
    form.replaceChildren(...state.questions.map((q) => {
      const options = [...state.images.map((image, i) => [image.id, letters[i]]), [state.undecided, "Undecided"]];
      return el("fieldset", {}, [
        el("legend", {textContent: q.text}),
        ...options.map(([value, label]) => el("label", {}, [
          el("input", {type: "radio", name: q.key, value}), ` ${label}`,
        ])),
      ]);
    }));
    form.onchange = updateNext;
    window.scrollTo(0, 0);
  }
  for (const [question, choice] of Object.entries(state.answered)) {
    for (const input of document.querySelectorAll(`input[name="${question}"]`)) {
      input.checked = input.value === choice;
      input.disabled = true;
    }
  }
  current = state;
  document.getElementById("task").hidden = false;
  updateNext();
}

function updateNext() {
  const ready = current && !current.done &&
    current.questions.every((q) => document.querySelector(`input[name="${q.key}"]:checked`));
  document.getElementById("next").disabled = !ready;
}

async function next() {
  const button = document.getElementById("next");
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

document.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("next").addEventListener("click", next);
  try {
    render(await call("state"));
  } catch (err) {
    showError(`Could not load the study (${err.message}).`);
  }
});
