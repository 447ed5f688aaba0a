// The saga timeline page (an ES module).
import { actionElements, apiClient, describeAction, el, localStore } from "./common.js";

const { getJSON } = apiClient("", localStore());
const messageId = new URLSearchParams(location.search).get("id") || "";
const TERMINAL = new Set(["completed", "escalated", "failed"]);
const KIND_CLASS = {
  step_completed: "ok", saga_completed: "ok", action_executed: "action", saga_started: "info",
  retry_scheduled: "warn", redelivered: "warn", route_changed: "info",
  step_failed: "bad", poison_message: "bad", dead_lettered: "bad", saga_failed: "bad",
  compensation_started: "comp", compensation_completed: "comp", compensation_failed: "bad", escalated: "esc",
};
// Every kind of saga event (saga/log.py EventKind), named for whoever reads the timeline.
export const EVENT_LABELS = {
  saga_started: "saga started", step_started: "step started", step_completed: "step completed",
  step_failed: "step failed", retry_scheduled: "retry scheduled", route_changed: "route changed",
  action_executed: "action executed", compensation_started: "compensation started (undoing an action)",
  compensation_completed: "compensation completed (action reversed)",
  compensation_failed: "compensation failed (undo given up: a person must reverse it)",
  redelivered: "resumed (redelivered)", escalated: "escalated to a person",
  poison_message: "poison message (unreadable, set aside)", dead_lettered: "dead-lettered (delivery given up)",
  saga_completed: "saga completed", saga_failed: "saga failed",
  wait_started: "waiting for a person (a yes, or a colleague's decision)", signal_received: "signal received",
  timer_fired: "timer fired (nobody answered in time)", signal_buffered: "signal kept until the saga waits for it",
};

function label(kind) {
  return Object.hasOwn(EVENT_LABELS, kind) ? EVENT_LABELS[kind] : String(kind).replace(/_/g, " ");
}

// An action named in an event's data: "refund act_1 on order 12345 ($5.00)".
function named(d) {
  return `${d.action || "action"} ${d.action_id || ""} on order ${d.order_id || "?"}${d.amount ? ` ($${d.amount})` : ""}`;
}

function details(e) {
  const d = e.data || {};
  if (e.kind === "route_changed") return `${(d.from || []).join(" → ")}  ⇒  ${(d.to || []).join(" → ")} (${d.reason || ""})`;
  if (e.kind === "action_executed") return named(d);
  if (e.kind === "compensation_started") return `undoing ${named(d)}`;
  if (e.kind === "compensation_completed") return `${named(d)} reversed${d.status ? ` (status ${d.status})` : ""}`;
  if (e.kind === "compensation_failed") return `${named(d)} not reversed: ${d.error || "undo given up"}`;
  if (e.kind === "retry_scheduled") return `retry in ${d.delay_s}s: ${d.error || ""}`;
  if (e.kind === "step_failed" || e.kind === "saga_failed") return `${d.kind || d.reason || ""} ${d.error || ""}`;
  if (e.kind === "redelivered") return `source: ${d.source || ""}`;
  if (e.kind === "escalated") return `${d.reason || ""} ${d.ticket_id || ""}`;
  if (e.kind === "step_completed" && Array.isArray(d.remaining_route)) {
    // A router's step: its record carries the route it chose for the rest of the saga.
    const added = d.enrichment ? `added: ${Object.keys(d.enrichment).join(", ") || "—"} · ` : "";
    return `${added}route from here: ${d.remaining_route.join(" → ") || "(end)"} (${d.reason || ""})`;
  }
  if (e.kind === "step_completed" && d.enrichment) return `added: ${Object.keys(d.enrichment).join(", ") || "—"}`;
  if (e.kind === "saga_completed") return d.status || "";
  return "";
}

function render(saga) {
  const events = saga.events || [];
  const t0 = events.length ? events[0].ts : 0;
  const last = events.length ? events[events.length - 1].ts : 0;
  const summary = document.getElementById("summary");
  const status = saga.state ? saga.state.status : "unknown";
  const children = [
    el("span", { class: `badge ${status}`, text: status }),
    el("span", { text: ` message ${saga.message_id} · ${events.length} events · ${((last - t0) * 1000).toFixed(1)} ms` }),
  ];
  const traceId = (saga.result && saga.result.trace_id) || (saga.state && saga.state.trace_id);
  if (traceId && window.jaegerUrl) {
    children.push(el("a", { href: `${window.jaegerUrl}/trace/${encodeURIComponent(traceId)}`, target: "_blank",
                            rel: "noopener", "data-testid": "trace-link", text: " trace" }));
  }
  if (saga.result) children.push(el("p", { class: "reply", text: saga.result.response }));
  // The actions as they stand: the result's execution result and the log's compensations.
  const actions = describeAction(saga.result && saga.result.action_plan, saga.result && saga.result.execution_result,
                                 events);
  if (actions.length) {
    children.push(el("ul", { class: "actions", "data-testid": "actions", "aria-label": "Actions taken" },
                     ...actionElements(actions).map((span) => el("li", {}, span))));
  }
  summary.replaceChildren(...children);
  const maxDuration = Math.max(1, ...events.map((e) => e.duration_ms || 0));
  const rows = events.map((e) => {
    const bar = el("span", { class: "bar" });
    // Through the CSSOM: the Content-Security-Policy refuses inline style attributes.
    bar.style.width = `${Math.round(((e.duration_ms || 0) / maxDuration) * 100)}%`;
    return el("tr", { class: Object.hasOwn(KIND_CLASS, e.kind) ? KIND_CLASS[e.kind] : "", "data-kind": e.kind },
      el("td", { text: ((e.ts - t0) * 1000).toFixed(1) }),
      el("td", { text: String(e.step_index) }),
      el("td", { text: e.actor }),
      el("td", { text: label(e.kind) }),
      el("td", { text: String(e.attempt) }),
      el("td", {}, el("span", { text: e.duration_ms != null ? `${e.duration_ms.toFixed(1)} ms ` : "" }), bar),
      el("td", { text: details(e) }));
  });
  document.querySelector("#timeline tbody").replaceChildren(...rows);
}

let resultPolls = 0;

// A saga failed before it started has no answer to wait for.
function finishedUnanswered(saga) {
  return (saga.events || []).some((e) => e.kind === "saga_failed" && e.data && e.data.reason === "not_started");
}

async function load() {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(messageId)) {
    document.getElementById("error").textContent = "No valid message id in the address (?id=…).";
    document.getElementById("error").hidden = false;
    return;
  }
  const config = await getJSON("/api/config");
  window.jaegerUrl = config.status === 200 ? config.body.jaeger_ui_url : "";
  const { status, body } = await getJSON(`/api/sagas/${encodeURIComponent(messageId)}`);
  if (status !== 200) {
    document.getElementById("error").textContent = body && body.detail ? body.detail : `Not found (${status}).`;
    document.getElementById("error").hidden = false;
    return;
  }
  render(body);
  // Follow a saga until it ends (it may be compensating), and an ended one briefly until its answer is stored.
  const sagaStatus = body.state ? body.state.status : null;
  if (sagaStatus === null) return;
  if (!TERMINAL.has(sagaStatus) || (!body.result && !finishedUnanswered(body) && ++resultPolls <= 10)) {
    setTimeout(load, 1000);
  }
}

load();
