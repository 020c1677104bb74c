// Qwen Edit Studio mask painter, loaded by app.js the first time someone opens it (so the first
// page load stays light). Paint over image 1 with a brush or eraser (mouse, pen or finger: pointer
// events), clear, invert; the mask leaves as an 8-bit greyscale PNG the size of image 1,
// white = edit, black = keep.
window.qesMaskPainter = (helpers) => {
  "use strict";

  const { $, t, announce } = helpers;
  const PAINT = "rgb(255,0,110)";
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  let item = null;
  let painted = false;
  let erasing = false;

  function state(value) {
    painted = value;
    $("mask-state").textContent = t(value ? "mask_set" : "mask_none");
  }

  function point(e) {
    const r = canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - r.left) * canvas.width) / r.width,
      y: ((e.clientY - r.top) * canvas.height) / r.height,
    };
  }

  // The brush size is in screen pixels, so it feels the same on a phone and on a kiosk.
  function stroke(a, b) {
    const r = canvas.getBoundingClientRect();
    const width = (Number($("mask-size").value) * canvas.width) / (r.width || 1);
    ctx.globalCompositeOperation = erasing ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = PAINT;
    ctx.lineWidth = width;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.beginPath();
    if (a.x === b.x && a.y === b.y) {
      ctx.arc(a.x, a.y, width / 2, 0, Math.PI * 2);
      ctx.fill();
    } else {
      ctx.moveTo(a.x, a.y);
      ctx.lineTo(b.x, b.y);
      ctx.stroke();
    }
    if (!erasing) state(true);
  }

  function check() {
    const d = canvas.width ? ctx.getImageData(0, 0, canvas.width, canvas.height).data : [];
    let any = false;
    for (let i = 3; i < d.length; i += 4) if (d[i]) { any = true; break; }
    state(any);
  }

  function tool(erase) {
    erasing = erase;
    $("mask-brush").setAttribute("aria-pressed", String(!erase));
    $("mask-eraser").setAttribute("aria-pressed", String(erase));
  }

  function open(show) {
    $("mask-editor").hidden = !show;
    $("mask-toggle").setAttribute("aria-expanded", String(show));
    $("mask-toggle").textContent = t(show ? "mask_close" : "mask_open");
  }

  let last = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (e.button > 0) return;
    e.preventDefault();
    canvas.setPointerCapture(e.pointerId);
    last = point(e);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!last) return;
    const p = point(e);
    stroke(last, p);
    last = p;
  });
  const end = () => { if (last) { last = null; check(); } };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  $("mask-brush").addEventListener("click", () => tool(false));
  $("mask-eraser").addEventListener("click", () => tool(true));
  $("mask-clear").addEventListener("click", () => {
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    check();
  });
  $("mask-invert").addEventListener("click", () => {
    const img = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const d = img.data;
    for (let i = 0; i < d.length; i += 4) {
      d[i] = 255; d[i + 1] = 0; d[i + 2] = 110; d[i + 3] = 255 - d[i + 3];
    }
    ctx.putImageData(img, 0, 0);
    check();
  });

  // Image 1 decides the mask's size; another image 1 starts a new, empty mask.
  function follow(next) {
    if (next === item) return;
    if (item && painted) announce(t("mask_cleared"));
    item = next || null;
    canvas.width = (item && item.width) || 0;
    canvas.height = (item && item.height) || 0;
    state(false);
    open(false);
    $("mask-toggle").disabled = !(item && item.width);
    if (item && !item.width) $("mask-state").textContent = canvas.dataset.na;
    if (item) $("mask-image").src = item.url;
  }

  let crcTable = null;
  function crc32(bytes) {
    if (!crcTable) {
      crcTable = new Uint32Array(256);
      for (let n = 0; n < 256; n++) {
        let c = n;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        crcTable[n] = c >>> 0;
      }
    }
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  // A PNG of colour type 0 (grey, 8 bit), compressed with the browser's own zlib stream.
  async function greyPng(w, h, rows) {
    const stream = new Blob([rows]).stream().pipeThrough(new CompressionStream("deflate"));
    const packed = new Uint8Array(await new Response(stream).arrayBuffer());
    const chunk = (type, body) => {
      const out = new Uint8Array(12 + body.length);
      const view = new DataView(out.buffer);
      view.setUint32(0, body.length);
      for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
      out.set(body, 8);
      view.setUint32(8 + body.length, crc32(out.subarray(4, 8 + body.length)));
      return out;
    };
    const head = new Uint8Array(13);
    const hv = new DataView(head.buffer);
    hv.setUint32(0, w);
    hv.setUint32(4, h);
    head[8] = 8; // bit depth; colour type 0 (grey), deflate, no filter set, no interlace
    const sig = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
    const parts = [sig, chunk("IHDR", head), chunk("IDAT", packed), chunk("IEND", new Uint8Array())];
    return new Blob(parts, { type: "image/png" });
  }

  // The mask (the painted alpha: 255 = edit) as a PNG, or null when nothing is painted.
  async function png() {
    if (!item || !painted) return null;
    const { width: w, height: h } = canvas;
    const d = ctx.getImageData(0, 0, w, h).data;
    const rows = new Uint8Array((w + 1) * h); // each row starts with filter type 0
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) rows[y * (w + 1) + 1 + x] = d[(y * w + x) * 4 + 3];
    }
    return greyPng(w, h, rows);
  }

  return { follow, open, png };
};
