// The room display's page: follows /room/events (server-sent events) and paints each verdict.
// No polling and nothing to click: EventSource reconnects by itself (the server sends `retry:`);
// when it cannot, the page says so after OFFLINE_AFTER_MS. Text from the server is only ever set as
// textContent, never as markup.
"use strict";

const OFFLINE_AFTER_MS = 2000;
const RECONNECT_MS = 2000; // after a refusal (EventSource gives up on a non-stream answer; this page does not)
// The page's words: English here, replaced by the site's language from each status event
// (edge.room.LABELS, translated by the appliance's catalogue).
const L = {
  pass: "PASS", fail: "FAIL", indeterminate: "CHECK", rejected: "NOT JUDGED",
  ap: "AP", lateral: "Lateral", oblique: "Oblique",
  target: "target {ei}",
  seconds_ago: "exposure {n} s ago", minutes_ago: "exposure {n} min ago", hours_ago: "exposure {n} h ago",
  accession: "Accession {accession}", picture_follows: "picture follows", waiting: "waiting for the first image",
  offline: "display offline: appliance not reachable",
  broker: "broker down: verdicts are kept and sent when it is back",
  degraded: "degraded: judging on the fallback backend, slower",
};

function say(key, values) {
  return L[key].replace(/\{(\w+)\}/g, (whole, name) => (values && name in values ? String(values[name]) : whole));
}

const $ = (id) => document.getElementById(id);
const state = { current: null, receivedAt: 0, online: false, broker: true, degraded: "", offlineTimer: null };

function text(id, value) {
  $(id).textContent = value;
}

function signed(x) {
  return (x > 0 ? "+" : x < 0 ? "\u2212" : "") + Math.abs(x).toFixed(1);
}

function exposureLine(exposure) {
  if (!exposure) return "";
  const parts = [];
  if (exposure.exposure_index != null) {
    let ei = "EI " + Math.round(exposure.exposure_index);
    if (exposure.target_exposure_index != null) ei += " (" + say("target", { ei: Math.round(exposure.target_exposure_index) }) + ")";
    parts.push(ei);
  }
  if (exposure.deviation_index != null) parts.push("DI " + signed(exposure.deviation_index));
  return parts.join("   ");
}

function since() {
  const v = state.current;
  if (!v || v.received_unix == null) return "";
  const seconds = Math.max(0, v.server_unix - v.received_unix + (performance.now() - state.receivedAt) / 1000);
  if (seconds < 60) return say("seconds_ago", { n: Math.floor(seconds) });
  if (seconds < 3600) return say("minutes_ago", { n: Math.floor(seconds / 60) });
  return say("hours_ago", { n: Math.floor(seconds / 3600) });
}

function corrections(v) {
  const list = $("corrections");
  list.replaceChildren();
  for (const c of v.corrections) {
    const item = document.createElement("li");
    item.className = c.outcome === "warn" ? "warn" : "fail";
    const titles = document.createElement("span");
    titles.className = "titles";
    titles.textContent = c.items.join(", ");
    const sentence = document.createElement("span");
    sentence.className = "text";
    sentence.textContent = c.text;
    item.append(titles, sentence);
    list.append(item);
  }
}

function headline(v) {
  if (v.headline) return v.headline;
  if (v.reason) return v.reason;
  return v.findings.map((f) => f.title).join(", ");
}

function showVerdict(v) {
  state.current = v;
  state.receivedAt = performance.now();
  document.documentElement.lang = v.language || "en";
  document.body.dataset.state = v.verdict;
  document.body.dataset.n = v.n;
  text("verdict", L[v.verdict] || String(v.verdict).toUpperCase());
  text("view", v.view ? L[v.view] || v.view : "");
  text("headline", headline(v));
  corrections(v);
  text("exposure", exposureLine(v.exposure));
  text("since", since());
  text("accession", v.accession ? say("accession", { accession: v.accession }) : "");
  $("overlay").removeAttribute("src"); // the picture of the previous image must not stay beside this verdict
  text("picture-note", v.verdict === "rejected" ? "" : say("picture_follows"));
  showStatus();
  // The frame that paints it: the benchmark reads this (exposure to display)
  requestAnimationFrame(() => {
    document.body.dataset.renderedAt = Date.now();
    document.body.dataset.renderedN = v.n; // last: whoever watches it finds renderedAt already set
  });
}

function showOverlay(o) {
  if (!state.current || o.n !== state.current.n) return;
  const img = $("overlay");
  img.onload = () => text("picture-note", "");
  img.src = o.url;
}

function showStatus() {
  const lines = [];
  if (!state.online) lines.push(["offline", say("offline")]);
  if (state.online && !state.broker) lines.push(["broker", say("broker")]);
  const degraded = state.degraded || (state.current && state.current.degraded);
  if (state.online && degraded) lines.push(["degraded", say("degraded")]);
  const list = $("status");
  list.replaceChildren();
  for (const [kind, message] of lines) {
    const item = document.createElement("li");
    item.className = kind;
    item.textContent = message;
    list.append(item);
  }
  document.body.classList.toggle("offline", !state.online);
  document.body.dataset.status = lines.map(([kind]) => kind).join(" ");
}

function offline() {
  state.online = false;
  showStatus();
}

function connect() {
  const source = new EventSource("/room/events");
  source.onopen = () => {
    clearTimeout(state.offlineTimer);
    state.offlineTimer = null;
    state.online = true;
    showStatus();
  };
  source.onerror = () => {
    if (state.offlineTimer === null) state.offlineTimer = setTimeout(offline, OFFLINE_AFTER_MS);
    if (source.readyState === EventSource.CLOSED) {
      source.close();
      setTimeout(connect, RECONNECT_MS);
    }
  };
  source.addEventListener("verdict", (e) => showVerdict(JSON.parse(e.data)));
  source.addEventListener("overlay", (e) => showOverlay(JSON.parse(e.data)));
  source.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    state.broker = s.broker;
    state.degraded = s.degraded;
    if (s.labels) {
      Object.assign(L, s.labels);
      if (state.current) showVerdict(state.current);
      else text("headline", say("waiting"));
    }
    showStatus();
  });
}

state.online = true; // until the first connection fails
state.offlineTimer = setTimeout(offline, OFFLINE_AFTER_MS); // cleared when the stream opens
setInterval(() => text("since", since()), 1000);
connect();
