// Settings page: personal API tokens through the JSON routes POST/GET/DELETE /api/tokens.
// The secret is shown once, right after it is created; the list never holds secrets.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const I18N = JSON.parse(($("i18n-data") || {}).textContent || "{}");
  const t = (key, v) =>
    ((I18N.t || {})[key] || key).replace(/\{(\w+)\}/g, (m, k) => (v && k in v ? v[k] : m));
  const JSON_HEADERS = { Accept: "application/json", "Content-Type": "application/json" };

  function announce(message) {
    const box = $("announce");
    box.textContent = "";
    setTimeout(() => { box.textContent = message; }, 50);
  }

  async function failure(response) {
    const body = await response.json().catch(() => ({}));
    const err = (body && body.error) || {};
    const said = (response.headers.get("content-language") || "en").slice(0, 2);
    const table = I18N.errors || {};
    const text = said !== I18N.lang && table[err.code] ? table[err.code] : err.message;
    const box = $("token-error");
    box.textContent = "";
    const p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = text || t("err_http", { status: response.status });
    box.appendChild(p);
  }

  const when = (iso) => new Date(iso).toLocaleString(I18N.lang === "zh" ? "zh-CN" : "en");

  // The list from the server, with the change just made applied on top: the answer to a
  // create or revoke can arrive a moment before the server's list shows it.
  async function load(added, revoked) {
    const response = await fetch("/api/tokens", { headers: JSON_HEADERS, credentials: "same-origin" });
    if (!response.ok) { await failure(response); return; }
    let { tokens } = await response.json();
    if (added && !tokens.some((token) => token.id === added.id)) tokens.push(added);
    tokens = tokens.filter((token) => token.id !== revoked);
    const list = $("token-list");
    list.textContent = "";
    if (!tokens.length) {
      const li = document.createElement("li");
      li.className = "hint";
      li.textContent = t("no_tokens");
      list.appendChild(li);
    }
    for (const token of tokens) {
      const li = document.createElement("li");
      li.dataset.id = token.id;
      const text = document.createElement("div");
      const name = document.createElement("strong");
      name.textContent = token.name;
      const meta = document.createElement("p");
      meta.className = "hint";
      meta.textContent = t("created", { when: when(token.created_at) }) + " · " +
        (token.last_used_at ? t("last_used", { when: when(token.last_used_at) }) : t("never_used"));
      text.append(name, meta);
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.textContent = t("revoke");
      revoke.setAttribute("aria-label", t("revoke") + ": " + token.name);
      revoke.addEventListener("click", async () => {
        if (!window.confirm(t("confirm_revoke"))) return;
        const res = await fetch("/api/tokens/" + encodeURIComponent(token.id), {
          method: "DELETE", headers: JSON_HEADERS, credentials: "same-origin",
        });
        if (!res.ok) { await failure(res); return; }
        announce(t("token_revoked"));
        await load(null, token.id);
        $("token-name").focus();
      });
      li.append(text, revoke);
      list.appendChild(li);
    }
  }

  async function create(event) {
    event.preventDefault();
    const input = $("token-name");
    const name = input.value.trim();
    if (!name) { input.focus(); return; }
    $("token-error").textContent = "";
    const response = await fetch("/api/tokens", {
      method: "POST", headers: JSON_HEADERS, credentials: "same-origin", body: JSON.stringify({ name }),
    });
    if (!response.ok) { await failure(response); return; }
    const token = await response.json();
    $("token-value").textContent = token.token;
    $("token-new").hidden = false;
    input.value = "";
    announce(t("token_created", { name: token.name }));
    $("token-copy").focus();
    await load({ id: token.id, name: token.name, created_at: new Date().toISOString() });
  }

  function init() {
    $("token-form").addEventListener("submit", create);
    $("token-copy").addEventListener("click", async () => {
      const text = $("token-value").textContent;
      try {
        await navigator.clipboard.writeText(text);
        announce(t("copied"));
      } catch (err) {
        window.getSelection().selectAllChildren($("token-value"));
      }
    });
    load();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
