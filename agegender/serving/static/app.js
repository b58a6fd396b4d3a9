// The page of serve.py: a photo or camera frames to the service, boxes and labels drawn here from its JSON.
// Plain JavaScript, no build step, nothing from another host.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const COLORS = { male: "#1e8ceb", female: "#e63c3c" };
  const state = { doc: null, image: null, name: "", frames: [], session: null, camTimer: null, stream: null,
                  live: null, seen: new Map(), prevSeen: new Map(), raf: 0 };
  window.ageGender = state;  // for a look from the console (and the browser test)

  // --- the face fields of the output schema (agegender/schema/face.schema.json); a tracked face's
  // smoothed labels are under its `track` and win over this frame's ------------------------------------
  const tracked = (f) => (f.track && typeof f.track === "object" ? f.track : null);
  function gender(f) {
    const t = tracked(f);
    if (t && typeof t.gender === "string") return t.gender;
    return typeof f.gender === "string" ? f.gender : null;
  }
  function pMale(f) {
    const t = tracked(f);
    if (t && typeof t.p_male === "number") return t.p_male;
    return typeof f.p_male === "number" ? f.p_male : null;
  }
  function age(f) {
    const t = tracked(f);
    if (t && typeof t.age === "number") return t.age;
    return typeof f.age === "number" ? f.age : null;
  }
  function ageRange(f) {  // [low, high] whole years: the track's smoothed range wins over this frame's
    const t = tracked(f);
    if (t && typeof t.age_low === "number" && typeof t.age_high === "number") return [t.age_low, t.age_high];
    return typeof f.age_low === "number" && typeof f.age_high === "number" ? [f.age_low, f.age_high] : null;
  }
  const flags = (f) => (Array.isArray(f.flags) ? f.flags : []);  // why a face is too poor to judge well
  const box = (f) => f.box || [0, 0, 0, 0];
  const score = (f) => (typeof f.score === "number" ? f.score : 1);
  const landmarks = (f) => f.landmarks || [];
  function ageText(f) {  // "24 (19-31)", as infer.py's annotated image writes it
    const a = age(f), r = ageRange(f);
    return a == null ? "" : Math.round(a) + (r ? ` (${r[0]}-${r[1]})` : "");
  }
  function label(f) {
    const g = gender(f), a = ageText(f);
    return (g ? g[0].toUpperCase() : "?") + (a ? " " + a : "") + (flags(f).length ? "?" : "");
  }

  // --- requests: the API key is asked once, when the server answers 401 --------------------------------
  async function post(url, blob) {
    for (let attempt = 0; attempt < 2; attempt++) {
      const headers = { "Content-Type": blob.type || "application/octet-stream" };
      const key = sessionStorage.getItem("agegender-key");
      if (key) headers.Authorization = "Bearer " + key;
      const r = await fetch(url, { method: "POST", body: blob, headers });
      if (r.status === 401 && attempt === 0) {
        const k = window.prompt("This server needs an API key:");
        if (!k) throw new Error("an API key is needed");
        sessionStorage.setItem("agegender-key", k.trim());
        continue;
      }
      const doc = await r.json().catch(() => ({ error: { message: "the server's answer is not JSON" } }));
      if (!r.ok) throw new Error((doc.error && doc.error.message) || "HTTP " + r.status);
      return doc;
    }
  }
  function status(el, text, isError) {
    el.textContent = text;
    el.classList.toggle("error", !!isError);
  }

  // --- photo ------------------------------------------------------------------------------------------
  async function analyse(file) {
    const st = $("status");
    if (!file) return;
    clearResult();  // a failed upload must not leave the previous photo's boxes, table and JSON on show
    status(st, "Analysing " + file.name + "…");
    state.name = file.name;
    const img = new Image();
    const url = URL.createObjectURL(file);
    try {
      await new Promise((ok, bad) => { img.onload = ok; img.onerror = () => bad(new Error("the browser cannot show this image")); img.src = url; });
      // the lowest threshold the server allows: the slider then filters here, without another request
      state.doc = await post("/v1/analyze?det_thresh=0.3", file);
      state.image = img;
      $("download").disabled = false;
      render();
    } catch (e) {
      status(st, e.message, true);
    }
  }
  function clearResult() {
    state.doc = null; state.image = null;
    const canvas = $("canvas");
    canvas.width = 0; canvas.height = 0;
    canvas.dataset.faces = "0";
    $("faces").tBodies[0].innerHTML = "";
    $("download").disabled = true;
  }
  function shownFaces() {
    const t = parseFloat($("thresh").value);
    return state.doc ? state.doc.faces.filter((f) => score(f) >= t) : [];
  }
  function drawFace(ctx, f, scale, text, stale) {
    // canvas pixels per CSS pixel: labels stay readable where the canvas is shown smaller (phones)
    const k = Math.max(1, ctx.canvas.width / Math.max(1, ctx.canvas.getBoundingClientRect().width));
    const [x1, y1, x2, y2] = box(f).map((v) => v * scale);
    const side = Math.max(1, Math.min(x2 - x1, y2 - y1));
    const flagged = flags(f).length > 0;  // grey and dashed: too small, blurred or turned to judge well
    const color = flagged ? "#969696" : COLORS[gender(f)] || "#888";
    ctx.lineWidth = Math.max(2, side / 40);
    ctx.strokeStyle = color;
    // dashed: an old box (the camera's, a request behind), or a face too small, blurred or turned to judge
    ctx.setLineDash(stale || flagged ? [ctx.lineWidth * 3, ctx.lineWidth * 2] : []);
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.setLineDash([]);
    ctx.fillStyle = "#ffd400";
    for (const [x, y] of landmarks(f)) {
      ctx.beginPath(); ctx.arc(x * scale, y * scale, Math.max(2, side / 45), 0, 2 * Math.PI); ctx.fill();
    }
    const size = Math.max(11 * k, Math.min(28 * k, side / 4));
    ctx.font = `600 ${size}px system-ui, sans-serif`;
    const w = ctx.measureText(text).width + 6, h = size + 4;
    const ty = y1 - h >= 0 ? y1 - h : y2;
    const tx = Math.max(0, Math.min(x1, ctx.canvas.width - w));  // a face at the edge keeps its whole label
    ctx.fillStyle = color; ctx.fillRect(tx, ty, w, h);
    ctx.fillStyle = "#fff"; ctx.textBaseline = "top"; ctx.fillText(text, tx + 3, ty + 2);
  }
  function render() {
    const canvas = $("canvas"), img = state.image;
    if (!img || !state.doc) return;
    // the canvas holds at most 1600 px across; CSS scales it to the page
    const scale = Math.min(1, 1600 / img.naturalWidth);
    canvas.width = Math.round(img.naturalWidth * scale);
    canvas.height = Math.round(img.naturalHeight * scale);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
    const faces = shownFaces();
    // a face's number is the service's (`face`, as in the JSON download): hidden faces leave gaps
    const num = (f, i) => (typeof f.face === "number" ? f.face : i + 1);
    state.labels = faces.map((f, i) => `${num(f, i)} ${label(f)}`);  // what the boxes say (the browser test reads it)
    faces.forEach((f, i) => drawFace(ctx, f, scale, state.labels[i]));
    canvas.dataset.faces = String(faces.length);
    const rows = faces.map((f, i) => {
      const g = gender(f), p = pMale(f), a = age(f), r = ageRange(f), q = flags(f);
      const pg = p == null ? "" : p.toFixed(2);
      return `<tr class="${q.length ? "flagged" : ""}"><td>${num(f, i)}</td><td class="${g || ""}">${g || "unknown"}</td>` +
        `<td>${pg}</td><td>${a == null ? "" : a.toFixed(1)}</td><td>${r ? r[0] + "-" + r[1] : ""}</td>` +
        `<td>${q.length ? "low: " + q.join(", ") : "ok"}</td><td>${score(f).toFixed(3)}</td><td>${box(f).join(", ")}</td></tr>`;
    });
    $("faces").tBodies[0].innerHTML = rows.join("");
    const total = state.doc.faces_total ?? state.doc.faces.length;
    const dropped = state.doc.faces_dropped ? `, the ${state.doc.faces_dropped} smallest not labelled` : "";
    const ms = state.doc.timings_ms ? ` in ${Math.round(state.doc.timings_ms.total)} ms` : "";
    status($("status"), `${faces.length} face${faces.length === 1 ? "" : "s"} at threshold ` +
      `${parseFloat($("thresh").value).toFixed(2)} (${total} found at 0.30${dropped})${ms}`);
  }
  function download() {
    if (!state.doc) return;
    const blob = new Blob([JSON.stringify(state.doc, null, 2)], { type: "application/json" });
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = (state.name.replace(/\.[^.]*$/, "") || "faces") + ".json";
    document.body.appendChild(a); a.click(); a.remove();
  }

  $("file").addEventListener("change", (e) => {
    analyse(e.target.files[0]);
    e.target.value = "";  // picking the same photo again analyses it again
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    analyse(e.dataTransfer.files[0]);
  });
  $("thresh").addEventListener("input", () => {
    $("thresh-out").textContent = parseFloat($("thresh").value).toFixed(2);
    render();
  });
  $("download").addEventListener("click", download);

  // --- camera: frames at a capped rate, one in flight; tracks and smoothing come from the service ------
  async function startCamera() {
    const st = $("cam-status");
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 } }, audio: false });
    } catch (e) {
      status(st, "No camera: " + e.message, true);
      return;
    }
    const video = $("video");
    video.srcObject = state.stream;
    await video.play();
    state.session = (crypto.randomUUID ? crypto.randomUUID() : String(Math.random()).slice(2)).replace(/[^A-Za-z0-9-]/g, "");
    state.frames = [];
    $("cam-start").disabled = true; $("cam-stop").disabled = false;
    status(st, "Camera on");
    loop();
  }
  async function loop() {
    if (!state.stream) return;
    const started = performance.now();
    const fps = Math.min(10, Math.max(1, parseFloat($("cam-fps").value) || 4));
    try {
      const video = $("video");
      const scale = Math.min(1, 640 / video.videoWidth);
      const grab = document.createElement("canvas");
      grab.width = Math.round(video.videoWidth * scale); grab.height = Math.round(video.videoHeight * scale);
      grab.getContext("2d").drawImage(video, 0, 0, grab.width, grab.height);
      const blob = await new Promise((ok) => grab.toBlob(ok, "image/jpeg", 0.85));
      const grabbed = performance.now();
      const line = await post(`/v1/track?session=${state.session}&det_thresh=${$("thresh").value}`, blob);
      if (!state.stream) return;
      state.frames.push(line);
      if (state.frames.length > 500) state.frames.shift();
      acceptLine(line, grabbed, grab.width, grab.height);
      status($("cam-status"), `frame ${line.frame}: ${line.faces.length} face${line.faces.length === 1 ? "" : "s"}` +
        (line.timings_ms ? `, ${Math.round(line.timings_ms.total)} ms` : ""));
    } catch (e) {
      status($("cam-status"), e.message, true);
    }
    const wait = Math.max(0, 1000 / fps - (performance.now() - started));
    state.camTimer = setTimeout(loop, wait);
  }

  // --- where the faces are now: an answer describes the frame grabbed one request ago, so each tracked
  // box moves on at its track's velocity (its last two answers) for the time since that frame was grabbed,
  // at most PREDICT_MS; a box whose frame is older than STALE_MS is drawn dashed ---------------------------
  const PREDICT_MS = 1000, STALE_MS = 1000;
  function predictBox(prev, cur, now) {
    if (!prev || !(cur.t > prev.t)) return cur.box.slice();
    const dt = Math.min(Math.max(0, now - cur.t), PREDICT_MS);
    return cur.box.map((v, i) => v + (v - prev.box[i]) / (cur.t - prev.t) * dt);
  }
  const isStale = (grabbed, now) => now - grabbed > STALE_MS;
  function acceptLine(line, grabbed, w, h) {
    const seen = new Map(), prevSeen = new Map();
    for (const f of line.faces) {
      const id = tracked(f) ? tracked(f).id : null;
      if (id == null) continue;
      seen.set(id, { box: box(f), t: grabbed });
      if (state.seen.has(id)) prevSeen.set(id, state.seen.get(id));
    }
    state.seen = seen; state.prevSeen = prevSeen;
    state.live = { line, grabbed, w, h };
    const canvas = $("overlay");
    canvas.width = w; canvas.height = h;
    drawOverlay(performance.now());
    if (!state.raf) state.raf = requestAnimationFrame(animate);
  }
  function animate() {
    state.raf = 0;
    if (!state.live || !state.stream) return;
    drawOverlay(performance.now());
    state.raf = requestAnimationFrame(animate);
  }
  function drawOverlay(now) {
    const canvas = $("overlay"), live = state.live;
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    if (!live) return;
    const stale = isStale(live.grabbed, now);
    let predicted = 0;
    for (const f of live.line.faces) {
      const id = tracked(f) ? tracked(f).id : null;
      let shown = f;
      if (id != null && state.prevSeen.has(id)) {
        const b = predictBox(state.prevSeen.get(id), state.seen.get(id), now), b0 = box(f);
        const dx = (b[0] + b[2] - b0[0] - b0[2]) / 2, dy = (b[1] + b[3] - b0[1] - b0[3]) / 2;
        shown = Object.assign({}, f, { box: b, landmarks: landmarks(f).map(([x, y]) => [x + dx, y + dy]) });
        predicted++;
      }
      drawFace(ctx, shown, 1, `#${id == null ? "?" : id} ${label(f)}`, stale);
    }
    canvas.dataset.faces = String(live.line.faces.length);
    canvas.dataset.predicted = String(predicted);
    canvas.dataset.stale = String(stale ? live.line.faces.length : 0);
  }
  Object.assign(state, { predictBox, isStale, acceptLine, drawOverlay, PREDICT_MS, STALE_MS });
  function stopCamera() {
    clearTimeout(state.camTimer);
    cancelAnimationFrame(state.raf); state.raf = 0;
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    $("cam-start").disabled = false; $("cam-stop").disabled = true;
    status($("cam-status"), "Camera off");
  }
  $("cam-start").addEventListener("click", startCamera);
  $("cam-stop").addEventListener("click", stopCamera);

  function show(tab) {
    const photo = tab === "photo";
    $("photo-pane").hidden = !photo; $("camera-pane").hidden = photo;
    $("tab-photo").classList.toggle("active", photo); $("tab-camera").classList.toggle("active", !photo);
    if (photo) stopCamera();
  }
  $("tab-photo").addEventListener("click", () => show("photo"));
  $("tab-camera").addEventListener("click", () => show("camera"));
})();
