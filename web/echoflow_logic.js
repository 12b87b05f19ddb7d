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
  const tau = Number(report.tau);
  const ok = passed > 0;
  const headline = `${passed}/${items.length} passed · τ ${Number.isFinite(tau) ? tau : "?"} (${report.similarity ?? "?"})`;
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
  const tau = Number(decision.tau);
  const calibrated = Number(decision.calibrated_tau);
  if (decision.looser_than_calibrated) {
    return { color: "#d9534f", text: `τ ${tau} LOOSER than calibrated ${calibrated} (opted in)` };
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

/** Lines for EchoFlow Save Video from ui.echoflow_video. */
export function savedVideoLines(info) {
  if (!info || !Array.isArray(info.files)) return [];
  const lines = info.files.map((f) => `saved ${f}`);
  if (info.fps) lines.push(`${info.fps} fps`);
  return lines;
}

/** Cut text lines so each fits maxChars (the canvas has no wrapping). */
export function clipLines(lines, maxChars, maxLines = 12) {
  const out = [];
  for (const line of lines) {
    const s = String(line);
    out.push(s.length > maxChars ? s.slice(0, Math.max(1, maxChars - 1)) + "…" : s);
    if (out.length >= maxLines) break;
  }
  if (lines.length > maxLines) out[maxLines - 1] = `… ${lines.length - maxLines + 1} more`;
  return out;
}
