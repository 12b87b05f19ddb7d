// EchoFlow frontend extension: shows on the canvas what the EchoFlow nodes did or will do.
//  - EchoFlow Animate: an EF badge with the clinical category of the chosen EF, live as the widget changes.
//  - EchoFlow Load Privacy Gate: the tau it uses (calibrated, stricter, or LOOSER in red) after a run.
//  - EchoFlow Privacy Gate: the verdict (passed/total, tau) and each item's max similarity after a run.
//  - EchoFlow Estimate EF / Segment LV / Save Video: the estimates (both instruments side by side when both ran),
//    the LV measurements / saved files after a run.
// The readouts sit INSIDE their node, in a read-only canvas widget added after the node's own widgets (the node
// grows to fit), so they never draw over a neighbour. The widget is not serialised (serialize: false, and
// options.serialize: false for the prompt), so widgets_values and the prompt keep their positional layout; the
// text lives in node.properties.echoflow_readout, which the workflow saves: it is shown again on reload, kept
// on a cached re-run, and replaced only by a new `executed` message that carries a readout. When a readout first
// makes its node taller, the nodes right below it move down by as much, so the grown node covers none of them.
import { app } from "../../scripts/app.js";
import {
  READOUT_KINDS, READOUT_LAYOUT, READOUT_PROPERTY, efBadge, pushDownBelow, readoutFromMessage, readoutFromProperty,
  readoutLayout, readoutToProperty,
} from "./echoflow_logic.js";

const READOUT_WIDGET = "echoflow_readout";

function roundRect(ctx, x, y, w, h, r) {
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(x, y, w, h, r);
  else ctx.rect(x, y, w, h);
}

/** The read-only widget that draws node.properties.echoflow_readout inside the node. */
function makeReadoutWidget(node) {
  const L = READOUT_LAYOUT;
  return {
    type: READOUT_WIDGET,
    name: READOUT_WIDGET,
    value: "",
    serialize: false, // not in widgets_values
    options: { serialize: false }, // not an input of the prompt
    computeSize(width) {
      const h = readoutLayout(node.properties?.[READOUT_PROPERTY], width ?? node.size[0]).height;
      return [width ?? node.size[0], h ? h - 4 : 0]; // the arranger adds 4 px between widgets
    },
    draw(ctx, _node, widgetWidth, y) {
      const layout = readoutLayout(node.properties?.[READOUT_PROPERTY], widgetWidth);
      if (!layout.lines.length) return;
      const x = L.margin;
      const w = widgetWidth - 2 * L.margin;
      const h = layout.height - 4;
      ctx.save();
      ctx.fillStyle = "rgba(0,0,0,0.45)";
      roundRect(ctx, x, y, w, h, 6);
      ctx.fill();
      ctx.fillStyle = layout.color ?? "#777777";
      roundRect(ctx, x, y, 4, h, 2);
      ctx.fill();
      ctx.font = "12px monospace";
      ctx.textAlign = "left";
      ctx.textBaseline = "alphabetic";
      layout.lines.forEach((line, i) => {
        ctx.fillStyle = i === 0 && layout.color ? layout.color : "#dddddd";
        ctx.fillText(line, x + L.padX, y + L.padY - 2 + (i + 1) * L.lineHeight - 3);
      });
      ctx.restore();
    },
  };
}

/** Move the nodes below `node` that its new height would cover (see pushDownBelow). */
function makeRoomBelow(node) {
  const nodes = node.graph?._nodes ?? node.graph?.nodes;
  if (!nodes) return;
  const titleH = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const boxes = nodes.filter((n) => !n.flags?.collapsed || n === node).map((n) => ({
    id: n.id, x: n.pos[0], y: n.pos[1] - titleH, w: n.size[0], h: n.size[1] + titleH,
  }));
  const moves = pushDownBelow(boxes, node.id, 10, titleH);
  for (const n of nodes) if (moves[n.id]) n.pos[1] += moves[n.id];
}

/**
 * Show `readout` inside the node (nothing when it is not a valid readout) and keep it in node.properties; the
 * node grows to fit and, when `makeRoom`, pushes down the nodes its new height would cover.
 */
function showReadout(node, readout, makeRoom) {
  const value = readoutToProperty(readout);
  node.properties ??= {};
  let widget = node.widgets?.find((w) => w.name === READOUT_WIDGET);
  if (!value) {
    delete node.properties[READOUT_PROPERTY];
    if (widget) node.removeWidget(widget);
  } else {
    node.properties[READOUT_PROPERTY] = value;
    widget ??= node.addCustomWidget(makeReadoutWidget(node));
    widget.value = value.lines.join("\n");
    const need = node.computeSize();
    const height = node.size[1];
    node.setSize([Math.max(node.size[0], need[0]), Math.max(node.size[1], need[1])]);
    if (makeRoom && node.size[1] > height) makeRoomBelow(node);
  }
  node.setDirtyCanvas?.(true, true);
  if (makeRoom) rememberWorkflow();
}

/**
 * A readout that came from a run is part of the workflow: tell the frontend's change tracker, which otherwise
 * refreshes the copy it restores on reload only after user input, so a reload would bring back an older run's
 * readouts. Frontends without a tracker (older, or none) simply keep what they have.
 */
function rememberWorkflow() {
  try {
    app.extensionManager?.workflow?.activeWorkflow?.changeTracker?.captureCanvasState?.();
  } catch (err) {
    console.debug("EchoFlow: could not record the readout for reload", err);
  }
}

function drawBadge(node, ctx, text, color) {
  if (node.flags?.collapsed) return;
  ctx.save();
  ctx.font = "11px sans-serif";
  const w = ctx.measureText(text).width + 12;
  const h = 16;
  const titleH = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const x = node.size[0] - w - 6;
  const y = -titleH + (titleH - h) / 2;
  ctx.fillStyle = color;
  ctx.beginPath();
  if (ctx.roundRect) ctx.roundRect(x, y, w, h, 8);
  else ctx.rect(x, y, w, h);
  ctx.fill();
  ctx.fillStyle = "#111111";
  ctx.fillText(text, x + 6, y + 12);
  ctx.restore();
}

function chain(proto, name, fn) {
  const original = proto[name];
  proto[name] = function (...args) {
    const r = original?.apply(this, args);
    fn.apply(this, args);
    return r;
  };
}

app.registerExtension({
  name: "EchoFlow.NodeInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    const name = nodeData?.name;
    if (!name || !name.startsWith("EchoFlow")) return;

    if (name === "EchoFlowAnimate") {
      chain(nodeType.prototype, "onDrawForeground", function (ctx) {
        const w = this.widgets?.find((x) => x.name === "ef");
        if (!w) return;
        const badge = efBadge(w.value);
        drawBadge(this, ctx, badge.text, badge.color);
      });
    }

    const kind = READOUT_KINDS[name];
    if (kind) {
      chain(nodeType.prototype, "onExecuted", function (message) {
        const readout = readoutFromMessage(kind, message);
        if (readout) showReadout(this, readout, true); // a message without one (cached re-run) keeps what is shown
      });
      chain(nodeType.prototype, "onConfigure", function () {
        const readout = readoutFromProperty(this.properties?.[READOUT_PROPERTY]);
        if (readout) showReadout(this, readout, false); // the saved layout already made room
      });
    }
  },
});
