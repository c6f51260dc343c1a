// The map: every image a dot at its place (pipeline.atlas), drawn into one pixel buffer so that
// a hundred thousand dots cost a few milliseconds; where few images are in view, their
// thumbnails instead. Scroll zooms about the pointer, a drag moves, a click opens an image.
"use strict";

(function () {
  const canvas = document.getElementById("map");
  if (!canvas) { return; }
  const label = document.getElementById("map-label");
  const ctx = canvas.getContext("2d");
  const GRID = 256; // cells per side of the index used to find the images in view and under the pointer
  const THUMBNAILS_AT_MOST = 400;
  const COLOURS = [0xff8f5a3c, 0xff0f48d9, 0xff3e8a2b, 0xff0f48d9]; // ABGR: plain, in a group, changed, both
  let n = 0, xs = null, ys = null, marks = null, ids = [];
  let cellStart = null, cellItems = null;
  let scale = 1, ox = 0, oy = 0, ratio = 1, width = 0, height = 0;
  const thumbnails = new Map();
  let pending = false;

  function cellOf(x, y) {
    const cx = Math.min(GRID - 1, Math.max(0, Math.floor(x * GRID)));
    const cy = Math.min(GRID - 1, Math.max(0, Math.floor(y * GRID)));
    return cy * GRID + cx;
  }

  function index() {
    const counts = new Uint32Array(GRID * GRID + 1);
    for (let i = 0; i < n; i++) { if (xs[i] === xs[i]) { counts[cellOf(xs[i], ys[i]) + 1]++; } }
    for (let c = 0; c < GRID * GRID; c++) { counts[c + 1] += counts[c]; }
    cellStart = counts.slice();
    cellItems = new Uint32Array(counts[GRID * GRID]);
    const fill = counts.slice();
    for (let i = 0; i < n; i++) { if (xs[i] === xs[i]) { cellItems[fill[cellOf(xs[i], ys[i])]++] = i; } }
  }

  function inView(fn) {
    const x0 = -ox / scale, y0 = -oy / scale, x1 = (width - ox) / scale, y1 = (height - oy) / scale;
    const c0 = Math.max(0, Math.floor(x0 * GRID)), c1 = Math.min(GRID - 1, Math.floor(x1 * GRID));
    const r0 = Math.max(0, Math.floor(y0 * GRID)), r1 = Math.min(GRID - 1, Math.floor(y1 * GRID));
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const cell = r * GRID + c;
        for (let k = cellStart[cell]; k < cellStart[cell + 1]; k++) {
          const i = cellItems[k];
          if (xs[i] >= x0 && xs[i] <= x1 && ys[i] >= y0 && ys[i] <= y1) { fn(i); }
        }
      }
    }
  }

  function resize() {
    ratio = window.devicePixelRatio || 1;
    width = canvas.clientWidth;
    height = canvas.clientHeight;
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }

  function fit() {
    scale = Math.min(width, height) * 0.96;
    ox = (width - scale) / 2;
    oy = (height - scale) / 2;
  }

  function thumbnail(i) {
    const id = String(ids[i]);
    let image = thumbnails.get(id);
    if (!image) {
      image = new Image();
      image.onload = schedule;
      image.src = canvas.dataset.thumbnail.replace("ID", encodeURIComponent(id));
      thumbnails.set(id, image);
      if (thumbnails.size > 3000) { thumbnails.delete(thumbnails.keys().next().value); }
    }
    return image;
  }

  function draw() {
    pending = false;
    if (!cellStart) { return; }
    const visible = [];
    inView((i) => { if (visible.length <= THUMBNAILS_AT_MOST) { visible.push(i); } });
    const w = canvas.width, h = canvas.height;
    if (visible.length <= THUMBNAILS_AT_MOST && visible.length > 0) {
      ctx.setTransform(1, 0, 0, 1, 0, 0);
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(0, 0, w, h);
      const side = Math.max(24, Math.min(160, Math.sqrt((width * height) / visible.length) * 0.7));
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      for (const i of visible) {
        const x = ox + xs[i] * scale, y = oy + ys[i] * scale;
        const image = thumbnail(i);
        if (image.complete && image.naturalWidth) {
          const f = side / Math.max(image.naturalWidth, image.naturalHeight);
          const iw = image.naturalWidth * f, ih = image.naturalHeight * f;
          ctx.drawImage(image, x - iw / 2, y - ih / 2, iw, ih);
          if (marks[i] & 1) { ctx.strokeStyle = "#d9480f"; ctx.lineWidth = 2; ctx.strokeRect(x - iw / 2, y - ih / 2, iw, ih); }
        } else {
          ctx.fillStyle = "#c9d1db";
          ctx.fillRect(x - side / 4, y - side / 4, side / 2, side / 2);
        }
      }
      return;
    }
    const pixels = ctx.createImageData(w, h);
    const buffer = new Uint32Array(pixels.data.buffer);
    buffer.fill(0xffffffff);
    const dot = Math.max(1, Math.round(ratio * Math.min(4, 1 + scale / 2000)));
    for (let i = 0; i < n; i++) {
      if (xs[i] !== xs[i]) { continue; }
      const px = Math.round((ox + xs[i] * scale) * ratio), py = Math.round((oy + ys[i] * scale) * ratio);
      if (px < 0 || py < 0 || px >= w - dot || py >= h - dot) { continue; }
      const colour = COLOURS[marks[i] & 3];
      for (let dy = 0; dy < dot; dy++) {
        const row = (py + dy) * w + px;
        for (let dx = 0; dx < dot; dx++) { buffer[row + dx] = colour; }
      }
    }
    ctx.putImageData(pixels, 0, 0);
  }

  function schedule() {
    if (!pending) { pending = true; requestAnimationFrame(draw); }
  }

  function nearest(clientX, clientY) {
    const rect = canvas.getBoundingClientRect();
    const mx = clientX - rect.left, my = clientY - rect.top;
    const x = (mx - ox) / scale, y = (my - oy) / scale;
    const reach = 10 / scale;
    let best = -1, bestDistance = Infinity;
    const c0 = Math.max(0, Math.floor((x - reach) * GRID)), c1 = Math.min(GRID - 1, Math.floor((x + reach) * GRID));
    const r0 = Math.max(0, Math.floor((y - reach) * GRID)), r1 = Math.min(GRID - 1, Math.floor((y + reach) * GRID));
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const cell = r * GRID + c;
        for (let k = cellStart[cell]; k < cellStart[cell + 1]; k++) {
          const i = cellItems[k];
          const d = (xs[i] - x) ** 2 + (ys[i] - y) ** 2;
          if (d < bestDistance) { bestDistance = d; best = i; }
        }
      }
    }
    return bestDistance <= reach * reach ? best : -1;
  }

  let drag = null;
  canvas.addEventListener("pointerdown", (event) => {
    drag = { x: event.clientX, y: event.clientY, ox: ox, oy: oy, moved: false };
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (drag) {
      const dx = event.clientX - drag.x, dy = event.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) { drag.moved = true; }
      ox = drag.ox + dx;
      oy = drag.oy + dy;
      schedule();
      return;
    }
    if (!cellStart) { return; }
    const i = nearest(event.clientX, event.clientY);
    if (i < 0) { label.hidden = true; return; }
    label.hidden = false;
    label.textContent = "image " + ids[i];
    label.style.left = (event.clientX + 12) + "px";
    label.style.top = (event.clientY + 12) + "px";
  });
  canvas.addEventListener("pointerup", (event) => {
    const wasDrag = drag && drag.moved;
    drag = null;
    if (wasDrag || !cellStart) { return; }
    const i = nearest(event.clientX, event.clientY);
    if (i >= 0) { window.location.href = canvas.dataset.image.replace("ID", encodeURIComponent(String(ids[i]))); }
  });
  canvas.addEventListener("pointerleave", () => { label.hidden = true; });
  canvas.addEventListener("wheel", (event) => {
    event.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const mx = event.clientX - rect.left, my = event.clientY - rect.top;
    const factor = Math.exp(-event.deltaY * 0.0015);
    const next = Math.max(Math.min(width, height) * 0.2, Math.min(scale * factor, Math.min(width, height) * 5000));
    ox = mx - (mx - ox) * (next / scale);
    oy = my - (my - oy) * (next / scale);
    scale = next;
    schedule();
  }, { passive: false });
  document.getElementById("map-reset").addEventListener("click", () => { fit(); schedule(); });
  window.addEventListener("resize", () => { resize(); schedule(); });

  resize();
  fit();
  Promise.all([
    fetch(canvas.dataset.points).then((r) => r.arrayBuffer()),
    fetch(canvas.dataset.ids).then((r) => r.json()),
  ]).then(([points, list]) => {
    ids = list;
    n = ids.length;
    const xy = new Float32Array(points, 0, 2 * n);
    xs = new Float32Array(n);
    ys = new Float32Array(n);
    for (let i = 0; i < n; i++) { xs[i] = xy[2 * i]; ys[i] = xy[2 * i + 1]; }
    marks = new Uint8Array(points, 8 * n, n);
    index();
    canvas.dataset.drawn = String(cellItems.length);
    schedule();
  });
})();
