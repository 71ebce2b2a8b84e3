// The API takes the console's login cookie only with the page's CSRF token beside it.
function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]').content;
}

// The chat playground: multi-turn, streamed over SSE from /v1/chat/completions (the login
// cookie authorises it); a RAG answer's citations arrive on the stream's last chunk.
const form = document.getElementById("chat");
const log = document.getElementById("log");
const cited = document.getElementById("citations");
const history = [];

function line(role, text) {
  const p = document.createElement("p");
  p.className = "turn " + role;
  p.textContent = text;
  log.appendChild(p);
  return p;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = form.text.value.trim();
  if (!text) return;
  form.text.value = "";
  history.push({ role: "user", content: text });
  line("user", text);
  const answer = line("assistant", "");
  const body = { model: form.model.value, messages: history, stream: true };
  if (form.collection.value) body.rag = { collection: form.collection.value };
  // a task brings its prompt and decoding settings (its max_tokens too)
  if (form.task.value) body.task = form.task.value;
  else body.max_tokens = 64;
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "content-type": "application/json", "x-csrf-token": csrfToken() },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    // a refused request (a task the model lacks, qa without documents) says why
    const error = await response.json().catch(() => ({}));
    answer.textContent = `(${response.status}) ${error.error ? error.error.message : ""}`;
    history.pop();
    return;
  }
  let responseId = null;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      responseId = responseId || chunk.id;
      for (const choice of chunk.choices || []) answer.textContent += choice.delta.content || "";
      if (chunk.citations) {
        cited.innerHTML = "";
        const list = document.createElement("ol");
        for (const c of chunk.citations) {
          const item = document.createElement("li");
          item.textContent = `[${c.index}] ${c.doc_id}` + (c.page ? ` p.${c.page}` : "");
          list.appendChild(item);
        }
        cited.appendChild(list);
      }
    }
  }
  history.push({ role: "assistant", content: answer.textContent });
  if (responseId) rating(answer, responseId);
});

// Thumbs under each answer: POST /v1/feedback like any client (a thumbs-down carries the
// category picked beside it).
function rating(answer, responseId) {
  const controls = document.getElementById("rate").content.firstElementChild.cloneNode(true);
  for (const button of controls.querySelectorAll("button")) {
    button.addEventListener("click", async () => {
      const body = { response_id: responseId, rating: button.dataset.rating };
      if (body.rating === "bad") body.categories = [controls.querySelector("select").value];
      const sent = await fetch("/v1/feedback", {
        method: "POST",
        headers: { "content-type": "application/json", "x-csrf-token": csrfToken() },
        body: JSON.stringify(body),
      });
      controls.querySelector(".rated").textContent = sent.ok ? "✓" : `(${sent.status})`;
    });
  }
  answer.after(controls);
}
