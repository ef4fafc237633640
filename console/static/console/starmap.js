// The star map: a radial drawing of a space's session tree (GET /spaces/{id}/sessions).
// The main session sits at the centre, each depth on its own ring; a subtree gets an angle in
// proportion to its leaves, so siblings never cross. Plain SVG built with the DOM (no library):
// 200 stars take a few milliseconds.

const SVG = "http://www.w3.org/2000/svg";
const RING = 110;          // distance between depth rings, in viewBox units
const STAGGER = 42;        // a crowded ring alternates between two radii, this far apart
const SPACING = 18;        // wanted arc length per star on a ring
const LABEL_LIMIT = 40;    // above this many stars, labels only for the main and selected ones

export function starRadius(turnCount, isMain) {
  const r = 6 + 2.2 * Math.sqrt(Math.max(0, turnCount || 0));
  return Math.min(isMain ? Math.max(r, 13) : r, 26);
}

// Flatten the tree into nodes with x, y (centre at 0, 0) and the edges between them.
export function layout(root) {
  const nodes = [];
  const byDepth = [];
  (function walk(node, parent, depth) {
    const item = { node, parent, depth, leaves: 0, kids: [] };
    nodes.push(item);
    (byDepth[depth] ||= []).push(item);
    for (const child of node.children || []) item.kids.push(walk(child, item, depth + 1));
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

  // Radii: a ring grows until its stars fit; a crowded ring staggers.
  let radius = 0;
  const rings = [0];
  for (let d = 1; d < byDepth.length; d++) {
    const count = byDepth[d].length;
    let r = radius + RING;
    const need = count * SPACING / (2 * Math.PI);
    const stagger = need > r;
    if (stagger) r = Math.max(r, need / 2);
    rings[d] = r;
    byDepth[d].sort((a, b) => a.angle - b.angle)
      .forEach((item, k) => { item.r = r + (stagger && k % 2 ? STAGGER : 0); });
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
      el("line", { class: "edge", x1: item.parent.x, y1: item.parent.y, x2: item.x, y2: item.y },
        back);
    }
    const source = item.node.sourceSessionId && byId.get(item.node.sourceSessionId);
    if (source && source !== item.parent) {
      // Bowed away from the centre, so it never reads as a tree edge.
      const cx = (source.x + item.x) * 0.75 + (source.y - item.y) * 0.15;
      const cy = (source.y + item.y) * 0.75 - (source.x - item.x) * 0.15;
      el("path", {
        class: "source",
        d: `M${source.x.toFixed(1)},${source.y.toFixed(1)} Q${cx.toFixed(1)},${cy.toFixed(1)} ` +
          `${item.x.toFixed(1)},${item.y.toFixed(1)}`,
        "data-from": source.node.id, "data-to": item.node.id,
      }, back);
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
  box.replaceChildren(svg);
  return nodes.length;
}
