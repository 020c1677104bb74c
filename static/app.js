// Qwen Edit Studio page script: choosing images (drop, click, paste), previews, submitting the
// edit without a reload, and keeping the HTMX history poll to visible tabs. No framework.
(function () {
  "use strict";

  var LIMITS = {
    maxFiles: 3,
    maxBytes: 10 * 1024 * 1024,
    minSide: 384,
    maxSide: 3072,
    types: ["image/jpeg", "image/png", "image/bmp", "image/webp", "image/tiff"],
    exts: ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"],
  };
  var chosen = []; // {file, url, width, height}

  function $(id) { return document.getElementById(id); }

  function showError(message) {
    var box = $("form-error");
    box.textContent = "";
    if (!message) return;
    var p = document.createElement("p");
    p.className = "error";
    p.setAttribute("role", "alert");
    p.textContent = message;
    box.appendChild(p);
  }

  function extOf(name) {
    var dot = (name || "").lastIndexOf(".");
    return dot >= 0 ? name.slice(dot + 1).toLowerCase() : "";
  }

  function mb(bytes) { return (bytes / 1048576).toFixed(1) + " MB"; }

  function measure(file) {
    // Browsers cannot decode TIFF: the server measures those.
    return new Promise(function (resolve) {
      var url = URL.createObjectURL(file);
      var img = new Image();
      img.onload = function () { resolve({ url: url, width: img.naturalWidth, height: img.naturalHeight }); };
      img.onerror = function () { resolve({ url: url, width: 0, height: 0 }); };
      img.src = url;
    });
  }

  function addFiles(list) {
    var files = Array.prototype.slice.call(list || []);
    if (!files.length) return;
    showError("");
    var problems = [];
    var room = LIMITS.maxFiles - chosen.length;
    if (files.length > room) {
      problems.push("At most " + LIMITS.maxFiles + " images: " + (files.length - room) + " not added.");
      files = files.slice(0, Math.max(0, room));
    }
    var jobs = files.map(function (file) {
      var label = '"' + (file.name || "pasted image") + '"';
      var okType = LIMITS.types.indexOf(file.type) >= 0 || LIMITS.exts.indexOf(extOf(file.name)) >= 0;
      if (!okType) {
        problems.push(label + " is not an allowed format (JPG, JPEG, PNG, BMP, WEBP, TIFF).");
        return Promise.resolve(null);
      }
      if (file.size > LIMITS.maxBytes) {
        problems.push(label + " is " + mb(file.size) + "; each image may be at most 10 MB.");
        return Promise.resolve(null);
      }
      return measure(file).then(function (m) {
        if (m.width && (Math.min(m.width, m.height) < LIMITS.minSide || Math.max(m.width, m.height) > LIMITS.maxSide)) {
          problems.push(label + " is " + m.width + "×" + m.height + " px; each side must be 384-3072 px.");
          URL.revokeObjectURL(m.url);
          return null;
        }
        return { file: file, url: m.url, width: m.width, height: m.height };
      });
    });
    Promise.all(jobs).then(function (items) {
      items.forEach(function (item) { if (item && chosen.length < LIMITS.maxFiles) chosen.push(item); });
      render();
      if (problems.length) showError(problems.join(" "));
    });
  }

  function render() {
    var list = $("previews");
    list.textContent = "";
    chosen.forEach(function (item, index) {
      var li = document.createElement("li");
      li.className = "preview";
      var img = document.createElement("img");
      img.src = item.url;
      img.alt = "Image " + (index + 1) + ": " + item.file.name;
      var meta = document.createElement("span");
      meta.className = "hint";
      meta.textContent = (index + 1) + ". " + mb(item.file.size) + (item.width ? " · " + item.width + "×" + item.height : "");
      var remove = document.createElement("button");
      remove.type = "button";
      remove.className = "ghost remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", "Remove image " + (index + 1));
      remove.addEventListener("click", function () {
        URL.revokeObjectURL(item.url);
        chosen.splice(index, 1);
        render();
      });
      li.appendChild(img);
      li.appendChild(meta);
      li.appendChild(remove);
      list.appendChild(li);
    });
    $("drop").classList.toggle("has-files", chosen.length > 0);
  }

  function submit(event) {
    event.preventDefault();
    var prompt = $("prompt").value.trim();
    if (!chosen.length) { showError("Add at least one image (1 to 3)."); return; }
    if (!prompt) { showError("The prompt is empty: describe the edit you want."); $("prompt").focus(); return; }
    var data = new FormData();
    chosen.forEach(function (item) { data.append("images", item.file, item.file.name || "pasted.png"); });
    data.append("prompt", prompt);
    var button = $("submit");
    button.disabled = true;
    button.textContent = "Sending…";
    showError("");
    fetch("/api/tasks", { method: "POST", body: data, credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        return response.json().catch(function () { return {}; }).then(function (body) {
          if (!response.ok) {
            var msg = (body && body.error && body.error.message) || ("The server refused the request (HTTP " + response.status + ").");
            showError(msg);
            return;
          }
          chosen.forEach(function (item) { URL.revokeObjectURL(item.url); });
          chosen = [];
          render();
          $("prompt").value = "";
          if (window.htmx) htmx.trigger("#prompt", "input");
          refreshHistory();
        });
      })
      .catch(function () { showError("Could not reach the studio. Check the connection and try again."); })
      .finally(function () { button.disabled = false; button.textContent = "Edit"; });
  }

  function refreshHistory() {
    var history = $("history");
    if (history && window.htmx) htmx.trigger(history, "refresh");
  }

  function init() {
    var drop = $("drop");
    var input = $("images");
    if (!drop || !input) return;
    drop.addEventListener("click", function () { input.click(); });
    drop.addEventListener("keydown", function (e) {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
    });
    input.addEventListener("change", function () { addFiles(input.files); input.value = ""; });
    ["dragenter", "dragover"].forEach(function (name) {
      drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.add("ready"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      drop.addEventListener(name, function (e) { e.preventDefault(); drop.classList.remove("ready"); });
    });
    drop.addEventListener("drop", function (e) { addFiles(e.dataTransfer && e.dataTransfer.files); });
    document.addEventListener("paste", function (e) {
      var items = (e.clipboardData && e.clipboardData.files) || [];
      if (items.length) { e.preventDefault(); addFiles(items); }
    });
    $("edit-form").addEventListener("submit", submit);
    $("prompt").addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) submit(e);
    });

    // Poll only while the tab is visible; catch up at once when it becomes visible again.
    document.body.addEventListener("htmx:beforeRequest", function (e) {
      var trigger = e.detail.requestConfig && e.detail.requestConfig.triggeringEvent;
      if (document.hidden && e.detail.elt.id === "history" && !(trigger && trigger.type === "refresh")) {
        e.preventDefault();
      }
    });
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) refreshHistory();
    });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
