// Upload page: pick or drop an image, resize it, POST it, show the result and the detections.
"use strict";

(function () {
  const MAX_SIDE = 1280;          // longer side sent to the server, as the original page did
  const TIMEOUT_MS = 25000;       // the original page's request timeout
  const POLL_MS = 3000;           // footer online/offline poll
  const POLL_TIMEOUT_MS = 2500;
  const RETRIES = 3;              // a busy answer (503/429 with Retry-After) is retried this often
  const RETRY_CAP_S = 10;         // ... after waiting what the server says, at most this long

  const backend = (document.body.dataset.backend || "").replace(/\/+$/, "");
  const $ = (id) => document.getElementById(id);
  const input = $("file-input");
  const uploadButton = $("upload-button");
  const dropZone = $("drop-zone");
  const statusLine = $("status");
  const errorBox = $("error");
  const figure = $("figure");
  const preview = $("preview");
  const caption = $("caption");
  const list = $("detections");
  const reloadButton = $("reload-button");
  const backendState = $("backend-state");
  let busy = false;

  uploadButton.addEventListener("click", () => input.click());
  dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) handleFile(input.files[0]);
  });
  reloadButton.addEventListener("click", () => window.location.reload());

  ["dragenter", "dragover"].forEach((name) => dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => dropZone.addEventListener(name, (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
  }));
  dropZone.addEventListener("drop", (event) => {
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files[0]) handleFile(files[0]);
  });
  // A file dropped next to the zone must not navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  function setBusy(value) {
    busy = value;
    uploadButton.disabled = value;
    if (value) delete statusLine.dataset.retry;
    statusLine.textContent = value ? "Processing..." : "";
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  async function handleFile(file) {
    if (busy) return;
    showError("");
    list.replaceChildren();
    reloadButton.hidden = true;
    setBusy(true);
    try {
      const dataUrl = await readAsDataURL(file);
      preview.src = dataUrl;
      preview.dataset.state = "preview";
      figure.hidden = false;
      caption.textContent = file.name;
      const orientation = await readOrientation(file);
      const prepared = await prepareUpload(file, dataUrl, orientation);
      await send(prepared);
    } catch (err) {
      showError(err.message || String(err));
    } finally {
      setBusy(false);
      reloadButton.hidden = false;
    }
  }

  function readAsDataURL(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(new Error("The file could not be read."));
      reader.readAsDataURL(file);
    });
  }

  // EXIF orientation (1..8) of a JPEG, or null: read from the APP1 segment.
  async function readOrientation(file) {
    try {
      const view = new DataView(await file.slice(0, 128 * 1024).arrayBuffer());
      if (view.byteLength < 4 || view.getUint16(0) !== 0xffd8) return null;
      let offset = 2;
      while (offset + 4 <= view.byteLength) {
        const marker = view.getUint16(offset);
        const length = view.getUint16(offset + 2);
        if (marker === 0xffe1 && view.getUint32(offset + 4) === 0x45786966) {
          const tiff = offset + 10;
          const little = view.getUint16(tiff) === 0x4949;
          const ifd = tiff + view.getUint32(tiff + 4, little);
          const count = view.getUint16(ifd, little);
          for (let i = 0; i < count; i++) {
            const entry = ifd + 2 + i * 12;
            if (view.getUint16(entry, little) === 0x0112) return view.getUint16(entry + 8, little);
          }
          return null;
        }
        if ((marker & 0xff00) !== 0xff00) return null;
        offset += 2 + length;
      }
    } catch (err) {
      return null;
    }
    return null;
  }

  function loadImage(src) {
    return new Promise((resolve, reject) => {
      const img = new Image();
      img.onload = () => resolve(img);
      img.onerror = () => reject(new Error("not decodable"));
      img.src = src;
    });
  }

  // The blob to send and its orientation field. A resized image is drawn upright by the browser
  // (EXIF applied, tag dropped), so it is sent with orientation 1; an unchanged file keeps its
  // EXIF tag and its orientation value (the server applies the tag itself).
  async function prepareUpload(file, dataUrl, orientation) {
    const asIs = { blob: file, name: file.name || "upload", orientation: orientation || "undefined" };
    let img;
    try {
      img = await loadImage(dataUrl);
    } catch (err) {
      figure.hidden = true;  // the browser cannot show it: let the server judge the file
      return asIs;
    }
    const width = img.naturalWidth;
    const height = img.naturalHeight;
    if (Math.max(width, height) <= MAX_SIDE) return asIs;
    const scale = MAX_SIDE / Math.max(width, height);
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(width * scale));
    canvas.height = Math.max(1, Math.round(height * scale));
    const context = canvas.getContext("2d");
    context.fillStyle = "#fff";
    context.fillRect(0, 0, canvas.width, canvas.height);
    context.drawImage(img, 0, 0, canvas.width, canvas.height);
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
    if (!blob) return asIs;
    return { blob: blob, name: "input.jpg", orientation: 1 };
  }

  // POST the image; a busy server's 503/429 with Retry-After is retried (bounded) after a
  // countdown in the status line, anything else is shown at once.
  async function send(prepared) {
    for (let attempt = 1; ; attempt++) {
      const response = await post(prepared);
      const wait = retryAfterSeconds(response);
      if ((response.status === 503 || response.status === 429) && wait !== null && attempt <= RETRIES) {
        await countdown(wait, attempt);
        continue;
      }
      return show(response);
    }
  }

  // Seconds from a Retry-After header (delta seconds or an HTTP date), capped; null if absent.
  function retryAfterSeconds(response) {
    const value = (response.headers.get("Retry-After") || "").trim();
    if (!value) return null;
    let seconds = /^\d+$/.test(value) ? Number(value) : (Date.parse(value) - Date.now()) / 1000;
    if (!Number.isFinite(seconds)) return null;
    return Math.min(RETRY_CAP_S, Math.max(0, Math.ceil(seconds)));
  }

  async function countdown(seconds, attempt) {
    statusLine.dataset.retry = String(attempt);
    for (let left = seconds; left > 0; left--) {
      statusLine.textContent = "Server busy, retrying in " + left + " s (try " + attempt + " of " + RETRIES + ")...";
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    statusLine.textContent = "Processing...";
  }

  async function post(prepared) {
    const form = new FormData();
    form.append("file", prepared.blob, prepared.name);
    form.append("orientation", String(prepared.orientation));
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    let response;
    try {
      response = await fetch(backend + "/?detections=1", {
        method: "POST", body: form, signal: controller.signal,
      });
    } catch (err) {
      if (err.name === "AbortError") {
        throw new Error("The server did not answer within " + TIMEOUT_MS / 1000 + " s; try again or use a smaller image.");
      }
      throw new Error("The server is offline or unreachable; check the footer and try again.");
    } finally {
      clearTimeout(timer);
    }
    return response;
  }

  async function show(response) {
    let body = null;
    try {
      body = await response.json();
    } catch (err) {
      body = null;
    }
    if (!response.ok) throw new Error(describeError(response.status, body));
    if (!body || typeof body.image !== "string") {
      throw new Error("The server answered without an image; try again.");
    }
    preview.src = body.image;
    preview.dataset.state = "result";
    preview.alt = "Image with detected objects";
    caption.textContent = body.model ? "Detected with " + body.model : "";
    showDetections(body.detections);
  }

  function describeError(status, body) {
    const detail = body && body.error ? " Server said: " + body.error + "." : "";
    switch (status) {
      case 400: return "The server could not read this image." + detail;
      case 413: return "The file is too large to upload; choose a smaller image." + detail;
      case 415: return "That file is not an image the server reads; use JPEG, PNG, GIF, WebP or BMP." + detail;
      case 422: return "The image has too many pixels; use a smaller image." + detail;
      case 429: return "Too many requests from this address; wait a moment and try again." + detail;
      case 502: case 503: case 504: return "The server is busy or restarting (" + status + "); try again in a moment." + detail;
      default: return "The server answered with error " + status + "." + detail;
    }
  }

  function showDetections(detections) {
    list.replaceChildren();
    if (!Array.isArray(detections)) return;
    if (detections.length === 0) {
      const item = document.createElement("li");
      item.textContent = "No objects found";
      item.className = "none";
      list.appendChild(item);
      return;
    }
    detections.forEach((det) => {
      const item = document.createElement("li");
      item.className = "detection";
      item.dataset.label = det.label;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = det.label;
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = Number(det.score).toFixed(2);
      item.append(label, score);
      list.appendChild(item);
    });
  }

  async function pollBackend() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), POLL_TIMEOUT_MS);
    let online = false;
    try {
      const response = await fetch(backend + "/status_check", {
        cache: "no-store", signal: controller.signal,
      });
      online = response.ok;
    } catch (err) {
      online = false;
    } finally {
      clearTimeout(timer);
    }
    backendState.textContent = online ? "Server: online" : "Server: offline";
    backendState.className = "backend " + (online ? "online" : "offline");
    backendState.dataset.state = online ? "online" : "offline";
    setTimeout(pollBackend, POLL_MS);
  }

  pollBackend();
})();
