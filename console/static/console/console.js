// Stello console: a client of the public REST and WebSocket APIs, nothing more. The API key
// lives in sessionStorage (this tab only) and travels in X-API-Key, or, for the WebSocket
// (browsers cannot set its headers), as the Sec-WebSocket-Protocol value the server accepts.
import { drawStarMap } from "./starmap.js";

const KEY_STORE = "stello.console.key";
// The open space and session, so a reload comes back to them.
const OPEN_STORE = "stello.console.open";
// Per session: where to resume its event log from after a reload (see resumePoint).
const seqStore = (sessionId) => `stello.console.seq.${sessionId}`;
// The session log's event frames (docs/live-turns.md), all of them: one left out would be taken
// for the answer to the pending request. Everything else answers a request.
const EVENT_TYPES = new Set(["turn.started", "stream.delta", "tool.call", "tool.approval_required",
  "tool.approval_decided", "tool.result", "turn.completed", "turn.cancelled", "turn.failed",
  "session.forked", "session.archived", "session.unarchived", "gap"]);
const TERMINAL = new Set(["turn.completed", "turn.cancelled", "turn.failed"]);
const PAGE_SIZE = 10;
// Only the open session's log tells of forks (its own, session.forked): the tree is polled
// while a space is open, for the others; unchanged trees are not redrawn. So are the
// approvals waiting for an answer (see refreshPending).
const TREE_POLL_MS = 2000;

const $ = (id) => document.getElementById(id);
const state = {
  key: sessionStorage.getItem(KEY_STORE) || "",
  spaces: [], page: 0, space: null, tree: null, treeText: "", mainId: null,
  sessionId: null, meta: null, socket: null, poll: null, streaming: false,
  // Turns of the open session running now: turnId -> {user, reply, text, from} (their chat
  // items, null when not shown, and the seq just before their turn.started).
  live: new Map(), lastSeq: 0,
  // Tool calls of the open session that asked for a human's approval, seen on this page:
  // "turnId callId" -> {callId, name, arguments, status, reason, item (its chat card)}.
  approvals: new Map(),
  inflight: 0,  // REST calls not answered yet (the browser tests wait for 0 before leaving)
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
  state.inflight += 1;
  let response, text;
  try {
    response = await fetch(path, {
      method,
      headers: { "X-API-Key": state.key, ...(body === undefined ? {} : { "Content-Type": "application/json" }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    text = await response.text();
  } finally {
    state.inflight -= 1;
  }
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
    this.cancels = 0;  // turn.cancel frames sent and not answered yet
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
    if (EVENT_TYPES.has(frame.type) && frame.seq !== undefined) {
      // Late events of the session being left are not the next session's.
      return this.entered === state.sessionId ? onEvent(frame) : undefined;
    }
    // The answer to our own turn.cancel (no seq; the logged event is what the chat shows). It
    // is sent out of band, so it must not take the place of the pending stream's answer.
    if (frame.type === "turn.cancelled") { this.cancels = Math.max(0, this.cancels - 1); return; }
    // A cancel that came too late (the turn had ended) is refused the same way: that refusal
    // is the cancel's, not the answer the pending stream waits for.
    if (frame.type === "error" && this.cancels > 0 &&
        /^(No turn is running|Turn .* (has already ended|ended before it could be cancelled|did not stop within))/
          .test(frame.message || "")) {
      this.cancels -= 1;
      return say(frame.message, true);
    }
    const head = this.pending[0];
    if (!head) return;
    this.pending.shift();
    if (frame.type === "error") head.reject(new Error(frame.message || frame.code));
    else head.resolve(frame);
  }

  async request(frame) {
    await this.ready;
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.ws.send(JSON.stringify(frame));
    });
  }

  // A frame with no answer to wait for (turn.cancel is handled out of band by the server).
  send(frame) {
    if (frame.type === "turn.cancel") this.cancels += 1;
    this.ws.send(JSON.stringify(frame));
  }

  close() { this.ws.close(1000); }
}

async function enteredSocket() {
  if (!state.socket) state.socket = new Socket(state.space.id);
  const socket = state.socket;
  if (socket.entered !== state.sessionId) {
    if (socket.entered) {
      socket.entered = null;
      await socket.request({ type: "session.leave" });
    }
    const frame = await resume(socket, state.sessionId);
    socket.entered = state.sessionId;
    $("slot-core").textContent = (frame.bootstrap && frame.bootstrap.context &&
      frame.bootstrap.context.core) || "(none)";
  }
  return socket;
}

// session.resume instead of session.enter: the connection then gets the session's event log
// (every turn, ours and anyone's, with its seq) from where this tab left it, or from the
// newest event when it has no position (or a stale one, e.g. after the database was reset).
async function resume(socket, sessionId) {
  const stored = sessionStorage.getItem(seqStore(sessionId));
  let frame;
  try {
    frame = await socket.request({ type: "session.resume", sessionId,
                                   since: stored === null ? "newest" : Number(stored) });
  } catch (error) {
    if (stored === null) throw error;
    frame = await socket.request({ type: "session.resume", sessionId, since: "newest" });
  }
  state.lastSeq = frame.seq;
  rememberSeq(sessionId);
  return frame;
}

// Resume from before the oldest running turn (else from the last seq seen), so a reloaded
// page shows a running reply whole, its input and the text already streamed included.
function resumePoint() {
  let point = state.lastSeq;
  for (const turn of state.live.values()) point = Math.min(point, turn.from);
  return point;
}

function rememberSeq(sessionId) {
  sessionStorage.setItem(seqStore(sessionId), String(resumePoint()));
}

function onEvent(frame) {
  const chat = $("chat");
  if (frame.type === "gap") {  // events were missed: start again from the stored history
    state.live.clear();
    state.lastSeq = frame.seq;
    showLive();
    const context = frame.bootstrap && frame.bootstrap.context;
    if (context) $("slot-core").textContent = context.core || "(none)";
    loadMessages().then(findWaiting).catch(report);
  } else if (frame.type === "turn.started") {
    const user = messageItem({ role: "user", content: frame.input });
    const reply = messageItem({ role: "assistant", content: "" });
    reply.setAttribute("aria-busy", "true");
    chat.append(user, reply);
    state.live.set(frame.turnId, { user, reply, text: reply.querySelector(".content"),
      from: frame.seq - 1 });
  } else if (frame.type === "stream.delta") {
    let turn = state.live.get(frame.turnId);
    if (!turn) {  // resumed mid-turn from an older position: the start is not ours to show
      turn = { user: null, reply: null, text: null, from: frame.seq - 1 };
      state.live.set(frame.turnId, turn);
    }
    if (!turn.reply) {  // ... nor that of a turn found waiting for approval (see findWaiting)
      turn.reply = messageItem({ role: "assistant", content: "" });
      turn.reply.setAttribute("aria-busy", "true");
      turn.text = turn.reply.querySelector(".content");
      chat.append(turn.reply);
    }
    turn.text.textContent += frame.chunk;
  } else if (frame.type === "tool.approval_required") {
    showApproval(frame.turnId, { callId: frame.callId, name: frame.name,
                                 arguments: frame.arguments, status: "pending", reason: null });
  } else if (frame.type === "tool.approval_decided") {
    settleApproval(frame.turnId, frame.callId, frame.approved ? "approved" : "denied",
                   frame.reason);
  } else if (frame.type === "session.forked") {
    refreshTree();
  } else if (frame.type === "session.archived" || frame.type === "session.unarchived") {
    refreshMeta().catch(report);
    refreshTree();
  } else if (TERMINAL.has(frame.type)) {
    const turn = state.live.get(frame.turnId);
    state.live.delete(frame.turnId);
    for (const entry of state.approvals.values()) {  // a waiting turn cancelled, or failed
      if (entry.turnId === frame.turnId && entry.status === "pending") {
        settleApproval(entry.turnId, entry.callId, "ended", null);
      }
    }
    if (frame.type === "turn.cancelled") markCancelled(turn);
    else if (turn && turn.reply) turn.reply.removeAttribute("aria-busy");
    if (frame.type === "turn.failed") say(`The turn failed: ${frame.error}`, true);
    if (frame.type === "turn.completed" && !state.streaming) say("Reply complete.");
    // The stored history shows the tool calls and results the stream does not carry; a
    // cancelled turn left nothing there, so its marked items stay until the next reload.
    if (frame.type !== "turn.cancelled") {
      Promise.all([loadMessages(), refreshMeta()]).catch(report);
    }
    refreshTree();
    loadUsage().catch(report);
  }
  if (frame.type !== "gap") state.lastSeq = Math.max(state.lastSeq, frame.seq);
  if (state.sessionId) rememberSeq(state.sessionId);
  showLive();
  chat.scrollTop = chat.scrollHeight;
}

function markCancelled(turn) {
  say("Turn cancelled: nothing of it was kept.");
  if (!turn) return;
  for (const item of [turn.user, turn.reply]) {
    if (!item) continue;
    item.classList.add("cancelled");
    item.removeAttribute("aria-busy");
  }
  if (turn.reply) turn.reply.querySelector(".role").textContent = "assistant (cancelled, not kept)";
  if (turn.user) turn.user.querySelector(".role").textContent = "user (cancelled, not kept)";
}

// The Stop button is there while a turn of the open session runs (ours or anyone's).
function showLive() {
  const running = state.live.size > 0 || state.streaming;
  const stop = $("stop");
  if (stop.hidden === running) {
    const hadFocus = document.activeElement === stop;
    stop.hidden = !running;
    if (hadFocus && !running) $("chat-input").focus();  // keep the keyboard where it was
  }
}

function stopTurn() {
  if (!state.socket || !state.socket.entered) return;
  state.socket.send({ type: "turn.cancel" });
  say("Stopping…");
}

// --- Sign in / out -----------------------------------------------------------------------
function showApp(signedIn) {
  $("sign-in").hidden = signedIn;
  $("app").hidden = !signedIn;
  $("sign-out").hidden = !signedIn;
}

async function signIn(key) {
  state.key = key.trim();
  let spaces;
  try {
    spaces = await api("GET", "/spaces");  // checks the key and lists the spaces at once
  } catch (error) {
    state.key = "";
    return report(error);
  }
  sessionStorage.setItem(KEY_STORE, state.key);
  $("who").textContent = `key ${state.key.slice(0, 15)}…`;
  showApp(true);
  say("Signed in.");
  await loadSpaces(spaces);
  await reopen();
}

// After a reload: the space and session that were open (a running reply goes on streaming).
async function reopen() {
  let open = null;
  try { open = JSON.parse(sessionStorage.getItem(OPEN_STORE)); } catch { /* nothing kept */ }
  if (!open || !state.spaces.some((space) => space.id === open.spaceId)) return;
  await openSpace(open.spaceId);
  if (open.sessionId && state.space) await openSession(open.sessionId);
}

function signOut(message) {
  // The key, the open space and every session's resume position: nothing stays behind.
  for (const name of Object.keys(sessionStorage)) {
    if (name.startsWith("stello.console.")) sessionStorage.removeItem(name);
  }
  state.key = "";
  closeSpace();
  showApp(false);
  $("who").textContent = "";
  say(message || "Signed out.", Boolean(message));
}

// --- Spaces ------------------------------------------------------------------------------
async function loadSpaces(known) {
  try {
    state.spaces = known || await api("GET", "/spaces");
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
  state.live.clear();
  state.approvals.clear();
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
    sessionStorage.setItem(OPEN_STORE, JSON.stringify({ spaceId: space.id }));
    showSpace(space);
    renderTree(tree, JSON.stringify(tree));
    // The time to a drawn (laid out) map: after the next frame.
    requestAnimationFrame(() => {
      window.stelloConsole.metrics.firstRender = {
        sessions: Number($("map-box").querySelector("svg").dataset.count),
        fetchMs: Math.round(fetched - started), totalMs: Math.round(performance.now() - started),
        // From the navigation's start (performance.now's origin): the whole page load, the
        // sign-in check and the spaces list included, when the space was opened on load.
        sinceNavigationMs: Math.round(performance.now()),
      };
    });
    renderSpaces();
    state.poll = setInterval(() => {
      if (!document.hidden) { refreshTree(); refreshPending(); }
    }, TREE_POLL_MS);
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
  state.live.clear();
  state.approvals.clear();
  sessionStorage.setItem(OPEN_STORE, JSON.stringify({ spaceId: state.space.id, sessionId: id }));
  renderTree(state.tree, state.treeText);  // move the selection ring
  $("session-body").hidden = false;
  const base = `/spaces/${state.space.id}/sessions/${id}`;
  try {
    const [meta, waiting] = await Promise.all([api("GET", base), waitingTurn(base)]);
    state.meta = meta;
    showMeta(meta);
    // A waiting turn's rounds so far are stored: the history shows them, so the events follow
    // from the newest (a replay from before its turn.started would show them twice) and its
    // cards come from REST.
    if (waiting) sessionStorage.removeItem(seqStore(id));
    // The history first, then the live events on top of it.
    await loadMessages();
    await Promise.all([loadSlots(base), loadUsage(), enteredSocket()]);
    if (waiting) await showWaiting(waiting);
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
  // Turns still running are not in the stored history yet: their items stay, at the end.
  const items = messages.map(messageItem);
  items.push(...[...state.live.values()].flatMap((turn) => [turn.user, turn.reply])
    .filter(Boolean));
  // Approval cards stay, each after the message that made its call (the last one, should an
  // LLM use a call id again), else at the end.
  for (const entry of state.approvals.values()) {
    if (!entry.item) continue;
    let at = items.findLastIndex((item) => item.querySelector(
      `details[data-call-id="${CSS.escape(entry.callId)}"]`));
    if (at < 0) { items.push(entry.item); continue; }
    while (items[at + 1] && items[at + 1].classList.contains("approval")) at += 1;
    items.splice(at + 1, 0, entry.item);
  }
  $("chat").replaceChildren(...items);
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
    details.dataset.callId = call.id;
    const summary = document.createElement("summary");
    summary.textContent = `tool call: ${call.name}`;
    const pre = document.createElement("pre");
    pre.textContent = `${call.id}\n${JSON.stringify(call.input, null, 2)}`;
    details.append(summary, pre);
    li.appendChild(details);
  }
  return li;
}

// --- Tool calls waiting for a human's approval (docs/agent-control.md) ----------------------
let approvalCount = 0;  // numbers the cards' element ids
const approvalKey = (turnId, callId) => `${turnId} ${callId}`;
const OUTCOMES = {
  approved: () => "Approved: the call runs.",
  denied: (reason) => `Denied${reason ? ` (${reason})` : ""}: not run, the LLM is told.`,
  ended: () => "Not answered: the turn stopped waiting.",
};

// The turn of the session that waits for approvals, if one does.
async function waitingTurn(base) {
  const turns = await api("GET", `${base}/turns`);
  const waiting = turns.find((turn) => turn.status === "waiting");
  return waiting ? waiting.turnId : null;
}

// A waiting turn found on entering (or after a gap): its cards, and it counts as running, so
// Stop can cancel it. Answers given after this list was read come as tool.approval_decided.
async function showWaiting(turnId) {
  const id = state.sessionId;
  const list = await api("GET",
    `/spaces/${state.space.id}/sessions/${id}/turns/${turnId}/approvals`);
  if (id !== state.sessionId) return;
  for (const approval of list) showApproval(turnId, approval);
  if (list.some((approval) => approval.status === "pending") && !state.live.has(turnId)) {
    state.live.set(turnId, { user: null, reply: null, text: null, from: state.lastSeq });
    rememberSeq(id);
    showLive();
  }
}

async function findWaiting() {
  const base = `/spaces/${state.space.id}/sessions/${state.sessionId}`;
  const waiting = await waitingTurn(base);
  if (waiting) await showWaiting(waiting);
}

// A card in the chat: "<tool> wants to run", its arguments, and Approve / Deny (with an
// optional reason) while it waits. The name and arguments come from the LLM: text only.
function showApproval(turnId, approval) {
  const key = approvalKey(turnId, approval.callId);
  let entry = state.approvals.get(key);
  if (entry && entry.item) {  // the event and the REST list may both bring it
    if (approval.status !== "pending") {
      settleApproval(turnId, approval.callId, approval.status, approval.reason);
    }
    return;
  }
  // An answer heard before the card was made (see showWaiting) stands.
  const decided = entry && entry.status !== "pending" ? entry : approval;
  const path = `/spaces/${state.space.id}/sessions/${state.sessionId}/turns/${turnId}/approvals`;
  entry = { turnId, callId: approval.callId, name: approval.name, arguments: approval.arguments,
            status: decided.status, reason: decided.reason, item: null, path };
  entry.item = approvalItem(entry);
  state.approvals.set(key, entry);
  $("chat").append(entry.item);
  $("chat").scrollTop = $("chat").scrollHeight;
  if (entry.status === "pending") {
    say(`${entry.name} wants to run: approve or deny it in the chat.`);
  } else {
    showOutcome(entry);
  }
}

function approvalItem(entry) {
  const n = (approvalCount += 1);
  const li = document.createElement("li");
  li.className = "approval";
  li.dataset.callId = entry.callId;
  li.setAttribute("aria-labelledby", `approval-${n}-title`);
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = "tool approval";
  const title = document.createElement("strong");
  title.id = `approval-${n}-title`;
  title.className = "title";
  title.textContent = `${entry.name} wants to run`;
  const args = document.createElement("pre");
  args.className = "arguments";
  args.textContent = JSON.stringify(entry.arguments, null, 2);
  const outcome = document.createElement("p");
  outcome.className = "outcome";
  li.append(role, title, args, outcome);
  if (entry.status === "pending") {
    const actions = document.createElement("div");
    actions.className = "approval-actions inline";
    const label = document.createElement("label");
    label.htmlFor = `approval-${n}-reason`;
    label.textContent = "Reason (optional, the LLM is told it)";
    const reason = document.createElement("input");
    reason.id = `approval-${n}-reason`;
    reason.maxLength = 2000;
    const approve = document.createElement("button");
    approve.type = "button";
    approve.className = "approve";
    approve.textContent = "Approve";
    const deny = document.createElement("button");
    deny.type = "button";
    deny.className = "deny danger";
    deny.textContent = "Deny";
    for (const button of [approve, deny]) button.setAttribute("aria-describedby", title.id);
    approve.addEventListener("click", () => answerApproval(entry, true));
    deny.addEventListener("click", () => answerApproval(entry, false));
    actions.append(label, reason, approve, deny);
    li.append(actions);
  }
  return li;
}

async function answerApproval(entry, approve) {
  const actions = entry.item.querySelector(".approval-actions");
  if (!actions) return;
  const buttons = actions.querySelectorAll("button");
  const reason = actions.querySelector("input").value.trim();
  // A disabled button loses the focus: it goes back where it was, or to the message field.
  const focused = document.activeElement;
  const refocus = (target) => {
    if (actions.contains(focused) && document.activeElement === document.body) target.focus();
  };
  for (const button of buttons) button.disabled = true;
  try {
    const decided = await api("POST", entry.path,
      { callId: entry.callId, approve, ...(reason ? { reason } : {}) });
    settleApproval(entry.turnId, entry.callId, decided.status, decided.reason);
    refocus($("chat-input"));
    say(approve ? `Approved ${entry.name}.` : `Denied ${entry.name}.`);
  } catch (error) {
    if (error.code !== "APPROVAL_ANSWERED" && error.code !== "TURN_NOT_WAITING") {
      for (const button of buttons) button.disabled = false;
      refocus(focused);
      return report(error);
    }
    refocus($("chat-input"));
    // Someone else was first (another tab, curl), or the turn stopped waiting: show what
    // became of the call.
    say(error.code === "APPROVAL_ANSWERED" ? "That tool call was answered already."
      : "That turn no longer waits for an answer.", true);
    const list = await api("GET", entry.path).catch(() => []);
    const found = list.find((approval) => approval.callId === entry.callId);
    settleApproval(entry.turnId, entry.callId,
                   found && found.status !== "pending" ? found.status : "ended",
                   found ? found.reason : null);
  }
}

// The log has an answer (tool.approval_decided) only once every call of the round is answered:
// until then, one given elsewhere (another tab, curl) is seen by asking.
async function refreshPending() {
  const id = state.sessionId;
  const pending = new Map();  // turnId -> the path of its approvals
  for (const entry of state.approvals.values()) {
    if (entry.item && entry.status === "pending") pending.set(entry.turnId, entry.path);
  }
  for (const [turnId, path] of pending) {
    let list;
    try { list = await api("GET", path); } catch { continue; }  // asked again next time
    if (id !== state.sessionId) return;
    for (const approval of list) {
      if (approval.status !== "pending") {
        settleApproval(turnId, approval.callId, approval.status, approval.reason);
      }
    }
  }
}

// An answer (this page's, anyone's, or the deadline's): the card shows it, the buttons go.
function settleApproval(turnId, callId, status, reason) {
  const key = approvalKey(turnId, callId);
  const entry = state.approvals.get(key);
  if (!entry) {  // heard before its card exists: kept for showApproval
    state.approvals.set(key, { turnId, callId, status, reason, item: null });
    return;
  }
  if (entry.status !== "pending") return;
  Object.assign(entry, { status, reason });
  if (entry.item) showOutcome(entry);
}

function showOutcome(entry) {
  const item = entry.item;
  const actions = item.querySelector(".approval-actions");
  if (actions) {
    const hadFocus = actions.contains(document.activeElement);
    actions.remove();
    if (hadFocus) $("chat-input").focus();  // keep the keyboard in the chat
  }
  item.classList.add(entry.status);
  item.querySelector(".outcome").textContent = OUTCOMES[entry.status](entry.reason);
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
  // The chat items come from the turn's events (turn.started, stream.delta, ...), like those
  // of a turn made elsewhere.
  state.streaming = true;
  showLive();
  try {
    const socket = await enteredSocket();
    await socket.request({ type: "session.stream", input });
    say("Reply complete.");
  } catch (error) {
    if (/was cancelled/.test(error.message)) say("Turn cancelled: nothing of it was kept.");
    else report(error);
  } finally {
    state.streaming = false;
    showLive();
  }
}

async function loadUsage() {
  if (!state.space) return;
  const spaceId = state.space.id;
  const usage = await api("GET", `/spaces/${spaceId}/usage?groupBy=session`);
  if (!state.space || state.space.id !== spaceId) return;
  const mine = usage.groups.find((g) => g.key === state.sessionId);
  showUsage("usage-session", mine || { calls: 0, inputTokens: 0, outputTokens: 0, cost: 0 });
  showUsage("usage-space", usage.totals);
}

function showUsage(rowId, sums) {
  const cells = $(rowId).querySelectorAll("td");
  const values = [sums.calls, sums.inputTokens, sums.outputTokens];
  values.forEach((value, n) => { cells[n].textContent = value.toLocaleString("en"); });
  cells[3].textContent = `$${sums.cost.toFixed(sums.cost && sums.cost < 0.01 ? 6 : 4)}`;
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
  // Enter sends, Shift+Enter is a new line, Escape stops a running reply.
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  if (e.key === "Escape" && !$("stop").hidden) { e.preventDefault(); stopTurn(); }
});
on("stop", "click", stopTurn);
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
