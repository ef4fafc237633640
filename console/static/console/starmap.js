// The star map: a radial drawing of a space's session tree (GET /spaces/{id}/sessions).
// The main session sits at the centre; each session is drawn under the one it was forked from,
// one ring per fork generation; a subtree gets an angle in proportion to its leaves, so lines
// never cross. Plain SVG built with the DOM (no library):
// 200 stars take a few milliseconds.

const SVG = "http://www.w3.org/2000/svg";
const RING = 110;          // distance between depth rings, in viewBox units
const STAGGER = 42;        // a crowded ring alternates between two radii, this far apart
const SPACING = 16;        // wanted arc length per star on a ring
const MIN_SCALE = 0.45;     // screen pixels per viewBox unit, at least (a star stays >= 5 px wide)
const LABEL_LIMIT = 40;    // above this many stars, labels only for the main and selected ones

export function starRadius(turnCount, isMain) {
  const r = 6 + 2.2 * Math.sqrt(Math.max(0, turnCount || 0));
  return Math.min(isMain ? Math.max(r, 13) : r, 26);
}

// The fork tree: each session under the session it was forked from. With the default `flat`
// fork strategy every topology parent is the main session, so the source is what shows how the
// conversation branched; with `tree` the two are the same.
function forkTree(root) {
  const all = [];
  (function flatten(node, parentId) {
    all.push({ node, parentId });
    for (const child of node.children || []) flatten(child, node.id);
  })(root, null);
  const ids = new Set(all.map((e) => e.node.id));
  const kids = new Map();
  for (const { node, parentId } of all.slice(1)) {
    const from = ids.has(node.sourceSessionId) && node.sourceSessionId !== node.id
      ? node.sourceSessionId : parentId;
    if (!kids.has(from)) kids.set(from, []);
    kids.get(from).push(node);
  }
  // Never lose a session to a malformed source chain: what the main session cannot reach
  // hangs under it.
  const reached = new Set([root.id]);
  const queue = [root.id];
  while (queue.length) {
    for (const kid of kids.get(queue.shift()) || []) {
      if (!reached.has(kid.id)) { reached.add(kid.id); queue.push(kid.id); }
    }
  }
  const lost = all.slice(1).map((e) => e.node).filter((n) => !reached.has(n.id));
  if (lost.length) kids.set(root.id, [...(kids.get(root.id) || []), ...lost]);
  return kids;
}

// Place every session: x, y (centre at 0, 0), its fork parent and depth.
export function layout(root) {
  const nodes = [];
  const byDepth = [];
  const kidsOf = forkTree(root);
  const seen = new Set();
  (function walk(node, parent, depth) {
    const item = { node, parent, depth, leaves: 0, kids: [] };
    seen.add(node.id);
    nodes.push(item);
    (byDepth[depth] ||= []).push(item);
    for (const child of kidsOf.get(node.id) || []) {
      if (!seen.has(child.id)) item.kids.push(walk(child, item, depth + 1));
    }
    item.leaves = item.kids.length ? item.kids.reduce((n, k) => n + k.leaves, 0) : 1;
    return item;
  })(root, null, 0);

  // Angles: each subtree owns a slice proportional to its leaves.
  (function place(item, start, end) {
    item.angle = (start + end) / 2;
    let at = start;
    for (const kid of item.kids) {
      const share = (end - start) * kid.leaves / item.leaves;
      place(kid, at, at + share);
      at += share;
    }
  })(nodes[0], -Math.PI / 2, 1.5 * Math.PI);

  // Radii: a ring grows until neighbouring stars on it are SPACING apart; a crowded ring
  // alternates between two radii, so only every other star needs that room.
  let radius = 0;
  const rings = [0];
  for (let d = 1; d < byDepth.length; d++) {
    const ring = byDepth[d].sort((a, b) => a.angle - b.angle);
    let gap = 2 * Math.PI;
    for (let k = 1; k < ring.length; k++) gap = Math.min(gap, ring[k].angle - ring[k - 1].angle);
    if (ring.length > 1) gap = Math.min(gap, 2 * Math.PI - (ring.at(-1).angle - ring[0].angle));
    gap = Math.max(gap, 1e-3);
    let r = radius + RING;
    const stagger = SPACING / gap > r;
    if (stagger) r = Math.max(r, SPACING / (2 * gap));
    rings[d] = r;
    ring.forEach((item, k) => { item.r = r + (stagger && k % 2 ? STAGGER : 0); });
    radius = r + (stagger ? STAGGER : 0);
  }
  nodes[0].r = 0;
  for (const item of nodes) {
    item.x = item.r * Math.cos(item.angle);
    item.y = item.r * Math.sin(item.angle);
  }
  return { nodes, radius, rings };
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

// Draw `root` into `box`; `onOpen(id)` is called on click / Enter / Space on a star.
export function drawStarMap(box, root, { selected, onOpen } = {}) {
  const { nodes, radius, rings } = layout(root);
  const margin = 70;
  const size = radius + margin;
  const svg = el("svg", {
    viewBox: `${-size} ${-size} ${2 * size} ${2 * size}`,
    role: "group",
    "aria-label": `Session tree: ${nodes.length} sessions. Tab to a star, Enter opens it.`,
    "data-count": String(nodes.length),
  });
  const back = el("g", { "aria-hidden": "true" }, svg);
  for (const r of rings.slice(1)) el("circle", { r, fill: "none", stroke: "#eceef2" }, back);
  const byId = new Map(nodes.map((n) => [n.node.id, n]));
  for (const item of nodes) {
    if (item.parent) {
      el("line", { class: "edge", x1: item.parent.x.toFixed(1), y1: item.parent.y.toFixed(1),
        x2: item.x.toFixed(1), y2: item.y.toFixed(1), "data-from": item.parent.node.id,
        "data-to": item.node.id }, back);
    }
  }
  const showLabels = nodes.length <= LABEL_LIMIT;
  const front = el("g", {}, svg);
  for (const item of nodes) {
    const n = item.node;
    const isMain = item.depth === 0;
    const classes = ["star", n.status === "archived" ? "archived" : "active"];
    if (isMain) classes.push("main");
    if (n.id === selected) classes.push("selected");
    const from = n.sourceSessionId && byId.get(n.sourceSessionId);
    const desc = `${n.label || "(no label)"}${isMain ? ", main session" : ""}, ${n.status}, ` +
      `${n.turnCount} turn${n.turnCount === 1 ? "" : "s"}` +
      (from ? `, forked from ${from.node.label || from.node.id}` : "");
    const g = el("g", {
      class: classes.join(" "), tabindex: "0", role: "button", "aria-label": desc,
      "data-id": n.id, "data-turns": String(n.turnCount), "data-status": n.status,
      transform: `translate(${item.x.toFixed(1)},${item.y.toFixed(1)})`,
    }, front);
    el("title", {}, g).textContent = desc;
    const r = starRadius(n.turnCount, isMain);
    el("circle", { r: r.toFixed(1) }, g);
    if (showLabels || isMain || n.id === selected) {
      const t = el("text", { x: (r + 3).toFixed(1), y: "4" }, g);
      t.textContent = (n.label || "").slice(0, 28);
    }
  }
  svg.addEventListener("click", (event) => {
    const star = event.target.closest(".star");
    if (star && onOpen) onOpen(star.dataset.id);
  });
  svg.addEventListener("keydown", (event) => {
    const star = event.target.closest(".star");
    if (star && onOpen && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      onOpen(star.dataset.id);
    }
  });
  // Never shrink a star below a few pixels: a deep tree gets a map larger than its box, which
  // then scrolls, starting on the main session.
  const pixels = Math.round(2 * size * MIN_SCALE);
  svg.style.width = svg.style.height = `max(100%, ${pixels}px)`;
  box.replaceChildren(svg);
  box.scrollLeft = (box.scrollWidth - box.clientWidth) / 2;
  box.scrollTop = (box.scrollHeight - box.clientHeight) / 2;
  return nodes.length;
}
