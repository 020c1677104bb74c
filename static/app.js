// Qwen Edit Studio page script, no framework: choosing images (drop, click, paste, camera),
// previews with reorder, the mask painter, presets and options, submitting without a reload,
// the result viewer with its before/after slider, "Edit this result", announcements, the HTMX
// history poll kept to visible tabs, and the kiosk's idle reset.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const I18N = JSON.parse(($("i18n-data") || {}).textContent || "{}");
  const t = (key, v) =>
    ((I18N.t || {})[key] || key).replace(/\{(\w+)\}/g, (m, k) => (v && k in v ? v[k] : m));
  const PLUS = "qwen-image-edit-plus";
  const LIMITS = {
    max: 3, bytes: 10 * 1024 * 1024, min: 384, side: 3072,
    types: ["image/jpeg", "image/png", "image/bmp", "image/webp", "image/tiff"],
    exts: ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"],
  };
  let chosen = []; // {file, url, width, height}

  // Status changes for screen readers; messages of the same moment are read together.
  let pending = [];
  function announce(message) {
    const box = $("announce");
    if (!box) return;
    if (!pending.length) {
      box.textContent = "";
      setTimeout(() => { box.textContent = pending.join(" "); pending = []; }, 50);
    }
    pending.push(message);
  }

  function showError(message) {
    const box = $("form-error");
    box.textContent = "";
    if (!message) return;
    const p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = message;
    box.appendChild(p);
  }

  // The server's words for a refusal, in the page's language: the server translates when it
  // can (Content-Language), otherwise the page's own table by code, else the server's message.
  function errorText(response, body) {
    const err = (body && body.error) || {};
    const said = (response.headers.get("content-language") || "en").slice(0, 2);
    const table = I18N.errors || {};
    if (said !== I18N.lang && table[err.code]) return table[err.code];
    return err.message || t("err_http", { status: response.status });
  }

  const mb = (bytes) =>
    bytes < 1048576 ? Math.max(1, Math.round(bytes / 1024)) + " KB" : (bytes / 1048576).toFixed(1) + " MB";
  const extOf = (name) => {
    const dot = (name || "").lastIndexOf(".");
    return dot >= 0 ? name.slice(dot + 1).toLowerCase() : "";
  };

  function measure(file) {
    // Browsers cannot decode TIFF: the server measures those.
    return new Promise((resolve) => {
      const url = URL.createObjectURL(file);
      const img = new Image();
      img.onload = () => resolve({ url, width: img.naturalWidth, height: img.naturalHeight });
      img.onerror = () => resolve({ url, width: 0, height: 0 });
      img.src = url;
    });
  }

  // Check each file against the server's limits at once and say which file breaks which one.
  function addFiles(list) {
    let files = Array.from(list || []);
    if (!files.length) return Promise.resolve(0);
    showError("");
    const problems = [];
    const room = LIMITS.max - chosen.length;
    if (files.length > room) {
      problems.push(t("err_count", { max: LIMITS.max, n: files.length - Math.max(0, room) }));
      files = files.slice(0, Math.max(0, room));
    }
    const checks = files.map((file) => {
      const name = '"' + (file.name || t("pasted")) + '"';
      if (!LIMITS.types.includes(file.type) && !LIMITS.exts.includes(extOf(file.name))) {
        problems.push(t("err_format", { name }));
        return null;
      }
      if (file.size > LIMITS.bytes) {
        problems.push(t("err_size", { name, mb: mb(file.size) }));
        return null;
      }
      return measure(file).then((m) => {
        const small = Math.min(m.width, m.height), big = Math.max(m.width, m.height);
        if (m.width && (small < LIMITS.min || big > LIMITS.side)) {
          problems.push(t("err_dims", { name, w: m.width, h: m.height }));
          URL.revokeObjectURL(m.url);
          return null;
        }
        return { file, url: m.url, width: m.width, height: m.height };
      });
    });
    return Promise.all(checks).then((items) => {
      const added = items.filter((item) => item && chosen.length < LIMITS.max && chosen.push(item));
      render();
      if (problems.length) showError(problems.join(" "));
      if (added.length) announce(t("added", { n: added.length, total: chosen.length }));
      return added.length;
    });
  }

  function button(text, className, label) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.textContent = text;
    if (label) b.setAttribute("aria-label", label);
    return b;
  }

  function move(from, to, focusDir) {
    if (to < 0 || to >= chosen.length) return;
    const [item] = chosen.splice(from, 1);
    chosen.splice(to, 0, item);
    render();
    const li = $("previews").children[to];
    const again = li && li.querySelector('[data-move="' + focusDir + '"]');
    const other = li && li.querySelector('[data-move="' + -focusDir + '"]');
    (again && !again.disabled ? again : other).focus();
    announce(t("moved", { n: to + 1 }));
  }

  function render() {
    const list = $("previews");
    list.textContent = "";
    chosen.forEach((item, index) => {
      const n = index + 1;
      const li = document.createElement("li");
      li.className = "preview";
      li.draggable = true;
      li.dataset.index = index;
      const fig = document.createElement("div");
      fig.className = "preview-img";
      const img = document.createElement("img");
      img.src = item.url;
      img.alt = t("image_n", { n }) + ": " + (item.file.name || t("pasted"));
      const num = document.createElement("span");
      num.className = "num";
      num.textContent = n;
      fig.append(img, num);
      const meta = document.createElement("span");
      meta.className = "hint meta";
      meta.textContent = mb(item.file.size) + (item.width ? " · " + item.width + "×" + item.height : "");
      meta.title = item.file.name || "";
      const tools = document.createElement("div");
      tools.className = "preview-tools";
      const up = button("◀", "icon", t("earlier_n", { n }));
      up.dataset.move = "-1";
      up.title = t("earlier");
      up.disabled = index === 0;
      up.addEventListener("click", () => move(index, index - 1, -1));
      const down = button("▶", "icon", t("later_n", { n }));
      down.dataset.move = "1";
      down.title = t("later");
      down.disabled = index === chosen.length - 1;
      down.addEventListener("click", () => move(index, index + 1, 1));
      const remove = button("✕", "remove", t("remove_n", { n }));
      remove.title = t("remove");
      remove.addEventListener("click", () => {
        URL.revokeObjectURL(item.url);
        chosen.splice(index, 1);
        render();
        announce(t("removed", { total: chosen.length }));
        (list.querySelector("button.remove") || $("choose")).focus();
      });
      tools.append(up, down, remove);
      fig.append(tools);
      li.append(fig, meta);
      // Mouse users can also drag a preview onto another one to reorder.
      li.addEventListener("dragstart", (e) => e.dataTransfer.setData("text/x-qes-index", index));
      li.addEventListener("dragover", (e) => {
        if (e.dataTransfer.types.includes("text/x-qes-index")) e.preventDefault();
      });
      li.addEventListener("drop", (e) => {
        const from = e.dataTransfer.getData("text/x-qes-index");
        if (from === "") return;
        e.preventDefault();
        e.stopPropagation();
        move(Number(from), index, 1);
      });
      list.appendChild(li);
    });
    $("drop").classList.toggle("has-files", chosen.length > 0);
    $("order-help").hidden = chosen.length < 2;
    Mask.follow(chosen[0]);
  }

  // --- the mask painter lives in mask.js, loaded the first time someone opens it ----------
  const Mask = {
    item: null,
    painter: null,
    follow(item) {
      $("mask-tools").hidden = !item;
      this.item = item || null;
      if (this.painter) { this.painter.follow(this.item); return; }
      $("mask-toggle").disabled = !(item && item.width);
      $("mask-state").textContent = item && !item.width ? $("mask-canvas").dataset.na : t("mask_none");
    },
    init() {
      $("mask-toggle").addEventListener("click", () => {
        if (this.painter) { this.painter.open($("mask-editor").hidden); return; }
        const script = document.createElement("script");
        script.src = "/static/mask.js";
        script.onload = () => {
          this.painter = window.qesMaskPainter({ $, t, announce });
          this.painter.follow(this.item);
          this.painter.open(true);
        };
        document.head.appendChild(script);
      });
    },
    png() { return this.painter ? this.painter.png() : Promise.resolve(null); },
  };

  // --- sending the job ------------------------------------------------------------------------
  let sending = false;
  async function submit(event) {
    event.preventDefault();
    if (sending) return;
    const prompt = $("prompt").value.trim();
    if (!chosen.length) { showError(t("err_no_images")); $("choose").focus(); return; }
    if (!prompt) { showError(t("err_prompt_empty")); $("prompt").focus(); return; }
    const data = new FormData();
    chosen.forEach((item) => data.append("images", item.file, item.file.name || "pasted.png"));
    data.append("prompt", prompt);
    const model = $("model").value;
    data.append("model", model);
    if (model === PLUS) {
      for (const [id, name] of [["opt-n", "n"], ["opt-negative", "negative_prompt"],
        ["opt-size", "size"], ["opt-seed", "seed"]]) {
        const value = $(id).value.trim();
        if (value) data.append(name, value);
      }
      data.append("prompt_extend", String($("opt-extend").checked));
      data.append("watermark", String($("opt-watermark").checked));
    }
    const submitButton = $("submit");
    sending = true;
    submitButton.disabled = true;
    submitButton.textContent = t("sending");
    showError("");
    try {
      const mask = await Mask.png();
      if (mask) data.append("mask", mask, "mask.png");
      const response = await fetch("/api/tasks", {
        method: "POST", body: data, credentials: "same-origin", headers: { Accept: "application/json" },
      });
      const body = await response.json().catch(() => ({}));
      if (!response.ok) { showError(errorText(response, body)); return; }
      chosen.forEach((item) => URL.revokeObjectURL(item.url));
      chosen = [];
      render();
      $("prompt").value = "";
      $("prompt").dispatchEvent(new Event("input", { bubbles: true }));
      announce(t("job_started"));
      refreshHistory();
    } catch (err) {
      showError(t("err_network"));
    } finally {
      sending = false;
      submitButton.disabled = false;
      submitButton.textContent = t("submit");
    }
  }

  function refreshHistory() {
    const history = $("history");
    if (history && window.htmx) htmx.trigger(history, "refresh");
  }

  // --- results: viewer with the before/after slider, edit this result, copy the prompt -------
  function slide(value) {
    const v = Math.max(0, Math.min(100, Number(value)));
    $("cmp-range").value = v;
    $("cmp-after").style.clipPath = "inset(0 0 0 " + v + "%)";
    $("cmp-line").style.left = v + "%";
  }

  function openViewer(data) {
    const viewer = $("viewer");
    $("cmp-after").src = data.full;
    $("cmp-before").src = data.before || data.full;
    const link = $("viewer-download");
    link.href = data.full;
    link.setAttribute("download", data.filename || "");
    $("viewer-edit").dataset.full = data.full;
    slide(50);
    viewer.showModal();
    $("cmp-range").focus();
  }

  async function editResult(url) {
    const viewer = $("viewer");
    if (viewer.open) viewer.close();
    try {
      const response = await fetch(url, { credentials: "same-origin" });
      if (!response.ok) throw new Error(String(response.status));
      const blob = await response.blob();
      const ext = (blob.type.split("/")[1] || "png").replace("jpeg", "jpg");
      const file = new File([blob], "result-" + (chosen.length + 1) + "." + ext, { type: blob.type });
      if (await addFiles([file])) {
        announce(t("result_added", { n: chosen.length }));
        $("edit-form").scrollIntoView({ block: "start" });
        $("prompt").focus();
      }
    } catch (err) {
      showError(t("err_load_result"));
    }
  }

  async function copyText(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (err) {
      const area = document.createElement("textarea");
      area.value = text;
      area.className = "offscreen";
      document.body.appendChild(area);
      area.select();
      const ok = document.execCommand("copy");
      area.remove();
      return ok;
    }
  }

  function onClick(e) {
    const target = e.target.closest("[data-action], [data-preset]");
    if (!target) return;
    const action = target.dataset.action;
    if (target.dataset.preset) {
      const prompt = $("prompt");
      prompt.value = target.dataset.preset;
      prompt.dispatchEvent(new Event("input", { bubbles: true }));
      prompt.focus();
      announce(t("preset_used", { name: target.dataset.name }));
    } else if (action === "view") {
      openViewer(target.dataset);
    } else if (action === "edit-result") {
      editResult(target.dataset.full);
    } else if (action === "copy-prompt") {
      const text = target.closest(".job").querySelector(".prompt").textContent;
      copyText(text).then((ok) => announce(ok ? t("prompt_copied") : t("err_clipboard")));
    }
  }

  // --- announcing what changed in the history --------------------------------------------------
  let statuses = {};
  function readStatuses() {
    const map = {};
    document.querySelectorAll("#history .job").forEach((job) => { map[job.dataset.id] = job; });
    return map;
  }
  function announceChanges() {
    const now = readStatuses();
    for (const [id, job] of Object.entries(now)) {
      const before = statuses[id];
      if (!before || before === job.dataset.status) continue;
      if (job.dataset.status === "succeeded") announce(t("job_done"));
      if (job.dataset.status === "failed") {
        const reason = job.querySelector(".error");
        announce(t("job_failed", { reason: reason ? reason.textContent : "" }));
      }
    }
    statuses = {};
    for (const [id, job] of Object.entries(now)) statuses[id] = job.dataset.status;
  }

  // --- kiosk: after the idle time, warn, then delete the visitor's jobs and start over -------
  function kiosk() {
    const seconds = Number(document.body.dataset.idleSeconds || 0);
    if (!document.documentElement.classList.contains("kiosk") || !seconds) return;
    const warnFor = Math.min(15, Math.max(1, Math.round(seconds / 4)));
    const box = $("idle-warning");
    let timer = null, tick = null;
    const reset = () => {
      document.body.classList.add("resetting");
      fetch("/kiosk/reset", { method: "POST", credentials: "same-origin" })
        .finally(() => window.location.replace("/"));
    };
    const arm = () => {
      clearTimeout(timer);
      clearInterval(tick);
      if (box) box.hidden = true;
      timer = setTimeout(warn, (seconds - warnFor) * 1000);
    };
    const warn = () => {
      const history = $("history");
      if (history && Number(history.dataset.running) > 0) { arm(); return; }
      let left = warnFor;
      const show = () => { $("idle-text").textContent = t("idle_warn", { n: left }); };
      show();
      box.hidden = false;
      tick = setInterval(() => {
        left -= 1;
        if (left <= 0) { clearInterval(tick); reset(); } else show();
      }, 1000);
    };
    ["pointerdown", "pointermove", "keydown", "wheel", "input", "touchstart"].forEach((name) =>
      document.addEventListener(name, arm, { passive: true, capture: true }));
    const over = $("start-over");
    if (over) over.addEventListener("click", reset);
    arm();
  }

  function init() {
    const input = $("images");
    if (!input) return;
    const drop = $("drop");
    const choose = () => input.click();
    $("choose").addEventListener("click", (e) => { e.stopPropagation(); choose(); });
    $("camera").addEventListener("click", (e) => { e.stopPropagation(); $("camera-input").click(); });
    drop.addEventListener("click", choose);
    for (const el of [input, $("camera-input")]) {
      el.addEventListener("change", () => { addFiles(el.files); el.value = ""; });
    }
    // Files dropped anywhere on the page are taken; the drop zone lights up while they hover.
    let unready = null;
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    for (const name of ["dragenter", "dragover"]) {
      document.addEventListener(name, (e) => {
        if (!hasFiles(e)) return;
        e.preventDefault();
        drop.classList.add("ready");
        clearTimeout(unready);
        unready = setTimeout(() => drop.classList.remove("ready"), 400);
      });
    }
    document.addEventListener("drop", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      drop.classList.remove("ready");
      addFiles(e.dataTransfer.files);
    });
    document.addEventListener("paste", (e) => {
      const files = (e.clipboardData && e.clipboardData.files) || [];
      if (files.length) { e.preventDefault(); addFiles(files); }
    });
    const form = $("edit-form");
    form.addEventListener("submit", submit);
    form.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit(e);
    });
    const model = $("model");
    const showOptions = () => { $("more-options").hidden = model.value !== PLUS; };
    model.addEventListener("change", showOptions);
    showOptions();
    Mask.init();
    document.addEventListener("click", onClick);

    const viewer = $("viewer");
    $("viewer-close").addEventListener("click", () => viewer.close());
    $("cmp-range").addEventListener("input", (e) => slide(e.target.value));
    const compare = $("compare");
    const fromPointer = (e) => {
      const r = compare.getBoundingClientRect();
      slide(((e.clientX - r.left) / r.width) * 100);
    };
    compare.addEventListener("pointerdown", (e) => { compare.setPointerCapture(e.pointerId); fromPointer(e); });
    compare.addEventListener("pointermove", (e) => { if (e.buttons) fromPointer(e); });

    // Poll only while the tab is visible; catch up at once when it becomes visible again.
    document.body.addEventListener("htmx:beforeRequest", (e) => {
      const trigger = e.detail.requestConfig && e.detail.requestConfig.triggeringEvent;
      if (document.hidden && e.detail.elt.id === "history" && !(trigger && trigger.type === "refresh")) {
        e.preventDefault();
      }
    });
    document.body.addEventListener("htmx:afterSettle", announceChanges);
    // A refused Retry or Delete says why (htmx 2 does not swap error answers in).
    document.body.addEventListener("htmx:responseError", (e) => {
      if (e.detail.requestConfig && e.detail.requestConfig.verb === "get") return;
      const xhr = e.detail.xhr;
      const doc = new DOMParser().parseFromString(xhr.responseText || "", "text/html");
      showError(doc.body.textContent.trim() || t("err_http", { status: xhr.status }));
    });
    document.body.addEventListener("htmx:sendError", (e) => {
      if (e.detail.requestConfig && e.detail.requestConfig.verb !== "get") showError(t("err_network"));
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refreshHistory(); });
    statuses = {};
    for (const [id, job] of Object.entries(readStatuses())) statuses[id] = job.dataset.status;
    kiosk();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
