"use strict";

const messageId = new URLSearchParams(location.search).get("id") || "";
const KIND_CLASS = {
  step_completed: "ok", saga_completed: "ok", action_executed: "action",
  retry_scheduled: "warn", redelivered: "warn", route_changed: "info",
  step_failed: "bad", poison_message: "bad", dead_lettered: "bad", saga_failed: "bad",
  compensation_started: "comp", compensation_completed: "comp", escalated: "esc",
};

function details(e) {
  const d = e.data || {};
  if (e.kind === "route_changed") return `${(d.from || []).join(" → ")}  ⇒  ${(d.to || []).join(" → ")} (${d.reason || ""})`;
  if (e.kind === "action_executed") return `${d.action} ${d.action_id} on order ${d.order_id}${d.amount ? ` ($${d.amount})` : ""}`;
  if (e.kind.startsWith("compensation")) return `undo ${d.action_id || ""} ${d.status || ""}`;
  if (e.kind === "retry_scheduled") return `retry in ${d.delay_s}s: ${d.error || ""}`;
  if (e.kind === "step_failed" || e.kind === "saga_failed") return `${d.kind || ""} ${d.error || ""}`;
  if (e.kind === "redelivered") return `source: ${d.source || ""}`;
  if (e.kind === "escalated") return `${d.reason || ""} ${d.ticket_id || ""}`;
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
  summary.replaceChildren(...children);
  const maxDuration = Math.max(1, ...events.map((e) => e.duration_ms || 0));
  const rows = events.map((e) => {
    const bar = el("span", { class: "bar", style: `width:${Math.round(((e.duration_ms || 0) / maxDuration) * 100)}%` });
    return el("tr", { class: KIND_CLASS[e.kind] || "" },
      el("td", { text: ((e.ts - t0) * 1000).toFixed(1) }),
      el("td", { text: String(e.step_index) }),
      el("td", { text: e.actor }),
      el("td", { text: e.kind.replace(/_/g, " ") }),
      el("td", { text: String(e.attempt) }),
      el("td", {}, el("span", { text: e.duration_ms != null ? `${e.duration_ms.toFixed(1)} ms ` : "" }), bar),
      el("td", { text: details(e) }));
  });
  document.querySelector("#timeline tbody").replaceChildren(...rows);
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
  if (body.state && body.state.status === "running") setTimeout(load, 1000);
}

load();
