// The chat widget (an ES module): the gateway's own page (web/static/widget.js) and the widget a shop embeds in its
// pages (web/static/embed.js) both mount it, each with where the API is and where the customer's token and
// session are kept.
import { actionElements, describeAction, el } from "./common.js";

// What each step does, in the customer's words (the actor's name stays visible for the curious).
export const STEP_LABELS = {
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
export const KIND_LABELS = {
  saga_started: "started", step_started: "working…", step_completed: "done", step_failed: "failed",
  retry_scheduled: "retrying", route_changed: "plan updated", action_executed: "action carried out",
  compensation_started: "undoing an action", compensation_completed: "action undone",
  compensation_failed: "could not undo an action automatically", redelivered: "resuming",
  escalated: "handed to a person", poison_message: "failed: the message could not be read",
  dead_lettered: "failed: gave up delivering it", saga_completed: "finished",
  saga_failed: "could not finish automatically", wait_started: "waiting for a yes or a colleague's decision",
  signal_received: "answer received", timer_fired: "no answer in time", signal_buffered: "answer kept",
};
// Answers given while the saga waits for a person: the final answer follows (a yes, a colleague's decision).
const PROVISIONAL = new Set(["needs_confirmation", "pending_approval"]);
const BAD_KINDS = new Set(["step_failed", "compensation_failed", "poison_message", "dead_lettered", "saga_failed"]);
const DONE_KINDS = new Set(["step_completed", "saga_completed"]);

// Mount the chat on the elements of `root` (a document or a shadow root; ids as in web/widget.html). `api` is an
// apiClient (common.js): its base is the gateway ("" on its own pages) and its store holds the token and session.
// `operatorLinks`: link each answer to its saga timeline and its trace (on the gateway's own pages, where the
// timeline's reads are signed in; not in a shop's page, whose customers have no use for the mesh's internals).
export function mountChat(root, { api, operatorLinks = true, autofocus = true }) {
  const store = api.store;
  // The session id comes from the server (POST /api/sessions): unguessable, and bound to whoever asked for it.
  const state = {
    config: { jaeger_ui_url: "" },
  };
  const getJSON = api.getJSON;

  const $ = (id) => root.getElementById(id);
  // Elements only some pages have (the sign-in rows, the guest's email, "new conversation").
  const on = (id, event, handler) => { if ($(id)) $(id).addEventListener(event, handler); };
  const conversation = $("conversation");
  const progress = $("progress");
  const timelineLink = (messageId) => operatorLinks && el("a", {
    href: `/saga.html?id=${encodeURIComponent(messageId)}`, "data-testid": "timeline-link", text: "timeline" });

  async function newSession() {
    const response = await api.call("/api/sessions", { method: "POST" });
    if (response.status !== 201) throw new Error(`could not start a conversation (${response.status})`);
    store.set("session", (await response.json()).session_id);
    conversation.replaceChildren();
    listen();
  }

  // The session's live events (GET /api/sessions/{id}/events): a colleague's replies while they have the
  // conversation, and the end of the hand-over. Reconnects after a break, a little later each time.
  let listening = null;
  function listen() {
    if (listening) listening.abort();
    const controller = new AbortController();
    listening = controller;
    const session = store.get("session");
    let delayMs = 1000;
    const connect = () => {
      if (controller.signal.aborted || !session) return;
      readEvents(`/api/sessions/${encodeURIComponent(session)}/events`, {
        open: () => { delayMs = 1000; },
        agent_reply: (data) => { const e = JSON.parse(data); addHuman(e.text, e.agent); },
        handover_closed: () => addNotice("Our colleague has closed the conversation: the assistant answers again."),
      }, controller.signal).catch(() => {}).finally(() => {
        if (controller.signal.aborted) return;
        setTimeout(connect, delayMs);
        delayMs = Math.min(delayMs * 2, 30000);
      });
    };
    connect();
  }

  // A colleague's reply (a person, named), shown as text only.
  function addHuman(text, agent) {
    const item = el("li", { class: "bubble agent human", "data-testid": "human-message" });
    item.append(el("p", { text }));
    item.append(el("div", { class: "meta" }, el("span", { class: "badge with_agent", "data-testid": "agent-name",
                                                          text: `${agent || "support"} (support team)` })));
    conversation.append(item);
    item.scrollIntoView({ block: "end" });
  }

  function addNotice(text) {
    const item = el("li", { class: "notice", "data-testid": "handover-closed", text });
    conversation.append(item);
    item.scrollIntoView({ block: "end" });
  }

  // Signed in (a token from the shop, or the demo picker) or a guest: the identity row shows which.
  function showIdentity() {
    if (!$("signed-in")) return;  // embedded: the shop's page says who is signed in
    const who = store.get("token") ? store.get("who") : "";
    $("signed-in").hidden = !who;
    $("guest").hidden = Boolean(who);
    $("who").textContent = who;
    $("sign-in").hidden = Boolean(who) || !state.config.demo_sign_in;
  }

  async function signIn(email) {
    const response = await fetch(`${api.base}/api/demo/sign-in`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ email }),
    });
    const body = await response.json().catch(() => ({}));
    if (response.status !== 200) throw new Error(typeof body.detail === "string" ? body.detail : "Sign-in failed.");
    store.set("token", body.token);
    store.set("who", body.email);
    await newSession();  // a session belongs to whoever started it: a new identity starts a new one
    showIdentity();
  }

  async function signOut() {
    store.remove("token");
    store.remove("who");
    await newSession();
    showIdentity();
  }

  async function setUpSignIn() {
    if (!state.config.demo_sign_in || !$("sign-in")) return;
    const { status, body } = await getJSON("/api/demo/customers");
    if (status !== 200) return;
    $("demo-customer").replaceChildren(...body.customers.map(
      (c) => el("option", { value: c.email, text: `${c.name} <${c.email}>` })));
    $("sign-in").addEventListener("submit", async (event) => {
      event.preventDefault();
      showError("");
      try { await signIn($("demo-customer").value); } catch (err) { showError(err.message); }
    });
  }

  // Server-sent events read with fetch (EventSource cannot send the Authorization header): calls
  // handlers[event](data) for each event until the stream ends.
  async function readEvents(path, handlers, signal) {
    const response = await api.call(path, { headers: { Accept: "text/event-stream" }, signal });
    if (response.status !== 200 || !response.body) throw new Error(`event stream: ${response.status}`);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n\r\n|\n\n|\r\r/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^(\r\n\r\n|\n\n|\r\r)/, "");
        let event = "message";
        const data = [];
        for (const line of block.split(/\r\n|\r|\n/)) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
        }
        if (data.length && Object.hasOwn(handlers, event)) handlers[event](data.join("\n"));
      }
    }
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
    if (result.status !== "with_agent") meta.append(timelineLink(result.message_id) || "");
    if (operatorLinks && result.trace_id && state.config.jaeger_ui_url) {
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

  // A step is working from the moment it is dispatched. The saga log has no record of a step starting (the hop
  // in the work stream is that record), so the next step is read from the route: the one the saga started with,
  // as a router (its step's record) or a detour of the runtime (`route_changed`) last rewrote it.
  function showDispatched(pending, e) {
    if (e.kind === "saga_started" && Array.isArray(e.data?.route)) pending.route = e.data.route;
    if (e.kind === "route_changed" && Array.isArray(e.data?.to)) pending.route = e.data.to;
    if (e.kind === "step_completed" && Array.isArray(e.data?.remaining_route) && pending.route) {
      // A router's new route: the steps taken, then the ones it chose.
      pending.route = [...pending.route.slice(0, e.step_index + 1), ...e.data.remaining_route];
    }
    const next = e.kind === "saga_started" ? 0 : e.kind === "step_completed" ? e.step_index + 1 : -1;
    const actor = next >= 0 ? pending.route?.[next] : undefined;
    if (actor) showStep(pending, { kind: "step_started", actor, step_index: next });
  }

  function giveUp(pending, messageId, seconds) {
    pending.classList.add("timed-out");
    pending.querySelector("p").textContent =
      `No answer yet after ${Math.round(seconds)} seconds. Your message id is ${messageId}: the answer will be ` +
      "kept for it, and shown in this conversation when you reload the page.";
    pending.append(el("div", { class: "meta" }, timelineLink(messageId)));
    pending.setAttribute("data-testid", "timed-out");
    setProgress("");
  }

  // Follow a saga until its result: live steps from the server-sent events (the result is their last event),
  // polling if the stream breaks; give up after the gateway's follow_timeout_s with the message id.
  function follow(messageId, pending) {
    const limitS = Number(state.config.follow_timeout_s) || 180;
    return new Promise((resolve) => {
      let done = false;
      const events = new AbortController();
      let pollTimer = null;
      const seen = [];
      const stop = () => {
        done = true;
        events.abort();
        clearTimeout(pollTimer);
        clearTimeout(limitTimer);
        resolve();
      };
      const finish = (result) => {
        // Following the reply to a question already shown, its provisional answer is not news: wait for the final.
        if (done || (PROVISIONAL.has(result.status) && asked.has(result.message_id))) return false;
        pending.remove();
        answered(result, seen);
        setProgress("");
        stop();
        return true;
      };
      const limitTimer = setTimeout(() => {
        if (!done) { giveUp(pending, messageId, limitS); stop(); }
      }, limitS * 1000);
      const poll = async () => {
        if (done) return;
        try {
          const { status, body } = await getJSON(`/api/chat/${encodeURIComponent(messageId)}`);
          if (status === 200 && finish(body)) return;
        } catch (_) { /* the gateway may be restarting: try again */ }
        if (!done) pollTimer = setTimeout(poll, 1000);
      };
      readEvents(`/api/chat/${encodeURIComponent(messageId)}/events`, {
        saga: (data) => {
          const e = JSON.parse(data);
          seen.push(e);
          showStep(pending, e);
          showDispatched(pending, e);
        },
        result: (data) => finish(JSON.parse(data)),
      }, events.signal).then(poll, poll);  // a stream that ends or breaks without the result: poll
    });
  }

  // Message ids whose provisional answer (a question, "a colleague will review it") is on screen.
  const asked = new Set();

  // Show an answer; a provisional one is remembered, and a pending approval is watched until a colleague decides,
  // so the open widget shows the outcome without a reload.
  function answered(result, events) {
    addAgent(result, events);
    if (!PROVISIONAL.has(result.status)) return;
    asked.add(result.message_id);
    if (result.status === "pending_approval") awaitDecision(result.message_id);
  }

  async function awaitDecision(messageId) {
    for (;;) {
      await new Promise((resolve) => setTimeout(resolve, 3000));
      try {
        const { status, body } = await getJSON(`/api/chat/${encodeURIComponent(messageId)}`);
        if (status === 404) return;
        if (status === 200 && !PROVISIONAL.has(body.status)) return addAgent(body, await compensations(body));
      } catch (_) { /* the gateway may be restarting: try again */ }
    }
  }

  function post(text, email) {
    // A signed-in customer is who the token says (no email in the body); a guest may name the email of an order.
    const body = { session_id: store.get("session"), message: text };
    if (email && !store.get("token")) body.customer_email = email;
    // respond-async: the gateway answers 202 with the message id at once, so every message shows its steps
    // live; a gateway that ignores the preference answers 200 within its deadline, which works too.
    return api.call("/api/chat", {
      method: "POST",
      headers: { "Content-Type": "application/json", Prefer: "respond-async" },
      body: JSON.stringify(body),
    });
  }

  async function send(text) {
    const email = $("email") ? $("email").value.trim() : "";
    if ($("email")) store.set("email", email);
    addCustomer(text);
    setProgress("The agent is on it…");
    $("send").disabled = true;
    showError("");
    try {
      let response = await post(text, email);
      if (response.status === 403 && !store.get("token")) {
        // The stored session is not this guest's (someone signed in or out elsewhere): start a fresh one.
        await newSession();
        addCustomer(text);
        response = await post(text, email);
      }
      const body = await response.json().catch(() => ({}));
      if (response.status === 401 && !$("sign-out")) {  // embedded: the shop's page signs the customer in again
        setProgress("");
        showError("Your sign-in has expired or is not valid: please reload the page.");
        return;
      }
      if (response.status === 401) {
        await signOut();
        setProgress("");
        showError("Your sign-in has expired or is not valid: please sign in again.");
        return;
      }
      if (response.status === 200) {
        answered(body);
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
      const undoing = (e) => e.kind === "action_executed" || e.kind.startsWith("compensation_");
      return status === 200 ? body.events.filter(undoing) : [];
    } catch (_) {
      return [];
    }
  }

  async function restoreHistory() {
    const { status, body } = await getJSON(`/api/sessions/${encodeURIComponent(store.get("session"))}/history`);
    if (status === 404 || status === 401) {  // not this customer's session (or the token expired): a fresh one
      if (status === 401) store.remove("token");
      await newSession();
      return;
    }
    if (status !== 200) return;
    for (const row of body.messages) {
      if (row.sender === "customer") addCustomer(row.content);
      else if (row.agent) addHuman(row.content, row.agent);
      else {
        const id = row.message_id.split(":")[0];  // `<id>:agent`, or `<id>:confirmation` after a decision
        const { body: result } = await getJSON(`/api/chat/${encodeURIComponent(id)}`);
        // A saga that asked a question and then answered again has one result (its last) for two rows.
        if (result && result.response === row.content) answered(result, await compensations(result));
        else addAgent({ message_id: id, response: row.content, status: "resolved" });
      }
    }
  }

  async function init() {
    const { status, body } = await getJSON("/api/config");
    if (status === 200) state.config = body;
    if ($("email")) $("email").value = store.get("email");
    if (!store.get("session")) await newSession();
    await setUpSignIn();
    showIdentity();
    on("sign-out", "click", () => signOut().catch((err) => showError(err.message)));
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
    on("new-conversation", "click", () => newSession().catch((err) => showError(err.message)));
    await restoreHistory();
    listen();
    showIdentity();
    if (autofocus) $("message").focus();
  }

  return init();
}
