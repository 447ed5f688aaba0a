// Small DOM helpers shared by the widget and the saga page. Text is always set with textContent:
// nothing the customer or the mesh wrote is ever parsed as HTML.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

// Who the customer is: the token the sign-in gave (sent as a bearer token), and the session the server issued (a
// guest's proof that the session and its messages are theirs).
function authHeaders() {
  const headers = {};
  const token = localStorage.getItem("supportmesh.token");
  const session = localStorage.getItem("supportmesh.session");
  if (token) headers.Authorization = `Bearer ${token}`;
  if (session) headers["X-Session-Id"] = session;
  return headers;
}

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json", ...authHeaders() } });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { status: response.status, body };
}

// What became of an action: its status in the execution result (the orders API's "undone", or a status the mesh
// gives it), else the saga's compensation events; the strongest fact wins (reversed > given up > undo started).
const ACTION_STATE_RANK = { done: 0, reversing: 1, not_reversed: 2, reversed: 3 };
const STATUS_STATE = {
  active: "done", done: "done", undone: "reversed", reversed: "reversed", compensated: "reversed",
  reversing: "reversing", pending_reversal: "reversing", not_reversed: "not_reversed",
};
const COMPENSATION_STATE = {
  compensation_started: "reversing", compensation_completed: "reversed", compensation_failed: "not_reversed",
};
// How each state reads after the action ("refund of $5.00 on order 12345 — reversed").
const ACTION_STATE_TEXT = {
  done: "", reversing: "pending reversal", not_reversed: "pending reversal by a colleague", reversed: "reversed",
};
// The orders API names actions; people read nouns (as the mesh's replies do).
const ACTION_NOUN = { cancel: "cancellation", cancellation: "cancellation", refund: "refund", replacement: "replacement" };

// A table's own entry, or undefined (data from the mesh never reaches Object.prototype: "constructor" is no key).
function lookup(table, key) {
  return Object.hasOwn(table, key) ? table[key] : undefined;
}

function stronger(a, b) {
  return (lookup(ACTION_STATE_RANK, b) ?? -1) > (lookup(ACTION_STATE_RANK, a) ?? -1) ? b : a;
}

// The side effects of a message, each once, in order: from the execution result and the saga's events
// (action_executed and compensations), each with its state.
function actionEffects(execution, events) {
  const effects = new Map();
  const add = (data, state) => {
    if (!data || !data.action_id) return;
    const id = String(data.action_id);
    const known = effects.get(id);
    if (known) known.state = stronger(known.state, state);
    else effects.set(id, { action: data.action, order_id: data.order_id, amount: data.amount, action_id: id, state });
  };
  for (const a of (execution && execution.actions) || []) {
    const status = String(a.status || "active");
    add(a, lookup(STATUS_STATE, status) || status);
  }
  for (const e of events || []) {
    if (e.kind === "action_executed") add(e.data, "done");
    else if (lookup(COMPENSATION_STATE, e.kind)) add(e.data, lookup(COMPENSATION_STATE, e.kind));
  }
  return [...effects.values()];
}

// "refund of $5.00 on order 12345", then how it stands (an unknown status is shown as it is).
function describeEffect(effect) {
  const noun = lookup(ACTION_NOUN, effect.action) || String(effect.action || "action");
  const amount = Number(effect.amount) ? ` of $${Number(effect.amount).toFixed(2)}` : "";
  const known = lookup(ACTION_STATE_TEXT, effect.state);
  const state = known ?? String(effect.state).replace(/_/g, " ");
  return `${noun}${amount} on order ${effect.order_id || "?"}${state ? ` — ${state}` : ""}`;
}

// What was done about a message, one line each: its actions as they stand now, else the plan.
function describeAction(plan, execution, events) {
  const effects = actionEffects(execution, events);
  if (effects.length) return effects.map((e) => ({ text: describeEffect(e), state: e.state }));
  if (plan && plan.action && plan.action !== "none") {
    const noun = lookup(ACTION_NOUN, plan.action) || plan.action;
    return [{ text: `${noun} on order ${plan.order_id || "?"}: ${plan.approved ? "approved" : "not approved"}`,
              state: "planned" }];
  }
  return [];
}

// One element per action line (text only), its state as data-state for styling and tests.
function actionElements(lines) {
  return lines.map((line) => el("span", { class: "action", "data-testid": "action", "data-state": line.state,
                                          text: line.text }));
}
