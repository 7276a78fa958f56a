// The repligate playground: runs a model page's form through the API with the key this
// browser keeps (localStorage, sent only as a bearer header), follows the run live over
// its event stream (urls.stream) or by polling urls.get, and lists the key's history.
// The page is built with DOM calls and textContent only: nothing is parsed as HTML.
"use strict";

(function () {
  const KEY = "repligate.apiToken";
  const TERMINAL = ["succeeded", "failed", "canceled"];
  const VIDEO = /\.(mp4|webm|mov)(\?|$)/i;
  const TQDM_PERCENT = /(\d{1,3})%\|/g;
  const root = document.getElementById("playground");
  if (!root) return;
  const api = root.dataset.api;
  const base = root.dataset.base;
  const byId = (id) => document.getElementById(id);

  const token = () => localStorage.getItem(KEY) || "";

  function element(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showError(message) {
    const box = byId("error");
    box.textContent = message;
    box.hidden = !message;
  }

  // The API's errors: Replicate's {title, detail, status}, or text.
  async function call(method, url, body) {
    const headers = { Authorization: "Bearer " + token() };
    let payload;
    if (body instanceof FormData) payload = body;
    else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      payload = JSON.stringify(body);
    }
    const full = /^https?:/.test(url) ? url : api + url;
    const response = await fetch(full, { method, headers, body: payload });
    const text = await response.text();
    let data;
    try {
      data = JSON.parse(text);
    } catch (_) {
      data = { detail: text };
    }
    if (!response.ok) {
      const why = (data && (data.detail || data.title)) || "HTTP " + response.status;
      throw new Error(typeof why === "string" ? why : JSON.stringify(why));
    }
    return data;
  }

  // ---- the key ----------------------------------------------------------------------
  function showKeyState() {
    byId("key-state").textContent = token()
      ? "A token is saved in this browser."
      : "No token saved yet.";
    byId("forget-key").hidden = !token();
  }

  byId("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = byId("key").value.trim();
    if (value) localStorage.setItem(KEY, value);
    byId("key").value = "";
    showKeyState();
    if (root.dataset.page === "history") loadHistory(null);
  });
  byId("forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    showKeyState();
  });
  showKeyState();

  // ---- outputs ------------------------------------------------------------------------
  function outputNode(item) {
    if (typeof item === "string" && /^(https?:|data:)/.test(item)) {
      if (VIDEO.test(item) || item.startsWith("data:video/")) {
        return element("video", { src: item, controls: "", loop: "", class: "output" });
      }
      const link = element("a", { href: item });
      link.appendChild(element("img", { src: item, alt: "output", class: "output" }));
      return link;
    }
    const text = typeof item === "string" ? item : JSON.stringify(item, null, 1);
    return element("pre", { class: "output" }, text);
  }

  function outputList(output) {
    if (output === null || output === undefined) return [];
    return Array.isArray(output) ? output : [output];
  }

  // ---- the run page -------------------------------------------------------------------
  const form = byId("run-form");
  if (form) setUpRun();

  function setUpRun() {
    for (const slider of document.querySelectorAll("input.slider")) {
      const field = byId(slider.dataset.for);
      slider.addEventListener("input", () => {
        field.value = slider.value;
      });
      field.addEventListener("input", () => {
        if (field.value !== "") slider.value = field.value;
      });
    }
    for (const picker of document.querySelectorAll("input[data-upload-for]")) {
      picker.addEventListener("change", () => upload(picker));
    }
    for (const button of document.querySelectorAll("button.copy")) {
      button.addEventListener("click", () => copy(button));
    }
    byId("cancel").addEventListener("click", cancel);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      run();
    });
  }

  async function upload(picker) {
    const file = picker.files[0];
    if (!file) return;
    const target = byId(picker.dataset.uploadFor);
    if (!token()) {
      picker.value = "";
      return alertResult("Save your API token above first: uploads need it.");
    }
    const body = new FormData();
    body.append("content", file, file.name);
    target.value = "";
    target.placeholder = "uploading " + file.name + "…";
    try {
      const uploaded = await call("POST", "/files", body);
      target.value = uploaded.urls.get;
      showError("");
    } catch (err) {
      picker.value = ""; // so that picking the same file again tries again
      alertResult("Upload of " + file.name + " failed: " + err.message);
    }
    target.placeholder = "https://… or data:…";
  }

  function alertResult(message) {
    byId("result").hidden = false;
    showError(message);
  }

  // Every field with text, as the schema's type; empty fields are left to their defaults.
  function collect() {
    const input = {};
    for (const control of form.querySelectorAll("[data-kind]")) {
      const kind = control.dataset.kind;
      if (kind === "boolean") {
        input[control.name] = control.checked;
        continue;
      }
      const raw = control.value;
      if (raw.trim() === "") continue;
      if (kind === "integer" || kind === "number") {
        const number = Number(raw);
        // Not a number: sent as typed, so the API says what is wrong with it.
        input[control.name] = Number.isFinite(number) ? number : raw;
      } else input[control.name] = raw;
    }
    return input;
  }

  let current = 0; // which run the page shows; a newer run's events win

  async function run() {
    const body = { version: form.dataset.version, input: collect() };
    const runId = ++current;
    byId("result").hidden = false;
    showError("");
    byId("outputs").replaceChildren();
    byId("logs").textContent = "";
    byId("metrics").textContent = "";
    byId("web-link").hidden = true;
    byId("prediction-id").textContent = "";
    showProgress(null);
    showSnippets(body);
    if (!token()) return showError("Save your API token above first.");
    setStatus("creating");
    byId("run").disabled = true;
    try {
      const created = await call("POST", "/predictions", body);
      if (runId === current) follow(created, runId);
    } catch (err) {
      setStatus("failed");
      showError(err.message);
      byId("run").disabled = false;
    }
  }

  let cancelUrl = null;

  async function cancel() {
    if (!cancelUrl) return;
    byId("cancel").disabled = true;
    try {
      await call("POST", cancelUrl);
    } catch (err) {
      showError("Cancel failed: " + err.message);
      byId("cancel").disabled = false;
    }
  }

  function setStatus(status) {
    const badge = byId("status");
    badge.textContent = status;
    badge.className = "status status-" + status;
  }

  function showProgress(percent) {
    const bar = byId("progress");
    bar.hidden = percent === null;
    if (percent !== null) bar.value = percent;
    byId("progress-text").textContent = percent === null ? "" : percent + "%";
  }

  // The structured progress when the server gives it, else the last tqdm percentage.
  function progressOf(prediction, logs) {
    const structured = prediction && prediction.progress;
    if (structured && structured.total > 0 && typeof structured.current === "number") {
      return Math.min(100, Math.round((100 * structured.current) / structured.total));
    }
    const found = [...logs.matchAll(TQDM_PERCENT)];
    return found.length ? Math.min(100, Number(found[found.length - 1][1])) : null;
  }

  function addOutputs(output) {
    const box = byId("outputs");
    const items = outputList(output);
    for (const item of items.slice(box.children.length)) box.appendChild(outputNode(item));
  }

  function render(prediction) {
    setStatus(prediction.status);
    cancelUrl = prediction.urls.cancel;
    byId("cancel").hidden = TERMINAL.includes(prediction.status);
    byId("prediction-id").textContent = prediction.id;
    const web = byId("web-link");
    web.href = prediction.urls.web;
    web.hidden = false;
    byId("logs").textContent = prediction.logs || "";
    const percent = progressOf(prediction, prediction.logs || "");
    if (percent !== null) showProgress(percent);
    addOutputs(prediction.output);
    if (prediction.error) showError(prediction.error);
    const metrics = prediction.metrics || {};
    const parts = [];
    if (typeof metrics.predict_time === "number") parts.push("predict " + metrics.predict_time.toFixed(2) + " s");
    if (typeof metrics.total_time === "number") parts.push("total " + metrics.total_time.toFixed(2) + " s");
    if (typeof metrics.image_count === "number") parts.push(metrics.image_count + " image(s)");
    byId("metrics").textContent = parts.join(" · ");
  }

  function follow(prediction, runId) {
    render(prediction);
    if (TERMINAL.includes(prediction.status)) return finish(prediction.urls.get, runId);
    if (typeof EventSource === "undefined" || !prediction.urls.stream) {
      return poll(prediction.urls.get, runId);
    }
    // progress=1: structured progress events too (off by default, since the official
    // client refuses event types it does not know).
    const streamUrl = new URL(prediction.urls.stream, window.location.href);
    streamUrl.searchParams.set("progress", "1");
    const source = new EventSource(streamUrl.toString());
    let logs = "";
    let closed = false;
    const close = () => {
      closed = true;
      source.close();
    };
    source.addEventListener("output", (event) => {
      if (runId !== current) return close();
      const box = byId("outputs");
      box.appendChild(outputNode(event.data));
    });
    source.addEventListener("logs", (event) => {
      if (runId !== current) return close();
      logs += event.data;
      setStatus("processing");
      byId("cancel").hidden = false;
      byId("logs").textContent = logs;
      const percent = progressOf(null, logs);
      if (percent !== null) showProgress(percent);
    });
    // Structured progress ({current, total, ...}), where the server streams it.
    source.addEventListener("progress", (event) => {
      if (runId !== current) return close();
      try {
        const percent = progressOf({ progress: JSON.parse(event.data) }, "");
        if (percent !== null) showProgress(percent);
      } catch (_) {
        // Not JSON: the logs' percentages still show.
      }
    });
    source.addEventListener("done", () => {
      close();
      finish(prediction.urls.get, runId);
    });
    // Also the stream's own "error" event (a failed run) and a broken connection: the
    // prediction object says how it ended, polled until it has.
    source.addEventListener("error", () => {
      if (closed) return;
      close();
      poll(prediction.urls.get, runId);
    });
  }

  async function poll(url, runId) {
    while (runId === current) {
      try {
        const prediction = await call("GET", url);
        if (runId !== current) return;
        render(prediction);
        if (TERMINAL.includes(prediction.status)) return done(runId);
      } catch (err) {
        showError(err.message);
        return done(runId);
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  async function finish(url, runId) {
    return poll(url, runId);
  }

  function done(runId) {
    if (runId !== current) return;
    byId("run").disabled = false;
    byId("cancel").hidden = true;
    byId("cancel").disabled = false;
    if (byId("status").textContent === "succeeded") showProgress(100);
  }

  // ---- the same request as code -------------------------------------------------------
  function python(value, indent) {
    const pad = "    ".repeat(indent + 1);
    const end = "    ".repeat(indent);
    if (value === null) return "None";
    if (value === true) return "True";
    if (value === false) return "False";
    if (Array.isArray(value)) {
      if (!value.length) return "[]";
      return "[\n" + value.map((v) => pad + python(v, indent + 1) + ",\n").join("") + end + "]";
    }
    if (typeof value === "object") {
      const entries = Object.entries(value);
      if (!entries.length) return "{}";
      const lines = entries.map(([k, v]) => pad + JSON.stringify(k) + ": " + python(v, indent + 1) + ",\n");
      return "{\n" + lines.join("") + end + "}";
    }
    return JSON.stringify(value); // a JSON string or number is a Python literal too
  }

  function showSnippets(body) {
    const json = JSON.stringify(body).replace(/'/g, "'\\''");
    byId("curl-snippet").textContent =
      "curl -s -X POST " + api + "/predictions \\\n" +
      '  -H "Authorization: Bearer $REPLICATE_API_TOKEN" \\\n' +
      "  -H 'Content-Type: application/json' \\\n" +
      "  -H 'Prefer: wait' \\\n" +
      "  -d '" + json + "'";
    byId("python-snippet").textContent =
      "import os\n\nimport replicate\n\n" +
      "client = replicate.Client(\n" +
      '    api_token=os.environ["REPLICATE_API_TOKEN"],\n' +
      "    base_url=" + JSON.stringify(base) + ",\n)\n" +
      "output = client.run(\n    " + JSON.stringify(body.version) + ",\n" +
      "    input=" + python(body.input, 1) + ",\n)\nprint(output)";
  }

  async function copy(button) {
    const text = byId(button.dataset.copy).textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // No clipboard API off https: select the text for a manual copy instead.
      const range = document.createRange();
      range.selectNodeContents(byId(button.dataset.copy));
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
      return;
    }
    button.textContent = "Copied";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  }

  // ---- the history page ---------------------------------------------------------------
  if (root.dataset.page === "history") loadHistory(null);

  async function loadHistory(next) {
    const rows = document.querySelector("#history tbody");
    if (!next) rows.replaceChildren();
    showError("");
    byId("more").hidden = true;
    if (!token()) return showError("Save your API token above to see its predictions.");
    let page;
    try {
      page = await call("GET", next || "/predictions");
    } catch (err) {
      return showError(err.message);
    }
    for (const prediction of page.results) rows.appendChild(historyRow(prediction));
    if (!page.results.length && !next) showError("This token has no predictions yet.");
    const more = byId("more");
    more.hidden = !page.next;
    more.onclick = () => loadHistory(page.next);
  }

  function historyRow(prediction) {
    const row = element("tr", { "data-id": prediction.id });
    const when = element("td");
    when.appendChild(element("a", { href: prediction.urls.web }, prediction.created_at || ""));
    row.appendChild(when);
    const model = element("td");
    model.appendChild(element("a", { href: base + "/models/" + prediction.model }, prediction.model));
    row.appendChild(model);
    const status = element("td");
    status.appendChild(
      element("span", { class: "status status-" + prediction.status }, prediction.status),
    );
    row.appendChild(status);
    const output = element("td");
    const first = outputList(prediction.output)[0];
    if (first !== undefined) {
      const shown = outputNode(first);
      shown.classList.add("thumb");
      output.appendChild(shown);
    }
    row.appendChild(output);
    return row;
  }
})();
