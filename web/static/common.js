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

async function getJSON(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  return { status: response.status, body };
}

function describeAction(plan, execution) {
  if (execution && execution.actions && execution.actions.length) {
    return execution.actions.map((a) => {
      const amount = a.amount ? ` of $${Number(a.amount).toFixed(2)}` : "";
      return `${a.action}${amount} on order ${a.order_id} (${a.action_id})`;
    }).join("; ");
  }
  if (plan && plan.action && plan.action !== "none") {
    return `${plan.action} on order ${plan.order_id || "?"}: ${plan.approved ? "approved" : "not approved"}`;
  }
  return "";
}
