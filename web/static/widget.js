"use strict";

const state = {
  sessionId: localStorage.getItem("supportmesh.session") || newSessionId(),
  config: { jaeger_ui_url: "", default_email: "user@example.com" },
};
localStorage.setItem("supportmesh.session", state.sessionId);

const $ = (id) => document.getElementById(id);
const conversation = $("conversation");
const progress = $("progress");

function newSessionId() {
  const id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random()).replace(/[^A-Za-z0-9]/g, "");
  return id.slice(0, 32);
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function addCustomer(text) {
  conversation.append(el("li", { class: "bubble customer" }, el("p", { text })));
  conversation.lastElementChild.scrollIntoView({ block: "end" });
}

function addAgent(result) {
  const item = el("li", { class: "bubble agent", "data-testid": "agent-message" });
  item.append(el("p", { text: result.response }));
  const meta = el("div", { class: "meta" });
  meta.append(el("span", { class: `badge ${result.status}`, "data-testid": "status-badge", text: result.status }));
  const action = describeAction(result.action_plan, result.execution_result);
  if (action) meta.append(el("span", { class: "action", text: action }));
  meta.append(el("a", { href: `/saga.html?id=${encodeURIComponent(result.message_id)}`, "data-testid": "timeline-link",
                        text: "timeline" }));
  if (result.trace_id && state.config.jaeger_ui_url) {
    meta.append(el("a", { href: `${state.config.jaeger_ui_url}/trace/${encodeURIComponent(result.trace_id)}`,
                          "data-testid": "trace-link", target: "_blank", rel: "noopener", text: "trace" }));
  }
  item.append(meta);
  conversation.append(item);
  item.scrollIntoView({ block: "end" });
}

function addPending(messageId) {
  const item = el("li", { class: "bubble agent pending", "data-pending": messageId },
                  el("p", { text: "Still working on it… you'll see the answer here as soon as it is ready." }));
  conversation.append(item);
  return item;
}

function setProgress(text) {
  progress.textContent = text;
  progress.hidden = !text;
}

// Follow a saga that outlived the HTTP deadline: live steps from SSE, the result when it arrives.
function follow(messageId, pending) {
  return new Promise((resolve) => {
    let done = false;
    const finish = (result) => {
      if (done) return;
      done = true;
      pending.remove();
      addAgent(result);
      setProgress("");
      resolve();
    };
    const source = new EventSource(`/api/chat/${encodeURIComponent(messageId)}/events`);
    source.addEventListener("saga", (event) => {
      const e = JSON.parse(event.data);
      setProgress(`step ${e.step_index}: ${e.actor} — ${e.kind.replace(/_/g, " ")}`);
    });
    source.addEventListener("result", (event) => { source.close(); finish(JSON.parse(event.data)); });
    source.onerror = () => {
      source.close();
      const poll = async () => {
        if (done) return;
        const { status, body } = await getJSON(`/api/chat/${encodeURIComponent(messageId)}`);
        if (status === 200) finish(body); else setTimeout(poll, 1000);
      };
      poll();
    };
  });
}

async function send(text) {
  const email = $("email").value.trim();
  localStorage.setItem("supportmesh.email", email);
  addCustomer(text);
  setProgress("The agent is on it…");
  $("send").disabled = true;
  showError("");
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ session_id: state.sessionId, customer_email: email, message: text }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status === 200) {
      addAgent(body);
      setProgress("");
    } else if (response.status === 202) {
      await follow(body.message_id, addPending(body.message_id));
    } else {
      setProgress("");
      showError(typeof body.detail === "string" ? body.detail : `The request failed (${response.status}).`);
    }
  } catch (err) {
    setProgress("");
    showError("Cannot reach the support service. Please try again.");
  } finally {
    $("send").disabled = false;
    $("message").focus();
  }
}

async function restoreHistory() {
  const { status, body } = await getJSON(`/api/sessions/${encodeURIComponent(state.sessionId)}/history`);
  if (status !== 200) return;
  for (const row of body.messages) {
    if (row.sender === "customer") addCustomer(row.content);
    else {
      const id = row.message_id.replace(/:agent$/, "");
      const { body: result } = await getJSON(`/api/chat/${encodeURIComponent(id)}`);
      addAgent(result && result.response ? result : { message_id: id, response: row.content, status: "resolved" });
    }
  }
}

async function init() {
  const { status, body } = await getJSON("/api/config");
  if (status === 200) state.config = body;
  $("email").value = localStorage.getItem("supportmesh.email") || state.config.default_email;
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("message").value.trim();
    if (!text) return;
    $("message").value = "";
    send(text);
  });
  $("message").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("new-conversation").addEventListener("click", () => {
    state.sessionId = newSessionId();
    localStorage.setItem("supportmesh.session", state.sessionId);
    conversation.replaceChildren();
  });
  await restoreHistory();
  $("message").focus();
}

init();
