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

// An answer; `events` are the saga's events seen while following it (a compensation seen there, and not yet in
// the result's execution result, still shows the action as reversed).
function addAgent(result, events) {
  const item = el("li", { class: "bubble agent", "data-testid": "agent-message" });
  item.append(el("p", { text: result.response }));
  const meta = el("div", { class: "meta" });
  meta.append(el("span", { class: `badge ${result.status}`, "data-testid": "status-badge", text: result.status }));
  meta.append(...actionElements(describeAction(result.action_plan, result.execution_result, events)));
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

function setProgress(text) {
  progress.textContent = text;
  progress.hidden = !text;
}

// What each step does, in the customer's words (the actor's name stays visible for the curious).
const STEP_LABELS = {
  sentiment_analyzer: "Reading your message",
  intent_analyzer: "Understanding what you need",
  context_retriever: "Looking up your account and orders",
  decision_router: "Deciding what to do",
  response_generator: "Writing a reply",
  guardrail_validator: "Checking the reply",
  execution_coordinator: "Carrying out the action",
  escalation_router: "Handing over to a person",
  response_aggregator: "Finishing up",
};
// Every kind of saga event (saga/log.py EventKind), as the customer reads it.
const KIND_LABELS = {
  saga_started: "started", step_started: "working…", step_completed: "done", step_failed: "failed",
  retry_scheduled: "retrying", route_changed: "plan updated", action_executed: "action carried out",
  compensation_started: "undoing an action", compensation_completed: "action undone",
  compensation_failed: "could not undo an action automatically", redelivered: "resuming",
  escalated: "handed to a person", poison_message: "failed: the message could not be read",
  dead_lettered: "failed: gave up delivering it", saga_completed: "finished",
  saga_failed: "could not finish automatically",
};
const BAD_KINDS = new Set(["step_failed", "compensation_failed", "poison_message", "dead_lettered", "saga_failed"]);
const DONE_KINDS = new Set(["step_completed", "saga_completed"]);

// A pending answer: the agent's bubble with one line per step, updated live from the saga's events.
function addPending(messageId) {
  const steps = el("ol", { class: "steps", "data-testid": "progress-steps", "aria-label": "Progress" });
  const item = el("li", { class: "bubble agent pending", "data-pending": messageId },
                  el("p", { text: "Working on it…" }), steps);
  conversation.append(item);
  item.scrollIntoView({ block: "end" });
  return item;
}

function showStep(pending, e) {
  const label = Object.hasOwn(KIND_LABELS, e.kind) ? KIND_LABELS[e.kind] : null;
  if (!label || !e.actor || e.actor === "gateway") return;
  const key = `${e.step_index}:${e.actor}`;
  const steps = pending.querySelector(".steps");
  let line = steps.querySelector(`[data-step="${CSS.escape(key)}"]`);
  if (!line) {
    line = el("li", { "data-step": key });
    steps.append(line);
  }
  line.className = DONE_KINDS.has(e.kind) ? "done" : BAD_KINDS.has(e.kind) ? "bad" : "working";
  line.textContent = `${STEP_LABELS[e.actor] || e.actor} (${e.actor}): ${label}`;
  setProgress(line.textContent);
  pending.scrollIntoView({ block: "end" });
}

function giveUp(pending, messageId, seconds) {
  pending.classList.add("timed-out");
  pending.querySelector("p").textContent =
    `No answer yet after ${Math.round(seconds)} seconds. Your message id is ${messageId}: the answer will be ` +
    "kept for it, and shown in this conversation when you reload the page.";
  pending.append(el("div", { class: "meta" },
                    el("a", { href: `/saga.html?id=${encodeURIComponent(messageId)}`, "data-testid": "timeline-link",
                              text: "timeline" })));
  pending.setAttribute("data-testid", "timed-out");
  setProgress("");
}

// Follow a saga until its result: live steps from the server-sent events (the result is their last event),
// polling if the stream breaks; give up after the gateway's follow_timeout_s with the message id.
function follow(messageId, pending) {
  const limitS = Number(state.config.follow_timeout_s) || 180;
  return new Promise((resolve) => {
    let done = false;
    let source = null;
    let pollTimer = null;
    const seen = [];
    const stop = () => {
      done = true;
      if (source) source.close();
      clearTimeout(pollTimer);
      clearTimeout(limitTimer);
      resolve();
    };
    const finish = (result) => {
      if (done) return;
      pending.remove();
      addAgent(result, seen);
      setProgress("");
      stop();
    };
    const limitTimer = setTimeout(() => { if (!done) { giveUp(pending, messageId, limitS); stop(); } }, limitS * 1000);
    const poll = async () => {
      if (done) return;
      try {
        const { status, body } = await getJSON(`/api/chat/${encodeURIComponent(messageId)}`);
        if (status === 200) return finish(body);
      } catch (_) { /* the gateway may be restarting: try again */ }
      if (!done) pollTimer = setTimeout(poll, 1000);
    };
    source = new EventSource(`/api/chat/${encodeURIComponent(messageId)}/events`);
    source.addEventListener("saga", (event) => {
      const e = JSON.parse(event.data);
      seen.push(e);
      showStep(pending, e);
    });
    source.addEventListener("result", (event) => finish(JSON.parse(event.data)));
    source.onerror = () => {
      source.close();
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
    // respond-async: the gateway answers 202 with the message id at once, so every message shows its steps
    // live; a gateway that ignores the preference answers 200 within its deadline, which works too.
    const response = await fetch("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json", Prefer: "respond-async" },
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

// The action and compensation events of an escalated message (only an escalated saga undoes anything), so a
// reloaded conversation shows its actions as the live one did.
async function compensations(result) {
  if (result.status !== "escalated") return [];
  try {
    const { status, body } = await getJSON(`/api/sagas/${encodeURIComponent(result.message_id)}`);
    return status === 200 ? body.events.filter((e) => e.kind === "action_executed" || e.kind.startsWith("compensation_")) : [];
  } catch (_) {
    return [];
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
      if (result && result.response) addAgent(result, await compensations(result));
      else addAgent({ message_id: id, response: row.content, status: "resolved" });
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
