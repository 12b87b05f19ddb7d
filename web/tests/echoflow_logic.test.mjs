import test from "node:test";
import assert from "node:assert/strict";
import {
  clipLines, efBadge, efCategory, efEstimateLines, gateTauLine, gateVerdict, savedVideoLines,
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

test("savedVideoLines and clipLines", () => {
  assert.deepEqual(savedVideoLines({ files: ["a.mp4"], fps: 32 }), ["saved a.mp4", "32 fps"]);
  assert.deepEqual(savedVideoLines(null), []);
  assert.deepEqual(clipLines(["abcdefghij"], 5), ["abcd…"]);
  const many = clipLines(Array.from({ length: 20 }, (_, i) => `l${i}`), 80, 4);
  assert.equal(many.length, 4);
  assert.equal(many[3], "… 17 more");
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
