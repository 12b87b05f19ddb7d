import test from "node:test";
import assert from "node:assert/strict";
import {
  READOUT_KINDS, READOUT_LAYOUT, READOUT_MAX_LINES, efBadge, efBothLines, efCategory, efEstimateLines, fmtTau,
  gateTauLine, gateVerdict, lvLines, pushDownBelow, readoutCharsPerLine, readoutFromMessage, readoutFromProperty,
  readoutLayout, readoutToProperty, savedVideoLines, wrapLines,
} from "../echoflow_logic.js";

test("efCategory follows the clinical bands", () => {
  assert.equal(efCategory(25).label, "severely reduced");
  assert.equal(efCategory(30).label, "reduced");
  assert.equal(efCategory(39.9).label, "reduced");
  assert.equal(efCategory(45).label, "mildly reduced");
  assert.equal(efCategory(50).label, "normal");
  assert.equal(efCategory(70).label, "normal");
  assert.equal(efCategory(70.5).label, "hyperdynamic");
  assert.equal(efCategory("abc").label, "invalid EF");
  assert.equal(efCategory(NaN).label, "invalid EF");
});

test("efBadge formats the value and carries the category colour", () => {
  assert.equal(efBadge(55).text, "EF 55% · normal");
  assert.equal(efBadge(37.5).text, "EF 37.5% · reduced");
  assert.equal(efBadge(55).color, efCategory(55).color);
});

test("gateVerdict summarises a GateReport dict", () => {
  const report = {
    tau: 0.9997, similarity: "pearson", bank_size: 16,
    items: [
      { max_similarity: 0.5, nearest_index: 3, passed: true },
      { max_similarity: 0.99995, nearest_index: 7, passed: false },
    ],
  };
  const v = gateVerdict(report);
  assert.equal(v.ok, true);
  assert.match(v.headline, /^1\/2 passed · τ 0.9997 \(pearson\)$/);
  assert.equal(v.lines.length, 2);
  assert.match(v.lines[0], /#0 PASS +max 0.500000 +bank #3/);
  assert.match(v.lines[1], /#1 REJECT/);
  assert.notEqual(v.color, gateVerdict({ ...report, items: [report.items[0]] }).color);
});

test("gateVerdict fails closed on missing or empty reports", () => {
  assert.equal(gateVerdict(undefined).ok, false);
  assert.equal(gateVerdict({ items: [] }).ok, false);
  const none = gateVerdict({ tau: 0.9, similarity: "cosine", items: [{ max_similarity: 0.95, nearest_index: 0, passed: false }] });
  assert.equal(none.ok, false);
  assert.equal(none.color, "#d9534f");
});

test("efEstimateLines lists estimates, errors and the mean", () => {
  assert.deepEqual(efEstimateLines([]), []);
  const lines = efEstimateLines([30, 50], 40);
  assert.equal(lines.length, 3);
  assert.match(lines[0], /video 0: EF 30.0% \(reduced\) · error 10.0/);
  assert.equal(lines[2], "mean 40.0%");
});

test("savedVideoLines", () => {
  assert.deepEqual(savedVideoLines({ files: ["a.mp4"], fps: 32 }), ["saved a.mp4", "32 fps"]);
  assert.deepEqual(savedVideoLines(null), []);
});

test("gateTauLine says where the gate's tau comes from and flags a looser one", () => {
  const calibrated = { tau: 0.979, calibrated_tau: 0.979, calibrated_source: "gates.json", tau_chosen_by: "calibrated",
    looser_than_calibrated: false };
  assert.equal(gateTauLine(calibrated).text, "τ 0.979 (calibrated, gates.json)");
  assert.equal(gateTauLine(calibrated).color, "#5cb85c");
  const loose = { ...calibrated, tau: 0.9997, tau_chosen_by: "user (LOOSER, opted in)", looser_than_calibrated: true };
  assert.match(gateTauLine(loose).text, /LOOSER than calibrated 0.979/);
  assert.equal(gateTauLine(loose).color, "#d9534f");
  const strict = { ...calibrated, tau: 0.95, tau_chosen_by: "user (stricter)" };
  assert.equal(gateTauLine(strict).text, "τ 0.95 (stricter than calibrated 0.979)");
  assert.equal(gateTauLine(undefined).text, "tau: not loaded yet");
});

test("fmtTau shows 6 significant digits", () => {
  assert.equal(fmtTau(0.9791376051789112), "0.979138");
  assert.equal(fmtTau(0.979), "0.979");
  assert.equal(fmtTau(0.9997), "0.9997");
  assert.equal(fmtTau("x"), "?");
  assert.match(gateVerdict({ tau: 0.9791376051789112, similarity: "pearson", items: [] }).headline, /τ 0\.979138 /);
});

const GATE = { tau: 0.979, similarity: "pearson", items: [{ max_similarity: 0.5, nearest_index: 3, passed: true }] };

test("readoutFromMessage reads each node's ui key and keeps the verdict colour", () => {
  assert.deepEqual(Object.keys(READOUT_KINDS).sort(),
    ["EchoFlowAnimate", "EchoFlowEstimateEF", "EchoFlowLoadPrivacyGate", "EchoFlowPrivacyGate",
     "EchoFlowSaveEchoNetDataset", "EchoFlowSaveVideo", "EchoFlowSegmentLV"]);
  const gate = readoutFromMessage("gate", { text: ["summary"], echoflow_gate: [GATE] });
  assert.deepEqual(gate.lines, ["1/1 passed · τ 0.979 (pearson)", "#0 PASS  max 0.500000  bank #3"]);
  assert.equal(gate.color, "#5cb85c");
  const items = [...GATE.items, { ...GATE.items[0], passed: false }];
  const partial = readoutFromMessage("gate", { echoflow_gate: [{ ...GATE, items }] });
  assert.equal(partial.color, "#e0c341");
  const tau = readoutFromMessage("gate_tau", { echoflow_gate_tau: [{ tau: 0.9997, calibrated_tau: 0.979,
    looser_than_calibrated: true }] });
  assert.deepEqual(tau, { lines: ["τ 0.9997 LOOSER than calibrated 0.979 (opted in)"], color: "#d9534f" });
  const ef = readoutFromMessage("ef", { echoflow_ef: [30, 50], echoflow_ef_target: [40] });
  assert.equal(ef.lines.length, 3);
  assert.equal(ef.color, null);
  assert.deepEqual(readoutFromMessage("video", { echoflow_video: [{ files: ["a.mp4"], fps: 32 }] }).lines,
    ["saved a.mp4", "32 fps"]);
  assert.deepEqual(readoutFromMessage("ef", { echoflow_ef: [] }).lines, ["no EF estimate"]);
});

test("a message without the node's key (cached re-run, other nodes) keeps the readout: null", () => {
  for (const kind of ["gate", "gate_tau", "ef", "video", "nope"]) {
    assert.equal(readoutFromMessage(kind, null), null);
    assert.equal(readoutFromMessage(kind, undefined), null);
    assert.equal(readoutFromMessage(kind, {}), null);
    assert.equal(readoutFromMessage(kind, { text: ["a summary"] }), null);
  }
  assert.equal(readoutFromMessage("gate", { echoflow_video: [{ files: ["a.mp4"] }] }), null);
});

test("readout properties round-trip through JSON (a saved workflow) and refuse junk", () => {
  const r = readoutFromMessage("gate", { echoflow_gate: [GATE] });
  const saved = JSON.parse(JSON.stringify({ properties: { echoflow_readout: readoutToProperty(r) } }));
  assert.deepEqual(readoutFromProperty(saved.properties.echoflow_readout), r);
  for (const junk of [undefined, null, "text", 3, [], {}, { lines: [] }, { lines: "a" }]) {
    assert.equal(readoutFromProperty(junk), null);
    assert.equal(readoutToProperty(junk), null);
  }
  assert.deepEqual(readoutFromProperty({ lines: [1, null, "x"], color: "red; x" }),
    { lines: ["1", "", "x"], color: null });
  assert.equal(readoutFromProperty({ lines: ["a"], color: "#abc" }).color, "#abc");
  const long = readoutFromProperty({ lines: Array.from({ length: 100 }, (_, i) => `l${i}`) });
  assert.equal(long.lines.length, READOUT_MAX_LINES);
  assert.equal(long.lines.at(-1), `… ${100 - READOUT_MAX_LINES + 1} more`);
  assert.equal(readoutFromProperty({ lines: ["x".repeat(1000)] }).lines[0].length, 400);
});

test("wrapLines breaks at path and word boundaries, never loses text", () => {
  assert.deepEqual(wrapLines(["short"], 20), ["short"]);
  const w = wrapLines(["saved echoflow/echoflow_full_pipeline_00001_.mp4"], 30);
  assert.ok(w.every((l) => l.length <= 30), w);
  assert.deepEqual(w, ["saved echoflow/echoflow_full_", "  pipeline_00001_.mp4"]);
  const hard = wrapLines(["x".repeat(25)], 10);
  assert.deepEqual(hard, ["xxxxxxxxxx", "  xxxxxxxx", "  xxxxxxx"]);
  assert.equal(hard.join("").replace(/ /g, "").length, 25);
});

test("readoutLayout sizes the box from the node width", () => {
  const r = { lines: ["#0 PASS  max 0.500000  bank #3", "x".repeat(80)], color: "#5cb85c" };
  const wide = readoutLayout(r, 900);
  const narrow = readoutLayout(r, 320);
  assert.equal(wide.lines.length, 2);
  assert.ok(narrow.lines.length > 2);
  assert.equal(narrow.height, narrow.lines.length * READOUT_LAYOUT.lineHeight + 2 * READOUT_LAYOUT.padY);
  assert.ok(narrow.lines.every((l) => l.length <= readoutCharsPerLine(320)));
  assert.equal(narrow.color, "#5cb85c");
  assert.deepEqual(readoutLayout(null, 320), { lines: [], height: 0 });
});

test("pushDownBelow moves only the nodes a grown node would cover, in cascade", () => {
  // a column: 1 grew to end at 300; 2 starts at 280 (covered), 3 right below 2, 4 beside 1, 5 far below
  const boxes = [
    { id: 1, x: 0, y: 0, w: 320, h: 300 },
    { id: 2, x: 0, y: 280, w: 320, h: 100 },
    { id: 3, x: 0, y: 390, w: 320, h: 100 },
    { id: 4, x: 380, y: 100, w: 320, h: 500 },
    { id: 5, x: 0, y: 900, w: 320, h: 100 },
    { id: 6, x: 0, y: -200, w: 320, h: 100 },
  ];
  assert.deepEqual(pushDownBelow(boxes, 1, 10), { 2: 30, 3: 30 });
  assert.deepEqual(pushDownBelow(boxes, 4, 10), {});
  assert.deepEqual(pushDownBelow(boxes, 99, 10), {});
  // a node beside (starting within the grown node's title) is not moved
  const beside = [{ id: 1, x: 0, y: 0, w: 320, h: 300 }, { id: 2, x: 100, y: 20, w: 320, h: 50 }];
  assert.deepEqual(pushDownBelow(beside, 1), {});
});

test("Animate shows the guidance it used and Save Video says when nothing was kept", () => {
  const animate = readoutFromMessage("animate", { ef: [55], guidance: [3], text: ["EF 55 % (normal), guidance 3"] });
  assert.deepEqual(animate.lines, ["guidance 3 (EF 55 %)"]);
  assert.equal(readoutFromMessage("animate", {}), null);
  const preview = readoutFromMessage("video", { echoflow_video: [{ files: [], fps: 32, videos: 2, preview_only: true }] });
  assert.deepEqual(preview.lines, ["preview only: 2 videos shown, no file kept", "32 fps"]);
  const dataset = readoutFromMessage("text", { text: ["2 video(s) added to echoflow/ds (2 in FileList.csv)"] });
  assert.deepEqual(dataset.lines, ["2 video(s) added to echoflow/ds (2 in FileList.csv)"]);
});

test("a tau typed equal to the calibrated one is shown as such, not as stricter", () => {
  const equal = { tau: 0.9997, calibrated_tau: 0.9997, calibrated_source: "release default", tau_chosen_by: "user (equal)",
    looser_than_calibrated: false };
  assert.equal(gateTauLine(equal).text, "τ 0.9997 (as calibrated, release default)");
});

test("EF by segmentation is shown beside the regressor's, and Segment LV shows each video's volumes", () => {
  assert.deepEqual(efBothLines([40, 50], [38.2, null], 45), [
    "video 0: regressor 40.0% (error 5.0) · LV seg 38.2% (error 6.8)",
    "video 1: regressor 50.0% (error 5.0) · LV seg no LV",
  ]);
  assert.deepEqual(efBothLines(undefined, [30]), ["video 0: LV seg 30.0%"]);
  assert.deepEqual(efBothLines([30, 50], undefined, 40), efEstimateLines([30, 50], 40));  // the regressor alone
  const seg = readoutFromMessage("ef", { echoflow_ef_seg: [61.04], echoflow_ef_target: [65] });
  assert.deepEqual(seg.lines, ["video 0: LV seg 61.0% (error 4.0)"]);
  assert.deepEqual(lvLines([{ ef: 52.1, edv: 90.2, esv: 43.1, view: "A4C", target: 55 }, { ef: null }]),
    ["video 0: EF 52.1% (normal) · EDV 90 mL ESV 43 mL · error 2.9", "video 1: no LV cavity found"]);
  assert.deepEqual(lvLines([{ ef: 30, edv: 8, esv: 5.6, view: "PSAX" }]), ["video 0: EF 30.0% (reduced) · EDV 8 ESV 6"]);
  assert.equal(readoutFromMessage("lv", { text: ["x"] }), null);
  assert.deepEqual(readoutFromMessage("lv", { echoflow_lv: [] }).lines, ["no video segmented"]);
});
