// The support console (web/console.html): an agent's token in sessionStorage, the queue polled every 2 seconds
// (GET /api/console/queue), and for the selected item its conversation, its saga timeline and the actions (reply,
// close; approve and deny for a saga waiting for a decision). Text is only ever set with textContent (common.js
// el): nothing a customer wrote is parsed as HTML.
import { el } from "./common.js";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
const store = {
  get: () => sessionStorage.getItem("supportmesh.agent-token") || "",
  set: (token) => sessionStorage.setItem("supportmesh.agent-token", token),
  remove: () => sessionStorage.removeItem("supportmesh.agent-token"),
};
const state = { selected: null, items: new Map(), timer: null, shown: "" };

async function call(path, init = {}) {
  const headers = { Accept: "application/json", Authorization: `Bearer ${store.get()}`, ...(init.headers || {}) };
  const response = await fetch(path, { ...init, headers });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (response.status === 401 || response.status === 403) {
    signOut(response.status === 403 ? "This token is not an agent's token." : "The token is not valid (any more).");
  }
  return { status: response.status, body };
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function say(text) { $("status").textContent = text; }

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "";
}

function signIn(token) {
  store.set(token.trim());
  $("sign-in").hidden = true;
  $("sign-out").hidden = false;
  $("workspace").hidden = false;
  showError("");
  poll();
}

function signOut(reason) {
  store.remove();
  clearTimeout(state.timer);
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("workspace").hidden = true;
  showError(reason || "");
}

function queueEntry(item) {
  const who = item.verified ? item.customer_email : `guest (unverified: ${item.customer_email})`;
  const waiting = item.customer_messages ? ` — ${item.customer_messages} new` : "";
  const button = el("button", { type: "button", class: "link-button", "data-testid": "queue-item",
                                "data-session": item.session_id, "aria-current": null },
                    el("strong", { text: item.kind === "approval" ? "Approval" : "Hand-over" }),
                    el("span", { text: ` ${who} — ${item.reason}${waiting}` }));
  if (state.selected && state.selected.session_id === item.session_id) button.setAttribute("aria-current", "true");
  button.addEventListener("click", () => select(item));
  const last = el("p", { class: "muted", "data-testid": "queue-last-message",
                         text: item.last_customer_message ? `“${item.last_customer_message}”` : "" });
  return el("li", { "data-kind": item.kind }, button, last);
}

async function poll() {
  clearTimeout(state.timer);
  if (!store.get()) return;
  try {
    const { status, body } = await call("/api/console/queue");
    if (status === 200) {
      const known = new Set(state.items.keys());
      const list = $("queue");
      list.replaceChildren(...body.items.map(queueEntry));
      state.items = new Map(body.items.map((i) => [i.session_id, i]));
      $("queue-count").textContent = `(${body.items.length})`;
      const fresh = body.items.filter((i) => !known.has(i.session_id)).length;
      if (fresh && known.size) say(`${fresh} new in the queue.`);
      if (state.selected) {
        const now = state.items.get(state.selected.session_id);
        if (now && now.customer_messages + now.agent_replies !== state.shown) await show(now);
      }
    }
  } catch (_) {
    say("Cannot reach the gateway; trying again.");
  }
  if (store.get()) state.timer = setTimeout(poll, POLL_MS);
}

async function select(item) {
  state.selected = item;
  state.shown = "";
  $("detail").hidden = false;
  await show(item);
  $("reply-text").focus();
}

function messageRow(row) {
  const by = row.sender === "customer" ? "Customer" : row.agent ? `${row.agent} (agent)` : "Assistant";
  return el("li", { class: `bubble ${row.sender === "customer" ? "customer" : "agent"}`,
                    "data-testid": "console-message" },
            el("p", { class: "muted", text: `${by} · ${row.timestamp ? row.timestamp.slice(11, 19) : ""}` }),
            el("p", { text: row.content }));
}

async function show(item) {
  state.shown = item.customer_messages + item.agent_replies;
  const who = item.verified ? item.customer_email : `guest — unverified: ${item.customer_email}`;
  $("detail-title").textContent = `${item.kind === "approval" ? "Approval" : "Hand-over"}: ${who}`;
  $("detail-meta").textContent = `Ticket ${item.ticket_id || "—"} · ${item.reason} · since ${when(item.opened_at)}`;
  $("decision").hidden = item.kind !== "approval";
  $("reply").hidden = item.kind !== "handover";
  $("close").hidden = item.kind !== "handover";
  const [conv, saga] = await Promise.all([
    call(`/api/console/sessions/${encodeURIComponent(item.session_id)}`),
    call(`/api/console/sagas/${encodeURIComponent(item.message_id)}`),
  ]);
  if (conv.status === 200) $("conversation").replaceChildren(...conv.body.messages.map(messageRow));
  if (saga.status === 200) {
    $("timeline").replaceChildren(...saga.body.events.map((e) => el("li", { "data-testid": "timeline-event",
      text: `${e.actor || ""} — ${e.kind.replace(/_/g, " ")}${e.data && e.data.reason ? ` (${e.data.reason})` : ""}` })));
    const plan = item.proposed_action || (saga.body.result && saga.body.result.action_plan);
    const proposed = plan && plan.action && plan.action !== "none";
    $("proposed").hidden = !proposed;
    $("proposed").textContent = proposed
      ? `Proposed action: ${plan.action} on order ${plan.order_id || "?"}${plan.amount ? ` ($${plan.amount})` : ""}`
      : "";
  }
}

async function act(path, body, done) {
  showError("");
  const init = { method: "POST", headers: { "Content-Type": "application/json" } };
  if (body) init.body = JSON.stringify(body);
  const { status, body: answer } = await call(path, init);
  if (status === 200) { say(done); return true; }
  showError(answer && typeof answer.detail === "string" ? answer.detail : `The request failed (${status}).`);
  return false;
}

function init() {
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    if ($("token").value.trim()) signIn($("token").value);
    $("token").value = "";
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("reply").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = $("reply-text").value.trim();
    if (!text || !state.selected) return;
    if (await act(`/api/console/sessions/${encodeURIComponent(state.selected.session_id)}/reply`, { text },
                  "Reply sent.")) {
      $("reply-text").value = "";
      await show(state.selected);
    }
  });
  $("close").addEventListener("click", async () => {
    if (!state.selected) return;
    if (await act(`/api/console/sessions/${encodeURIComponent(state.selected.session_id)}/close`, null,
                  "Hand-over closed: the session is back with the bot.")) {
      state.selected = null;
      $("detail").hidden = true;
      poll();
    }
  });
  const decide = (verb) => async () => {
    if (!state.selected) return;
    await act(`/api/console/sagas/${encodeURIComponent(state.selected.message_id)}/${verb}`,
              { note: $("note").value.trim() }, verb === "approve" ? "Approved." : "Denied.");
  };
  $("approve").addEventListener("click", decide("approve"));
  $("deny").addEventListener("click", decide("deny"));
  if (store.get()) signIn(store.get());
}

init();
