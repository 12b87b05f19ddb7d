// Pure helpers of the EchoFlow frontend extension: no DOM, no ComfyUI imports, so node --test can run them.
// (Loaded by the ComfyUI frontend too, like every .js under web/; it only defines exports.)

export const EF_BANDS = [
  // upper bound (exclusive, except the last), label, colour
  { below: 30, label: "severely reduced", color: "#d9534f" },
  { below: 40, label: "reduced", color: "#e8833a" },
  { below: 50, label: "mildly reduced", color: "#e0c341" },
  { below: 70.0000001, label: "normal", color: "#5cb85c" },
  { below: Infinity, label: "hyperdynamic", color: "#5bc0de" },
];

/** Clinical LVEF band for an EF in percent (same thresholds as nodes/common.py ef_category). */
export function efCategory(ef) {
  const value = Number(ef);
  if (!Number.isFinite(value)) return { label: "invalid EF", color: "#999999" };
  for (const band of EF_BANDS) {
    if (value < band.below) return { label: band.label, color: band.color };
  }
  return { label: EF_BANDS[EF_BANDS.length - 1].label, color: EF_BANDS[EF_BANDS.length - 1].color };
}

/** Text for the EF badge on EchoFlow Animate. */
export function efBadge(ef) {
  const value = Number(ef);
  const cat = efCategory(value);
  return { text: `EF ${Number.isFinite(value) ? value.toFixed(value % 1 ? 1 : 0) : "?"}% · ${cat.label}`, color: cat.color };
}

/** A threshold for display: 6 significant digits, no trailing zeros (0.9791376051789112 -> 0.979138). */
export function fmtTau(x) {
  const v = Number(x);
  return Number.isFinite(v) ? String(Number(v.toPrecision(6))) : "?";
}

function fmtSim(x) {
  return typeof x === "number" && Number.isFinite(x) ? x.toFixed(6) : String(x);
}

/** Verdict lines for EchoFlow Privacy Gate from its ui.echoflow_gate report (GateReport.to_dict()). */
export function gateVerdict(report) {
  if (!report || !Array.isArray(report.items)) {
    return { ok: false, color: "#999999", headline: "no privacy report", lines: [] };
  }
  const items = report.items;
  const passed = items.filter((it) => it.passed).length;
  const ok = passed > 0;
  const headline = `${passed}/${items.length} passed · τ ${fmtTau(report.tau)} (${report.similarity ?? "?"})`;
  const lines = items.map((it, i) => {
    const mark = it.passed ? "PASS" : "REJECT";
    return `#${i} ${mark}  max ${fmtSim(it.max_similarity)}  bank #${it.nearest_index}`;
  });
  let color = "#5cb85c";
  if (!ok) color = "#d9534f";
  else if (passed < items.length) color = "#e0c341";
  return { ok, color, headline, lines };
}

/** The tau a Load Privacy Gate node decided (ui.echoflow_gate_tau[0]): one line, red when looser than calibrated. */
export function gateTauLine(decision) {
  if (!decision || !Number.isFinite(Number(decision.tau))) {
    return { color: "#999999", text: "tau: not loaded yet" };
  }
  const tau = fmtTau(decision.tau);
  const calibrated = fmtTau(decision.calibrated_tau);
  if (decision.looser_than_calibrated) {
    return { color: "#d9534f", text: `τ ${tau} LOOSER than calibrated ${calibrated} (opted in)` };
  }
  if (decision.tau_chosen_by === "user (equal)") {
    return { color: "#5cb85c", text: `τ ${tau} (as calibrated, ${decision.calibrated_source ?? "?"})` };
  }
  if (decision.tau_chosen_by === "calibrated") {
    return { color: "#5cb85c", text: `τ ${tau} (calibrated, ${decision.calibrated_source ?? "?"})` };
  }
  return { color: "#5cb85c", text: `τ ${tau} (stricter than calibrated ${calibrated})` };
}

/** Lines for EchoFlow Estimate EF from ui.echoflow_ef (list of estimates, percent). */
export function efEstimateLines(values, target) {
  if (!Array.isArray(values) || values.length === 0) return [];
  const lines = values.map((v, i) => {
    const cat = efCategory(v).label;
    let line = `video ${i}: EF ${Number(v).toFixed(1)}% (${cat})`;
    if (target !== undefined && target !== null && Number.isFinite(Number(target))) {
      line += ` · error ${Math.abs(Number(v) - Number(target)).toFixed(1)}`;
    }
    return line;
  });
  if (values.length > 1) {
    const mean = values.reduce((a, b) => a + Number(b), 0) / values.length;
    lines.push(`mean ${mean.toFixed(1)}%`);
  }
  return lines;
}

/** One EF for a readout line: "45.1%", or "no LV" for a video where segmentation found none (null). */
function efText(v) {
  return v === null || v === undefined || !Number.isFinite(Number(v)) ? "no LV" : `${Number(v).toFixed(1)}%`;
}

/**
 * Lines for EchoFlow Estimate EF with EF by segmentation: ui.echoflow_ef_seg (percent, null where no LV was
 * found), beside the regressor's ui.echoflow_ef when both ran.
 */
export function efBothLines(regressor, segmentation, target) {
  if (!Array.isArray(segmentation) || segmentation.length === 0) return efEstimateLines(regressor, target);
  const hasTarget = target !== undefined && target !== null && Number.isFinite(Number(target));
  const err = (v) => (hasTarget && v !== null && Number.isFinite(Number(v))
    ? ` (error ${Math.abs(Number(v) - Number(target)).toFixed(1)})` : "");
  return segmentation.map((s, i) => {
    const parts = [];
    if (Array.isArray(regressor) && i < regressor.length) parts.push(`regressor ${efText(regressor[i])}${err(regressor[i])}`);
    parts.push(`LV seg ${efText(s)}${err(s)}`);
    return `video ${i}: ${parts.join(" · ")}`;
  });
}

/** Lines for EchoFlow Segment LV from ui.echoflow_lv (one summary per video). */
export function lvLines(summaries) {
  if (!Array.isArray(summaries)) return [];
  return summaries.map((m, i) => {
    if (!m || m.ef === null || m.ef === undefined) return `video ${i}: no LV cavity found`;
    const unit = m.view === "PSAX" ? "" : " mL";
    let line = `video ${i}: EF ${efText(m.ef)} (${efCategory(m.ef).label})`;
    if (Number.isFinite(Number(m.edv)) && Number.isFinite(Number(m.esv))) {
      line += ` · EDV ${Number(m.edv).toFixed(0)}${unit} ESV ${Number(m.esv).toFixed(0)}${unit}`;
    }
    if (m.target !== null && m.target !== undefined && Number.isFinite(Number(m.target))) {
      line += ` · error ${Math.abs(Number(m.ef) - Number(m.target)).toFixed(1)}`;
    }
    return line;
  });
}

/** Lines for EchoFlow Save Video from ui.echoflow_video. */
export function savedVideoLines(info) {
  if (!info || !Array.isArray(info.files)) return [];
  const lines = info.files.map((f) => `saved ${f}`);
  if (info.preview_only) {
    const n = Number(info.videos) || 0;
    lines.push(`preview only: ${n} video${n === 1 ? "" : "s"} shown, no file kept`);
  }
  if (info.fps) lines.push(`${info.fps} fps`);
  return lines;
}

// ------------------------------------------------------------------ readouts shown inside the node
// A readout is { lines: string[], color: string | null }: the first line is drawn in `color` (green pass, yellow
// partial, red reject or looser tau) and a bar of that colour runs down its left edge. It is kept in
// node.properties[READOUT_PROPERTY] (saved with the workflow), never in widgets_values.

export const READOUT_PROPERTY = "echoflow_readout";
export const READOUT_MAX_LINES = 40;
const READOUT_MAX_CHARS = 400;
const COLOR_RE = /^#[0-9a-fA-F]{3,8}$/;

/** Which ui key each EchoFlow node sends its readout in (nodes not listed here have none). */
export const READOUT_KINDS = {
  EchoFlowPrivacyGate: "gate",
  EchoFlowLoadPrivacyGate: "gate_tau",
  EchoFlowEstimateEF: "ef",
  EchoFlowSegmentLV: "lv",
  EchoFlowSaveVideo: "video",
  EchoFlowAnimate: "animate",
  EchoFlowSaveEchoNetDataset: "text",
};

/**
 * The readout an `executed` message carries for a node of `kind`, or null when the message has none (a cached
 * re-run may send `executed` with no output at all: the node keeps what it shows).
 */
export function readoutFromMessage(kind, message) {
  if (!message || typeof message !== "object") return null;
  if (kind === "gate") {
    if (!Array.isArray(message.echoflow_gate)) return null;
    const v = gateVerdict(message.echoflow_gate[0]);
    return { lines: [v.headline, ...v.lines], color: v.color };
  }
  if (kind === "gate_tau") {
    if (!Array.isArray(message.echoflow_gate_tau)) return null;
    const line = gateTauLine(message.echoflow_gate_tau[0]);
    return { lines: [line.text], color: line.color };
  }
  if (kind === "ef") {
    if (!Array.isArray(message.echoflow_ef) && !Array.isArray(message.echoflow_ef_seg)) return null;
    const lines = efBothLines(message.echoflow_ef, message.echoflow_ef_seg, message.echoflow_ef_target?.[0]);
    return { lines: lines.length ? lines : ["no EF estimate"], color: null };
  }
  if (kind === "lv") {
    if (!Array.isArray(message.echoflow_lv)) return null;
    const lines = lvLines(message.echoflow_lv);
    return { lines: lines.length ? lines : ["no video segmented"], color: null };
  }
  if (kind === "animate") {  // the EF and the guidance actually used (-1 resolves to the model's own value)
    if (!Array.isArray(message.ef) || !Array.isArray(message.guidance)) return null;
    return { lines: [`guidance ${message.guidance[0]} (EF ${message.ef[0]} %)`], color: null };
  }
  if (kind === "text") {
    if (!Array.isArray(message.text) || message.text.length === 0) return null;
    return { lines: String(message.text[0]).split("\n"), color: null };
  }
  if (kind === "video") {
    if (!Array.isArray(message.echoflow_video)) return null;
    const lines = savedVideoLines(message.echoflow_video[0]);
    return { lines: lines.length ? lines : ["no video saved"], color: null };
  }
  return null;
}

/** A plain, bounded copy of a readout for node.properties (what the saved workflow carries). */
export function readoutToProperty(readout) {
  const r = readoutFromProperty(readout);
  return r ? { lines: r.lines, color: r.color } : null;
}

/**
 * The readout stored in node.properties, checked (a hand-edited or foreign workflow must not break the node):
 * null unless it has at least one line; lines become strings, bounded in count and length; a colour that is not
 * a #hex colour is dropped.
 */
export function readoutFromProperty(value) {
  if (!value || typeof value !== "object" || !Array.isArray(value.lines) || value.lines.length === 0) return null;
  let lines = value.lines.map((l) => String(l ?? "").slice(0, READOUT_MAX_CHARS));
  if (lines.length > READOUT_MAX_LINES) {
    lines = [...lines.slice(0, READOUT_MAX_LINES - 1), `… ${lines.length - READOUT_MAX_LINES + 1} more`];
  }
  const color = typeof value.color === "string" && COLOR_RE.test(value.color) ? value.color : null;
  return { lines, color };
}

/**
 * Wrap text lines to at most maxChars each (the canvas does not wrap): breaks after the last "/", space, "_",
 * "-" or "·" that leaves at least a third of a line, else mid-word; continuation lines are indented by two spaces.
 */
export function wrapLines(lines, maxChars) {
  const width = Math.max(8, Math.floor(maxChars));
  const out = [];
  for (const line of lines) {
    let rest = String(line);
    let indent = "";
    while (indent.length + rest.length > width) {
      const room = width - indent.length;
      let cut = -1;
      for (const sep of ["/", " ", "_", "-", "·"]) cut = Math.max(cut, rest.lastIndexOf(sep, room - 1) + 1);
      if (cut < room / 3) cut = room;
      out.push(indent + rest.slice(0, cut).trimEnd());
      rest = rest.slice(cut).trimStart();
      indent = "  ";
    }
    out.push(indent + rest);
  }
  return out;
}

/** Layout of the readout box: line height, padding and char width of its 12px monospace font, in canvas px. */
export const READOUT_LAYOUT = { lineHeight: 15, padY: 6, padX: 12, margin: 15, charWidth: 7.3 };

/** How many characters fit on one line of a readout box in a node `nodeWidth` wide. */
export function readoutCharsPerLine(nodeWidth, layout = READOUT_LAYOUT) {
  const inner = Number(nodeWidth) - 2 * layout.margin - layout.padX - 6;
  return Math.max(8, Math.floor(inner / layout.charWidth));
}

/** The wrapped lines and the height a readout box needs in a node `nodeWidth` wide. */
export function readoutLayout(readout, nodeWidth, layout = READOUT_LAYOUT) {
  const r = readoutFromProperty(readout);
  if (!r) return { lines: [], height: 0 };
  const lines = wrapLines(r.lines, readoutCharsPerLine(nodeWidth, layout));
  return { lines, color: r.color, height: lines.length * layout.lineHeight + 2 * layout.padY };
}

/**
 * Where to move the nodes below a node that grew, so that nothing covers it: `boxes` are
 * { id, x, y, w, h } with y the top of the title bar and h including it; `grownId` names the grown node (its box
 * already has the new height). A node is pushed when it overlaps the grown node horizontally, its top lies below
 * the grown node's title and above its new bottom + gap; a pushed node pushes the ones below it in turn. Nodes
 * beside or above are never moved. Returns { id: dy } for the nodes to move down by dy (> 0).
 */
export function pushDownBelow(boxes, grownId, gap = 10, titleHeight = 30) {
  const byId = new Map(boxes.map((b) => [b.id, { ...b }]));
  const moves = {};
  const queue = [byId.get(grownId)].filter(Boolean);
  while (queue.length) {
    const a = queue.shift();
    const bottom = a.y + a.h + gap;
    const hit = [...byId.values()]
      .filter((b) => b.id !== a.id && b.id !== grownId && a.x < b.x + b.w && b.x < a.x + a.w)
      .filter((b) => b.y > a.y + titleHeight && b.y < bottom)
      .sort((p, q) => p.y - q.y);
    for (const b of hit) {
      const dy = bottom - b.y;
      b.y += dy;
      moves[b.id] = (moves[b.id] ?? 0) + dy;
      queue.push(b);
    }
  }
  return moves;
}
