// Small DOM and API helpers shared by the widget, the embedded widget and the saga page (an ES module). Text is
// always set with textContent: nothing the customer or the mesh wrote is ever parsed as HTML.

export function el(tag, attrs, ...children) {
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

// Where the widget keeps who the customer is: the token (sent as a bearer token) and the session the server
// issued (a guest's proof that the session and its messages are theirs). On the gateway's own pages that is
// localStorage ("supportmesh.<key>"); embedded in a shop's page, memory (the shop's backend hands the token).
export function localStore() {
  return {
    get: (key) => localStorage.getItem(`supportmesh.${key}`) || "",
    set: (key, value) => localStorage.setItem(`supportmesh.${key}`, value),
    remove: (key) => localStorage.removeItem(`supportmesh.${key}`),
  };
}

export function memoryStore(initial) {
  const values = new Map(Object.entries(initial || {}).filter(([, v]) => v));
  return {
    get: (key) => values.get(key) || "",
    set: (key, value) => values.set(key, value),
    remove: (key) => values.delete(key),
  };
}

// The gateway's API at `base` ("" for this origin, else a gateway's origin), as the customer in `store`.
export function apiClient(base, store) {
  const authHeaders = () => {
    const headers = {};
    if (store.get("token")) headers.Authorization = `Bearer ${store.get("token")}`;
    if (store.get("session")) headers["X-Session-Id"] = store.get("session");
    return headers;
  };
  const call = (path, init = {}) =>
    fetch(base + path, { ...init, headers: { ...(init.headers || {}), ...authHeaders() } });
  const getJSON = async (path) => {
    const response = await call(path, { headers: { Accept: "application/json" } });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    return { status: response.status, body };
  };
  return { base, store, authHeaders, call, getJSON };
}

// What became of an action: its status in the execution result (the orders API's "undone", or a status the mesh
// gives it), else the saga's compensation events; the strongest fact wins (reversed > given up > undo started).
export const ACTION_STATE_RANK = { done: 0, reversing: 1, not_reversed: 2, reversed: 3 };
export const STATUS_STATE = {
  active: "done", done: "done", undone: "reversed", reversed: "reversed", compensated: "reversed",
  reversing: "reversing", pending_reversal: "reversing", not_reversed: "not_reversed",
};
export const COMPENSATION_STATE = {
  compensation_started: "reversing", compensation_completed: "reversed", compensation_failed: "not_reversed",
};
// How each state reads after the action ("refund of $5.00 on order 12345 — reversed").
export const ACTION_STATE_TEXT = {
  done: "", reversing: "pending reversal", not_reversed: "pending reversal by a colleague", reversed: "reversed",
};
// The orders API names actions; people read nouns (as the mesh's replies do).
export const ACTION_NOUN = { cancel: "cancellation", cancellation: "cancellation", refund: "refund", replacement: "replacement" };

// A table's own entry, or undefined (data from the mesh never reaches Object.prototype: "constructor" is no key).
export function lookup(table, key) {
  return Object.hasOwn(table, key) ? table[key] : undefined;
}

export function stronger(a, b) {
  return (lookup(ACTION_STATE_RANK, b) ?? -1) > (lookup(ACTION_STATE_RANK, a) ?? -1) ? b : a;
}

// The side effects of a message, each once, in order: from the execution result and the saga's events
// (action_executed and compensations), each with its state.
export function actionEffects(execution, events) {
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
export function describeEffect(effect) {
  const noun = lookup(ACTION_NOUN, effect.action) || String(effect.action || "action");
  const amount = Number(effect.amount) ? ` of $${Number(effect.amount).toFixed(2)}` : "";
  const known = lookup(ACTION_STATE_TEXT, effect.state);
  const state = known ?? String(effect.state).replace(/_/g, " ");
  return `${noun}${amount} on order ${effect.order_id || "?"}${state ? ` — ${state}` : ""}`;
}

// What was done about a message, one line each: its actions as they stand now, else the plan.
export function describeAction(plan, execution, events) {
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
export function actionElements(lines) {
  return lines.map((line) => el("span", { class: "action", "data-testid": "action", "data-state": line.state,
                                          text: line.text }));
}
