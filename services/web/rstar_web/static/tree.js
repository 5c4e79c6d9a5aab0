/* rstar console: a search tree drawn as SVG, without libraries.
 *
 * Layout: leaves take consecutive columns in depth-first order, a parent sits over the middle
 * of its children, depth goes down. O(nodes), so a 5,000-node tree lays out in milliseconds;
 * all edges are one <path> and the nodes one <circle> each, built in a fragment and inserted
 * once. Colour is Q (red -1 .. grey 0 .. green +1; grey outline: never visited), radius grows
 * with the visit count, the chosen answer's path is drawn in gold. Click a node to select it,
 * double-click to collapse or expand its subtree. No text from the tree is put into markup:
 * labels use textContent.
 */
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLUMN = 16;
const ROW = 64;
const MARGIN = 24;

function nodeQ(node) {
  return node.visits ? node.value_sum / node.visits : 0;
}

function qColour(node) {
  if (!node.visits) return "#ffffff";
  const q = Math.max(-1, Math.min(1, nodeQ(node)));
  const hue = q >= 0 ? 120 : 0;
  const light = 92 - Math.abs(q) * 47;
  return `hsl(${hue}, 62%, ${light}%)`;
}

function nodeRadius(node) {
  return Math.min(14, 3.5 + 2.1 * Math.log2(1 + (node.visits || 0)));
}

class TreeView {
  /* container: an element to draw into; onSelect(node) is called when a node is clicked. */
  constructor(container, onSelect) {
    this.container = container;
    this.onSelect = onSelect;
    this.nodes = [];
    this.collapsed = new Set();
    this.chosen = new Set();
    this.selected = null;
    this.lastRenderMs = 0;
  }

  setTree(nodes, chosenPath) {
    this.nodes = nodes;
    this.chosen = new Set(chosenPath || []);
    this.render();
  }

  toggle(id) {
    if (this.collapsed.has(id)) this.collapsed.delete(id); else this.collapsed.add(id);
    this.render();
  }

  expandAll() { this.collapsed.clear(); this.render(); }

  layout() {
    const nodes = this.nodes;
    const x = new Float64Array(nodes.length);
    const visible = [];
    let column = 0;
    if (!nodes.length) return { x, visible, columns: 0, depth: 0 };
    // Iterative post-order over the visible part: a node is placed after its children.
    const stack = [[0, false]];
    let depth = 0;
    while (stack.length) {
      const [id, done] = stack.pop();
      const node = nodes[id];
      const kids = this.collapsed.has(id) ? [] : (node.children || []).filter((c) => c < nodes.length);
      if (!done) {
        visible.push(id);
        depth = Math.max(depth, node.depth);
        stack.push([id, true]);
        for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], false]);
      } else if (!kids.length) {
        x[id] = column++;
      } else {
        x[id] = (x[kids[0]] + x[kids[kids.length - 1]]) / 2;
      }
    }
    return { x, visible, columns: column, depth };
  }

  render() {
    const started = performance.now();
    const { x, visible, columns, depth } = this.layout();
    const px = (id) => MARGIN + x[id] * COLUMN;
    const py = (id) => MARGIN + this.nodes[id].depth * ROW;
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("class", "tree");
    svg.setAttribute("width", String(MARGIN * 2 + Math.max(1, columns) * COLUMN));
    svg.setAttribute("height", String(MARGIN * 2 + depth * ROW + 20));
    let edges = "";
    let chosen = "";
    for (const id of visible) {
      const node = this.nodes[id];
      if (node.parent === null || node.parent === undefined) continue;
      const segment = `M${px(node.parent)},${py(node.parent)}L${px(id)},${py(id)}`;
      edges += segment;
      if (this.chosen.has(id) && this.chosen.has(node.parent)) chosen += segment;
    }
    const edgePath = document.createElementNS(SVG_NS, "path");
    edgePath.setAttribute("class", "edges");
    edgePath.setAttribute("d", edges);
    svg.appendChild(edgePath);
    if (chosen) {
      const chosenPath = document.createElementNS(SVG_NS, "path");
      chosenPath.setAttribute("class", "chosen");
      chosenPath.setAttribute("d", chosen);
      svg.appendChild(chosenPath);
    }
    const group = document.createDocumentFragment();
    for (const id of visible) {
      const node = this.nodes[id];
      const circle = document.createElementNS(SVG_NS, "circle");
      circle.setAttribute("cx", px(id));
      circle.setAttribute("cy", py(id));
      circle.setAttribute("r", nodeRadius(node).toFixed(1));
      circle.setAttribute("fill", qColour(node));
      circle.setAttribute("data-id", String(id));
      const classes = [];
      if (node.terminal === "answer") classes.push(node.correct === true ? "correct" : node.correct === false ? "wrong" : "answer");
      else if (node.terminal) classes.push("failure");
      if (this.collapsed.has(id) && (node.children || []).length) classes.push("collapsed");
      if (this.selected === id) classes.push("selected");
      if (classes.length) circle.setAttribute("class", classes.join(" "));
      const title = document.createElementNS(SVG_NS, "title");
      title.textContent = `#${id}  Q=${nodeQ(node).toFixed(3)}  N=${node.visits}` + (node.terminal ? `  ${node.terminal}` : "");
      circle.appendChild(title);
      group.appendChild(circle);
      if (this.collapsed.has(id) && (node.children || []).length) {
        const label = document.createElementNS(SVG_NS, "text");
        label.setAttribute("x", px(id) + 9);
        label.setAttribute("y", py(id) + 4);
        label.textContent = `+${countBelow(this.nodes, id)}`;
        group.appendChild(label);
      }
    }
    svg.appendChild(group);
    svg.addEventListener("click", (event) => {
      const id = event.target.getAttribute && event.target.getAttribute("data-id");
      if (id !== null && id !== undefined) this.select(Number(id));
    });
    svg.addEventListener("dblclick", (event) => {
      const id = event.target.getAttribute && event.target.getAttribute("data-id");
      if (id !== null && id !== undefined) this.toggle(Number(id));
    });
    this.container.replaceChildren(svg);
    this.svg = svg;
    this.lastRenderMs = performance.now() - started;
    this.visibleCount = visible.length;
  }

  select(id) {
    if (this.svg) {
      const previous = this.svg.querySelector("circle.selected");
      if (previous) previous.classList.remove("selected");
      const circle = this.svg.querySelector(`circle[data-id="${id}"]`);
      if (circle) circle.classList.add("selected");
    }
    this.selected = id;
    if (this.onSelect) this.onSelect(this.nodes[id]);
  }
}

function countBelow(nodes, id) {
  let count = 0;
  const stack = [...(nodes[id].children || [])];
  while (stack.length) {
    const next = stack.pop();
    if (next >= nodes.length) continue;
    count++;
    stack.push(...(nodes[next].children || []));
  }
  return count;
}

window.RstarTree = { TreeView, nodeQ, qColour };
