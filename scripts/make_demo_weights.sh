#!/usr/bin/env bash
# Re-create the bundled demo weights (echoflow_models/weights/phantom/) from scratch, on the CPU.
#
#   scripts/make_demo_weights.sh [OUT]          default OUT: echoflow_models/weights/phantom
#
# 1. writes a phantom dataset (100 patients x A4C/PSAX/PLAX, one 64-frame video + one 16-frame video each,
#    90 % TRAIN / 10 % VAL) in the EchoNet-Dynamic layout into a temporary folder;
# 2. `echoflow train all --preset phantom`: A-VAE -> latent cache + scaling.pt -> LIFM -> ReID + bank + tau
#    -> LVFM -> EF regressor, each stage trained for the preset's step count (--max-minutes is only a
#    safety cap). The LVFM trains on its own clips of the same patients (stages lvfm_data + lvfm_latents:
#    5 EFs per patient and view, 64 frames starting at end-diastole at 75 bpm; docs/training.md says why),
#    and the LIFM learns their first (end-diastolic) frames; about 3 h on 2 CPU cores, most of it the
#    LVFM's 18000 steps, estimated from the stage times (docs/training.md);
# 3. exports the released layout in float16;
# 4. `python -m research tune-guidance --write`: chooses the LVFM's EF guidance on validation seeds (the lowest EF
#    MAE of generated vs requested EF) and stores it beside the LVFM as sampling.json, its default guidance;
# 5. replaces OUT only once everything succeeded.
#
# Environment: JOBS (stages run side by side, default 2) x THREADS (torch threads per stage, default 1):
# two single-threaded stages use two cores without the slowdown of oversubscribed multi-threaded ops;
# DEVICE (cpu | cuda, default cpu), STEPS_SCALE (multiplies every stage's step count, default 1; e.g. 10
# on a GPU), TIME_SCALE (multiplies every stage's --max-minutes safety cap, default 1),
# WORK (working folder, default a new temporary one), KEEP_WORK=1 keeps it (dataset, runs, logs).
# Re-running with the same WORK resumes: finished stages are skipped, an interrupted one resumes.
set -euo pipefail

OUT=${1:-echoflow_models/weights/phantom}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
DEVICE=${DEVICE:-cpu}
TIME_SCALE=${TIME_SCALE:-1}
STEPS_SCALE=${STEPS_SCALE:-1}
WORK=${WORK:-$(mktemp -d -t echoflow-demo-XXXXXX)}
PY=${PYTHON:-python}
start=$(date +%s)

echo "work folder: $WORK (jobs $JOBS x threads $THREADS, device $DEVICE, steps scale $STEPS_SCALE, time scale $TIME_SCALE)"
"$PY" -m echoflow_models train dataset --out "$WORK/data" --patients 100 --seed 0 \
    --frames 64 --extra-videos 1 --extra-frames 16 --split 0.9,0.1,0.0
"$PY" -m echoflow_models train all --data "$WORK/data" --work "$WORK/runs" --out "$WORK/export" \
    --preset phantom --fp16 --jobs "$JOBS" --threads "$THREADS" --device "$DEVICE" --time-scale "$TIME_SCALE" \
    --steps-scale "$STEPS_SCALE" --seed 0
"$PY" -m research tune-guidance --weights "$WORK/export" --threads $(( JOBS * THREADS )) --quiet --write

rm -rf "$OUT.new"
mkdir -p "$(dirname "$OUT")"
cp -r "$WORK/export" "$OUT.new"
rm -rf "$OUT"
mv "$OUT.new" "$OUT"
"$PY" -m echoflow_models info "$OUT"
echo "demo weights re-created in $OUT in $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
if [ "${KEEP_WORK:-0}" != "1" ]; then rm -rf "$WORK"; fi
