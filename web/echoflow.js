// EchoFlow frontend extension: shows on the canvas what the EchoFlow nodes did or will do.
//  - EchoFlow Animate: an EF badge with the clinical category of the chosen EF, live as the widget changes.
//  - EchoFlow Load Privacy Gate: the tau it uses (calibrated, stricter, or LOOSER in red) after a run.
//  - EchoFlow Privacy Gate: the verdict (passed/total, tau) and each item's max similarity after a run.
//  - EchoFlow Estimate EF / Save Video: the estimates / saved files after a run.
// Nothing is added as a widget, so saved workflows and widget values are unaffected.
import { app } from "../../scripts/app.js";
import { clipLines, efBadge, efEstimateLines, gateTauLine, gateVerdict, savedVideoLines } from "./echoflow_logic.js";

const LINE_H = 15;

function drawLines(node, ctx, lines, color) {
  if (!lines.length || node.flags?.collapsed) return;
  const maxChars = Math.max(10, Math.floor((node.size[0] - 16) / 6.5));
  const shown = clipLines(lines, maxChars);
  const top = node.size[1] + 4;
  ctx.save();
  ctx.fillStyle = "rgba(0,0,0,0.55)";
  ctx.fillRect(0, top, node.size[0], shown.length * LINE_H + 8);
  ctx.font = "12px monospace";
  shown.forEach((line, i) => {
    ctx.fillStyle = i === 0 && color ? color : "#dddddd";
    ctx.fillText(line, 8, top + 4 + (i + 1) * LINE_H - 3);
  });
  ctx.restore();
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

    if (name === "EchoFlowPrivacyGate") {
      chain(nodeType.prototype, "onExecuted", function (message) {
        const report = message?.echoflow_gate?.[0];
        const v = gateVerdict(report);
        this.echoflowLines = [v.headline, ...v.lines];
        this.echoflowColor = v.color;
        this.setDirtyCanvas?.(true, true);
      });
    }

    if (name === "EchoFlowLoadPrivacyGate") {
      chain(nodeType.prototype, "onExecuted", function (message) {
        const line = gateTauLine(message?.echoflow_gate_tau?.[0]);
        this.echoflowLines = [line.text];
        this.echoflowColor = line.color;
        this.setDirtyCanvas?.(true, true);
      });
    }

    if (name === "EchoFlowEstimateEF") {
      chain(nodeType.prototype, "onExecuted", function (message) {
        this.echoflowLines = efEstimateLines(message?.echoflow_ef ?? [], message?.echoflow_ef_target?.[0]);
        this.echoflowColor = null;
        this.setDirtyCanvas?.(true, true);
      });
    }

    if (name === "EchoFlowSaveVideo") {
      chain(nodeType.prototype, "onExecuted", function (message) {
        this.echoflowLines = savedVideoLines(message?.echoflow_video?.[0]);
        this.echoflowColor = null;
        this.setDirtyCanvas?.(true, true);
      });
    }

    if (["EchoFlowLoadPrivacyGate", "EchoFlowPrivacyGate", "EchoFlowEstimateEF", "EchoFlowSaveVideo"].includes(name)) {
      chain(nodeType.prototype, "onDrawForeground", function (ctx) {
        if (this.echoflowLines?.length) drawLines(this, ctx, this.echoflowLines, this.echoflowColor);
      });
    }
  },
});
