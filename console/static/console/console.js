// Stello console: a client of the public REST and WebSocket APIs, nothing more. The API key
// lives in sessionStorage (this tab only) and travels in X-API-Key, or, for the WebSocket
// (browsers cannot set its headers), as the Sec-WebSocket-Protocol value the server accepts.
import { drawStarMap } from "./starmap.js";

const KEY_STORE = "stello.console.key";
const PAGE_SIZE = 10;
// No server event announces a fork made elsewhere (the watch frame reports turns only), so the
// tree is polled while a space is open; unchanged trees are not redrawn.
const TREE_POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  spaces: [], page: 0, space: null, tree: null, treeText: "", mainId: null,
  sessionId: null, meta: null, socket: null, poll: null, streaming: false,
};
// Read by the browser tests (first-render time of the star map).
window.stelloConsole = { metrics: {}, state };

function say(text, isError = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", isError);
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { "X-API-Key": state.key, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    if (response.status === 401) signOut("Your API key was refused; sign in again.");
    throw new ApiError(response.status, data);
  }
  return data;
}

const report = (error) => say(error.message || String(error), true);

// --- WebSocket: frames are answered in order, so pending requests form a queue. ------------
class Socket {
  constructor(spaceId) {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.ws = new WebSocket(`${scheme}://${location.host}/spaces/${spaceId}/ws`, [state.key]);
    this.pending = [];
    this.entered = null;
    this.ready = new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error("WebSocket connection failed"));
    });
    this.ws.onmessage = (event) => this.receive(JSON.parse(event.data));
    this.ws.onclose = (event) => {
      for (const p of this.pending.splice(0)) p.reject(new Error("connection closed"));
      if (state.socket === this) state.socket = null;
      if (event.code === 4401) signOut("Your API key was revoked.");
      else if (event.code === 4404) { say("This space was deleted.", true); loadSpaces(); }
    };
  }

  receive(frame) {
    if (frame.type === "session.updated") return onSessionUpdated(frame);
    const head = this.pending[0];
    if (!head) return;
    if (frame.type === "stream.delta") return head.onDelta && head.onDelta(frame.chunk);
    this.pending.shift();
    if (frame.type === "error") head.reject(new Error(frame.message || frame.code));
    else head.resolve(frame);
  }

  async request(frame, onDelta) {
    await this.ready;
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject, onDelta });
      this.ws.send(JSON.stringify(frame));
    });
  }

  close() { this.ws.close(1000); }
}

async function enteredSocket() {
  if (!state.socket) state.socket = new Socket(state.space.id);
  const socket = state.socket;
  if (socket.entered !== state.sessionId) {
    if (socket.entered) await socket.request({ type: "session.leave" });
    const frame = await socket.request({ type: "session.enter", sessionId: state.sessionId, watch: true });
    socket.entered = state.sessionId;
    $("slot-core").textContent = (frame.bootstrap && frame.bootstrap.context &&
      frame.bootstrap.context.core) || "(none)";
  }
  return socket;
}

function onSessionUpdated(frame) {
  refreshTree();
  if (frame.sessionId === state.sessionId && !state.streaming) {
    Promise.all([loadMessages(), refreshMeta()]).catch(report);
  }
}

// --- Sign in / out -----------------------------------------------------------------------
function showApp(signedIn) {
  $("sign-in").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
}

async function signIn(key) {
  state.key = key.trim();
  try {
    await api("GET", "/spaces");
  } catch (error) {
    state.key = "";
    return report(error);
  }
  sessionStorage.setItem(KEY_STORE, state.key);
  $("who").textContent = `key ${state.key.slice(0, 15)}…`;
  showApp(true);
  say("Signed in.");
  await loadSpaces();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_STORE);
  state.key = "";
  closeSpace();
  showApp(false);
  $("who").textContent = "";
  say(message || "Signed out.", Boolean(message));
}

// --- Spaces ------------------------------------------------------------------------------
async function loadSpaces() {
  try {
    state.spaces = await api("GET", "/spaces");
  } catch (error) { return report(error); }
  const pages = Math.max(1, Math.ceil(state.spaces.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  renderSpaces();
}

function renderSpaces() {
  const list = $("space-list");
  const pages = Math.max(1, Math.ceil(state.spaces.length / PAGE_SIZE));
  const shown = state.spaces.slice(state.page * PAGE_SIZE, (state.page + 1) * PAGE_SIZE);
  list.replaceChildren(...shown.map((space) => {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "link";
    button.textContent = space.label;
    button.dataset.spaceId = space.id;
    button.addEventListener("click", () => openSpace(space.id));
    li.appendChild(button);
    if (state.space && state.space.id === space.id) li.setAttribute("aria-current", "true");
    return li;
  }));
  if (!shown.length) list.innerHTML = '<li class="muted">No spaces yet.</li>';
  $("page-info").textContent = `Page ${state.page + 1} of ${pages} (${state.spaces.length})`;
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = state.page >= pages - 1;
}

function closeSpace() {
  clearInterval(state.poll);
  if (state.socket) state.socket.close();
  Object.assign(state, { space: null, tree: null, treeText: "", sessionId: null, socket: null });
  $("space-detail").hidden = true;
  $("session-body").hidden = true;
  $("map-box").innerHTML = '<p class="muted">Pick a space.</p>';
  $("map-count").textContent = "";
}

async function openSpace(id) {
  const started = performance.now();
  closeSpace();
  try {
    const [space, tree] = await Promise.all([api("GET", `/spaces/${id}`), api("GET", `/spaces/${id}/sessions`)]);
    const fetched = performance.now();
    state.space = space;
    showSpace(space);
    renderTree(tree, JSON.stringify(tree));
    // The time to a drawn (laid out) map: after the next frame.
    requestAnimationFrame(() => {
      window.stelloConsole.metrics.firstRender = {
        sessions: Number($("map-box").querySelector("svg").dataset.count),
        fetchMs: Math.round(fetched - started), totalMs: Math.round(performance.now() - started),
      };
    });
    renderSpaces();
    state.poll = setInterval(() => { if (!document.hidden) refreshTree(); }, TREE_POLL_MS);
    say(`Opened ${space.label}.`);
  } catch (error) { report(error); }
}

function showSpace(space) {
  $("space-detail").hidden = false;
  $("space-label").value = space.label;
  $("space-system").value = space.systemPrompt || "";
  $("space-consolidate").value = space.consolidatePrompt || "";
  $("space-integrate").value = space.integratePrompt || "";
}

function renderTree(tree, text) {
  state.tree = tree;
  state.treeText = text;
  state.mainId = tree.id;
  const count = drawStarMap($("map-box"), tree, { selected: state.sessionId, onOpen: openSession });
  $("map-count").textContent = `(${count} session${count === 1 ? "" : "s"})`;
}

async function refreshTree() {
  if (!state.space) return;
  const spaceId = state.space.id;
  try {
    const tree = await api("GET", `/spaces/${spaceId}/sessions`);
    const text = JSON.stringify(tree);
    if (state.space && state.space.id === spaceId && text !== state.treeText) {
      const focused = document.activeElement && document.activeElement.dataset &&
        document.activeElement.dataset.id;
      renderTree(tree, text);
      if (focused) {
        const star = $("map-box").querySelector(`[data-id="${CSS.escape(focused)}"]`);
        if (star) star.focus();
      }
    }
  } catch (error) { if (error.status === 404) closeSpace(); }
}

// --- Sessions ----------------------------------------------------------------------------
async function openSession(id) {
  state.sessionId = id;
  renderTree(state.tree, state.treeText);  // move the selection ring
  $("session-body").hidden = false;
  const base = `/spaces/${state.space.id}/sessions/${id}`;
  try {
    const meta = await api("GET", base);
    state.meta = meta;
    showMeta(meta);
    await Promise.all([loadMessages(), loadSlots(base), enteredSocket()]);
    $("chat-input").focus();
  } catch (error) { report(error); }
}

function showMeta(meta) {
  const source = meta.metadata && meta.metadata.sourceSessionId;
  const parts = [meta.role === "main" ? "main session" : "child session", meta.status,
    `${meta.turnCount} turn${meta.turnCount === 1 ? "" : "s"}`];
  if (source) parts.push(`forked from ${labelOf(source)}`);
  if (meta.scope) parts.push(`scope: ${meta.scope}`);
  $("session-title").textContent = `Session: ${meta.label || meta.id}`;
  $("session-meta").textContent = parts.join(" · ");
  const archived = meta.status === "archived";
  $("archive").textContent = archived ? "Unarchive" : "Archive";
  $("archive").disabled = meta.role === "main";
  $("chat-input").disabled = archived;
  $("chat-form").querySelector("button").disabled = archived;
}

function labelOf(id) {
  let found = id;
  (function walk(node) {
    if (node.id === id) found = node.label || id;
    (node.children || []).forEach(walk);
  })(state.tree);
  return found;
}

async function loadMessages() {
  const id = state.sessionId;
  const messages = await api("GET", `/spaces/${state.space.id}/sessions/${id}/messages`);
  if (id !== state.sessionId) return;
  $("chat").replaceChildren(...messages.map(messageItem));
  $("chat").scrollTop = $("chat").scrollHeight;
}

function messageItem(message) {
  const li = document.createElement("li");
  li.className = message.role;
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = message.role === "tool" ? `tool result (${message.toolCallId || "?"})` : message.role;
  li.appendChild(role);
  const body = document.createElement("span");
  body.className = "content";
  body.textContent = message.content;
  li.appendChild(body);
  for (const call of message.toolCalls || []) {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = `tool call: ${call.name}`;
    const pre = document.createElement("pre");
    pre.textContent = `${call.id}\n${JSON.stringify(call.input, null, 2)}`;
    details.append(summary, pre);
    li.appendChild(details);
  }
  return li;
}

async function loadSlots(base) {
  const get = (slot) => api("GET", `${base}/${slot}`).then((d) => d.content);
  const [system, consolidate, integrate, memory, insight, effC, effI] = await Promise.all([
    get("system-prompt"), get("consolidate-prompt"), get("integrate-prompt"), get("memory"),
    get("insight"), api("GET", `${base}/consolidate-prompt?effective=true`),
    api("GET", `${base}/integrate-prompt?effective=true`)]);
  $("slot-system-prompt").value = system || "";
  $("slot-consolidate-prompt").value = consolidate || "";
  $("slot-integrate-prompt").value = integrate || "";
  $("eff-consolidate-prompt").textContent = `In force: the ${effC.source} prompt.`;
  $("eff-integrate-prompt").textContent = `In force: the ${effI.source} prompt.`;
  $("slot-memory").textContent = memory || "(none yet)";
  $("slot-insight").textContent = insight || "(none)";
  const synthesis = state.mainId === state.sessionId ? memory
    : await api("GET", `/spaces/${state.space.id}/sessions/${state.mainId}/memory`).then((d) => d.content);
  $("slot-synthesis").textContent = synthesis || "(none yet)";
}

async function sendMessage(input) {
  const chat = $("chat");
  chat.appendChild(messageItem({ role: "user", content: input }));
  const reply = messageItem({ role: "assistant", content: "" });
  reply.setAttribute("aria-busy", "true");
  chat.appendChild(reply);
  const text = reply.querySelector(".content");
  state.streaming = true;
  try {
    const socket = await enteredSocket();
    await socket.request({ type: "session.stream", input }, (chunk) => {
      text.textContent += chunk;
      chat.scrollTop = chat.scrollHeight;
    });
    say("Reply complete.");
  } catch (error) {
    report(error);
  } finally {
    state.streaming = false;
    reply.removeAttribute("aria-busy");
  }
  // The stored history shows the tool calls and their results the stream does not carry.
  await Promise.all([loadMessages(), refreshMeta()]).catch(report);
  refreshTree();
}

async function refreshMeta() {
  const id = state.sessionId;
  const meta = await api("GET", `/spaces/${state.space.id}/sessions/${id}`);
  if (id === state.sessionId) { state.meta = meta; showMeta(meta); }
}

// --- Wiring ------------------------------------------------------------------------------
function on(id, event, handler) {
  $(id).addEventListener(event, (e) => {
    if (event === "submit") e.preventDefault();
    Promise.resolve(handler(e)).catch(report);
  });
}

on("key-form", "submit", () => signIn($("key-input").value));
if ($("staff-form")) {
  on("staff-form", "submit", async () => {
    const token = $("staff-form").querySelector("[name=csrfmiddlewaretoken]").value;
    const response = await fetch("/console/staff-key", {
      method: "POST", headers: { "X-CSRFToken": token }, credentials: "same-origin",
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    await signIn(data.key);
  });
}
on("sign-out", "click", () => signOut());
on("prev-page", "click", () => { state.page -= 1; renderSpaces(); });
on("next-page", "click", () => { state.page += 1; renderSpaces(); });
on("create-form", "submit", async () => {
  const space = await api("POST", "/spaces", { label: $("create-label").value });
  $("create-label").value = "";
  await loadSpaces();
  state.page = Math.floor(state.spaces.findIndex((s) => s.id === space.id) / PAGE_SIZE);
  await openSpace(space.id);
  say(`Created ${space.label}.`);
});
on("space-form", "submit", async () => {
  // Only what changed: a space's systemPrompt is copied to the main session, whose own prompt
  // may have been edited in the memory panel since.
  const fields = { label: "space-label", systemPrompt: "space-system",
    consolidatePrompt: "space-consolidate", integratePrompt: "space-integrate" };
  const changes = {};
  for (const [field, id] of Object.entries(fields)) {
    const value = $(id).value;
    const next = field === "label" || value.trim() ? value : null;  // an empty prompt clears it
    if (next !== state.space[field]) changes[field] = next;
  }
  const space = await api("PATCH", `/spaces/${state.space.id}`, changes);
  state.space = space;
  showSpace(space);
  await loadSpaces();
  say("Space saved.");
});
on("delete-space", "click", () => {
  $("confirm-name").textContent = state.space.label;
  $("confirm-delete").showModal();
});
on("confirm-delete", "close", async () => {
  if ($("confirm-delete").returnValue !== "delete") return;
  const { id, label } = state.space;
  await api("DELETE", `/spaces/${id}`);
  closeSpace();
  await loadSpaces();
  say(`Deleted ${label}.`);
});
on("chat-form", "submit", async () => {
  const input = $("chat-input").value;
  if (!input.trim()) return;
  $("chat-input").value = "";
  await sendMessage(input);
});
$("chat-input").addEventListener("keydown", (e) => {
  // Enter sends, Shift+Enter is a new line.
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
on("fork-form", "submit", async () => {
  const socket = await enteredSocket();
  const frame = await socket.request({ type: "session.fork", options: { label: $("fork-label").value } });
  $("fork-label").value = "";
  await refreshTree();
  say(`Forked ${frame.child.label}.`);
});
on("archive", "click", async () => {
  const action = state.meta.status === "archived" ? "unarchive" : "archive";
  const meta = await api("POST", `/spaces/${state.space.id}/sessions/${state.sessionId}/${action}`);
  state.meta = { ...state.meta, ...meta };
  showMeta(state.meta);
  await refreshTree();
  say(action === "archive" ? "Session archived." : "Session unarchived.");
});
for (const button of document.querySelectorAll("[data-save]")) {
  button.addEventListener("click", () => {
    const slot = button.dataset.save;
    api("PUT", `/spaces/${state.space.id}/sessions/${state.sessionId}/${slot}`,
      { content: $(`slot-${slot}`).value })
      .then(() => say(`Saved the ${slot.replace("-", " ")}.`)).catch(report);
  });
}

if (state.key) signIn(state.key); else showApp(false);
