// The support chat in a shop's own page, from one tag:
//   <script src="https://gateway/static/embed.js" data-gateway="https://gateway" data-token="<token>" defer></script>
// `data-token`: the signed-in customer's token, minted by the shop's backend with the gateway's key (without one the
// customer chats as a guest); `data-session`: a session id to continue (else a fresh one). The shop's origin must
// be on the gateway's SUPPORTMESH_ALLOWED_ORIGINS: the browser refuses the chat's requests otherwise.
//
// A classic script (the shop's tag), so it defines no global: it builds the chat's elements in a shadow root (its
// styles and ids stay apart from the page's), then loads the chat itself (web/static/chat.js, the module the
// gateway's own page mounts) from the gateway, talking to it over fetch with the token.
(() => {
  "use strict";
  const script = document.currentScript;
  if (!script) return;
  const gateway = (script.dataset.gateway || new URL(script.src).origin).replace(/\/+$/, "");
  const host = document.createElement("div");
  host.setAttribute("data-supportmesh", "");
  host.setAttribute("data-testid", "supportmesh-embed");
  // Where the tag is in the body, else (a tag in the head, deferred) at the end of the body.
  if (document.body && document.body.contains(script)) script.after(host);
  else document.body.append(host);
  const root = host.attachShadow({ mode: "open" });

  const node = (tag, attrs, ...children) => {
    const element = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "text") element.textContent = value;
      else element.setAttribute(key, value);
    }
    element.append(...children);
    return element;
  };
  // The elements the chat uses (their ids as in web/widget.html), without the sign-in rows: the shop signs in.
  const error = node("p", { id: "error", class: "error", role: "alert", "data-testid": "error", hidden: "" });
  root.append(
    node("link", { rel: "stylesheet", href: `${gateway}/static/style.css` }),
    node("section", { class: "card embedded", "aria-label": "Customer support" },
      node("h1", { text: "Customer support" }),
      node("ol", { id: "conversation", class: "conversation", "aria-live": "polite", "aria-label": "Conversation" }),
      node("div", { id: "progress", class: "progress", role: "status", "data-testid": "progress", hidden: "" }),
      node("form", { id: "composer", class: "composer" },
        node("label", { for: "message", class: "visually-hidden", text: "Your message" }),
        node("textarea", { id: "message", "data-testid": "message-input", rows: "2", maxlength: "4000", required: "",
                           placeholder: "Ask about an order, a delivery, a refund…" }),
        node("button", { id: "send", type: "submit", "data-testid": "send-button", text: "Send" })),
      error));
  const fail = () => {
    error.textContent = "Cannot reach the support service. Please try again later.";
    error.hidden = false;
    root.getElementById("send").disabled = true;
  };

  Promise.all([import(`${gateway}/static/common.js`), import(`${gateway}/static/chat.js`)])
    .then(([common, chat]) => {
      const store = common.memoryStore({ token: script.dataset.token, session: script.dataset.session });
      const api = common.apiClient(gateway, store);
      return chat.mountChat(root, { api, operatorLinks: false, autofocus: false });
    })
    .catch(fail);
})();
