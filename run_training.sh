#!/usr/bin/env bash
# The recipe of the shipped weights/ (weights/MODEL_CARD.md, docs/training.md "How the shipped weights were
# made"): the detector's chain, then the classifier ensemble's, then both exported into $OUT/weights/ (never
# into weights/). One command reproduces the recipe (not the bits: thread counts and machines differ).
#
# The trainers' defaults are the first stage of each chain: `python train_segmentation.py` with no model or
# training flags is seg_1_imagenet, `python train_classification.py` is cls_run1. The stages below give only
# their own flags (where their data, files and logs go, and what differs from stage 1).
#
#   nohup ./run_training.sh &                        # CPU, CIL:54816 (+ cil54816_extra when present)
#   NGPU=4 OUT=runs/cil_4gpu nohup ./run_training.sh &   # 4 GPUs with torchrun (the CPU batch sizes)
#   bash run_training.sh --smoke                     # the same chain, each trainer with --smoke (synthetic
#                                                    # data, tiny models): a check that it runs, in minutes
#
# Stages, in order, and their CPU time for the shipped files (2 x86-64 cores, one or two threads, shared with
# other work; from weights/MODEL_CARD.md and docs/experiments.md). GPU time: not measured.
#   seg_1_imagenet  EfficientNet-Lite0-FPN from ImageNet, AdamW 3e-4, 12 epochs    the card: 5.1 h for 7,600
#                   of 200 steps x 2 crops of 512 px at --fixed-scale 0.75        crops (19 epochs, about 16 min
#   seg_2           from seg_1's best.pth, AdamW 1e-4, 5 epochs                    each) up to the shipped epoch;
#   seg_3           from seg_2's best.pth, AdamW 5e-5, 6 epochs; its epoch         at that rate seg_1 3.2 h,
#                   SEG_SHIP_EPOCH (2) is the shipped detector                     seg_2 1.3 h, seg_3 1.6 h
#   cls_cache_straight, cls_cache_axis   the classifier's instance caches       not timed
#   cls_run1 .. cls_run6    the straight member (ResNet-18 + 43 features)          4.4 h
#   cls_run7, 9, 12, 13, 14 the axis member's runs, from run 6                     4.1 h
#   cls_run16               the axis member's last run                             34 min
#   export_seg, export_cls  models.export into $OUT/weights/                       seconds
# In all about 15 h on a CPU.
#
# Each stage writes into $OUT/<stage>/ and logs to $OUT/<stage>.log (appended, never wiped). Started again,
# a finished stage (marker $OUT/<stage>/DONE) is skipped and an unfinished one resumes from its last.pth
# (--resume auto). A failing stage stops the recipe with its exit code.
#
# Variables (environment):
#   DATA_ROOT       CIL:54816 in Pascal-VOC form       (default ../shared/data/cil54816)
#   DATASET         loader name for DATA_ROOT          (default voc)
#   TRAIN_ONLY      "NAME ROOT" of a dataset used whole for training, none held out (default: voc
#                   ../shared/data/cil54816_extra when DATA_ROOT is the default and that folder exists;
#                   "none" = no such dataset); the detector's stages and classifier runs 4-16 use it
#   OUT             run folder                         (default runs/recipe; with --smoke a new temporary folder)
#   CACHE_DIR       the classifier's instance caches   (default runs/instance_cache; with --smoke $OUT/...)
#   NGPU            0 = CPU, 1 = one GPU, >1 = torchrun with NGPU processes (default 0)
#   SEG_SHIP_EPOCH  the epoch of seg_3 exported        (default 2, the shipped one; 0 with --smoke)
#   EXTRA_SEG_ARGS  flags appended to every train_segmentation.py stage, last (so they win: "--amp")
#   EXTRA_CLS_ARGS  flags appended to every train_classification.py stage, last
#   SMOKE           1 = as --smoke
#   PYTHON          python interpreter                 (default python)
set -euo pipefail
cd "$(dirname "$0")"

die() { echo "run_training.sh: $*" >&2; exit 2; }
SMOKE=${SMOKE:-0}
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    *) die "unknown argument '$arg' (the only one is --smoke; the rest are environment variables, see the header)" ;;
  esac
done
[[ "$SMOKE" == 0 || "$SMOKE" == 1 ]] || die "SMOKE must be 0 or 1, got '$SMOKE'"

DATA_ROOT=${DATA_ROOT:-../shared/data/cil54816}
DATASET=${DATASET:-voc}
NGPU=${NGPU:-0}
EXTRA_SEG_ARGS=${EXTRA_SEG_ARGS:-}
EXTRA_CLS_ARGS=${EXTRA_CLS_ARGS:-}
PYTHON=${PYTHON:-python}
[[ "$NGPU" =~ ^[0-9]+$ ]] || die "NGPU must be a whole number, got '$NGPU'"

if [[ "$SMOKE" == 1 ]]; then
  OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/run_training_smoke.XXXXXX")}
  CACHE_DIR=${CACHE_DIR:-$OUT/instance_cache}
  SEG_SHIP_EPOCH=${SEG_SHIP_EPOCH:-0}
  # synthetic spreads instead of the data (no data flags), one or two steps an epoch, one epoch a stage
  seg_data=()
  cls_data=()
  cls_data_all=()
  seg_smoke=(--smoke --epochs 1 --max-steps-per-epoch 1)  # resnet18_fpn, which starts from scratch
  cls_smoke=(--smoke --epochs 1)
else
  OUT=${OUT:-runs/recipe}
  CACHE_DIR=${CACHE_DIR:-runs/instance_cache}
  SEG_SHIP_EPOCH=${SEG_SHIP_EPOCH:-2}
  [[ -e "$DATA_ROOT" ]] || die "DATA_ROOT '$DATA_ROOT' does not exist (set DATA_ROOT=/path/to/data)"
  if [[ -z "${TRAIN_ONLY:-}" && "$DATA_ROOT" == ../shared/data/cil54816 && -d ../shared/data/cil54816_extra ]]; then
    TRAIN_ONLY="voc ../shared/data/cil54816_extra"
  fi
  TRAIN_ONLY=${TRAIN_ONLY:-none}
  train_only=()
  if [[ "$TRAIN_ONLY" != none ]]; then
    read -r -a t <<<"$TRAIN_ONLY"
    [[ ${#t[@]} -eq 2 ]] || die "TRAIN_ONLY must be 'NAME ROOT', got '$TRAIN_ONLY'"
    [[ -e "${t[1]}" ]] || die "TRAIN_ONLY root '${t[1]}' does not exist"
    train_only=(--train-only-data "${t[@]}")
  fi
  seg_data=(--dataset "$DATASET" --data-root "$DATA_ROOT" ${train_only[@]+"${train_only[@]}"})
  cls_data=(--dataset "$DATASET" --data-root "$DATA_ROOT")  # classifier runs 1-3: the one folder
  cls_data_all=("${cls_data[@]}" ${train_only[@]+"${train_only[@]}"})
  seg_smoke=()
  cls_smoke=()
fi
[[ "$SEG_SHIP_EPOCH" =~ ^[0-9]+$ ]] || die "SEG_SHIP_EPOCH must be a whole number, got '$SEG_SHIP_EPOCH'"
read -r -a seg_extra <<<"$EXTRA_SEG_ARGS"
read -r -a cls_extra <<<"$EXTRA_CLS_ARGS"

if [[ "$NGPU" -eq 0 ]]; then device=cpu; else device=cuda; fi
if [[ "$NGPU" -gt 1 ]]; then
  launch=(torchrun --standalone --nproc_per_node="$NGPU")
else
  launch=("$PYTHON")
fi

mkdir -p "$OUT"

# run_stage NAME COMMAND...: skip if DONE, else run with the log appended, stop on failure, mark DONE
run_stage() {
  local name=$1
  shift
  local dir="$OUT/$name" log="$OUT/$name.log"
  if [[ -f "$dir/DONE" ]]; then
    echo "[$name] already done ($dir/DONE); skipping"
    return 0
  fi
  mkdir -p "$dir"
  echo "[$name] $(date '+%F %T') started; log: $log"
  {
    echo "===== $(date '+%F %T') $name: $*"
  } >>"$log"
  local rc=0
  "$@" >>"$log" 2>&1 || rc=$?
  if [[ $rc -ne 0 ]]; then
    echo "[$name] FAILED with exit code $rc; see $log (run again to resume from $dir/last.pth)" >&2
    tail -n 20 "$log" >&2 || true
    exit "$rc"
  fi
  date '+%F %T' >"$dir/DONE"
  echo "[$name] $(date '+%F %T') done"
}

# ------------------------------------------------------------------------------------------- the detector
# seg NAME FLAGS...: one schedule of the shipped detector. Its model, crops, optimizer and steps are the trainer's
# defaults (EfficientNet-Lite0-FPN, class-agnostic, fixed scale 0.75, 512-px crops, AdamW, 200 steps x 2 crops an
# epoch, 10 % test split), and so is stage 1 (from ImageNet, lr 3e-4, 12 epochs); 2 and 3 go on from the one before
seg() {
  local name=$1
  shift
  run_stage "$name" "${launch[@]}" train_segmentation.py ${seg_data[@]+"${seg_data[@]}"} --workers 1 \
    --device "$device" --resume auto --no-progress --output-dir "$OUT/$name" "$@" \
    ${seg_smoke[@]+"${seg_smoke[@]}"} ${seg_extra[@]+"${seg_extra[@]}"}
}
seg seg_1_imagenet
seg seg_2 --pretrained "$OUT/seg_1_imagenet/best.pth" --trainable-layers 5 --norm frozen --lr 1e-4 --epochs 5
seg seg_3 --pretrained "$OUT/seg_2/best.pth" --trainable-layers 5 --norm frozen --lr 5e-5 --epochs 6 \
  --keep-checkpoints

# ------------------------------------------------------------------------------------------- the classifier
# cls NAME one|all FLAGS...: one run of the ensemble's chains on DATA_ROOT alone (one) or with TRAIN_ONLY (all);
# the model (ResNet-18 + all 43 features), batch and steps are the trainer's defaults, and so is run 1 (the
# ImageNet-style stem, AdamW 2e-3, 3 epochs of 200 steps); the caches are built by one process, also under torchrun
cls() {
  local name=$1 data=$2
  shift 2
  local d=() run=("${launch[@]}")
  if [[ "$data" == all ]]; then d=(${cls_data_all[@]+"${cls_data_all[@]}"}); else d=(${cls_data[@]+"${cls_data[@]}"}); fi
  [[ "$name" == cls_cache_* ]] && run=("$PYTHON")
  run_stage "$name" "${run[@]}" train_classification.py ${d[@]+"${d[@]}"} --cache-dir "$CACHE_DIR" --workers 0 \
    --device "$device" --resume auto --no-progress --output-dir "$OUT/$name" "$@" \
    ${cls_smoke[@]+"${cls_smoke[@]}"} ${cls_extra[@]+"${cls_extra[@]}"}
}
# the caches, built once before the training runs (and before torchrun's processes, which cannot build them)
cls cls_cache_straight all --prepare-only
cls cls_cache_axis all --stem imagenet16 --crop-mode axis --prepare-only
# the straight member: runs 1-3 on the one folder, then 4-6 with the train-only data as well
cls cls_run1 one
cls cls_run2 one --stem imagenet --pretrained "$OUT/cls_run1/best.pth" --lr 1e-3 --warmup-epochs 0.1 --seed 1
cls cls_run3 one --stem imagenet --pretrained "$OUT/cls_run2/best.pth" --epochs 2 --lr 7e-4 --warmup-epochs 0.1 \
  --seed 2
# run 4 went on from run 3's best as shipped then: exported to float16
run_stage cls_run3_fp16 "$PYTHON" -m models.export --cls "$OUT/cls_run3/best.pth" --out "$OUT/cls_run3_fp16"
cls cls_run4 all --stem imagenet --pretrained "$OUT/cls_run3_fp16/classifier.pt" --epochs 6 --lr 7e-4 \
  --warmup-epochs 0.1 --seed 3
cls cls_run5 all --stem imagenet --pretrained "$OUT/cls_run4/best.pth" --epochs 5 --lr 4e-4 --warmup-epochs 0.1 \
  --seed 4
cls cls_run6 all --stem imagenet --pretrained "$OUT/cls_run5/best.pth" --epochs 6 --lr 3e-4 --warmup-epochs 0.1 \
  --seed 5
# the axis member: run 7 (the finer stem) from run 6, then the axis crops from run 7
cls cls_run7 all --stem imagenet16 --pretrained "$OUT/cls_run6/best.pth" --epochs 4 \
  --steps-per-epoch 170 --lr 5e-4 --warmup-epochs 0.1 --seed 7
prev=cls_run7
for spec in "9 3 5e-4" "12 2 2.5e-4" "13 3 2e-4" "14 3 2e-4" "16 4 1.5e-4"; do
  read -r run epochs lr <<<"$spec"
  cls "cls_run$run" all --stem imagenet16 --crop-mode axis --pretrained "$OUT/$prev/best.pth" \
    --epochs "$epochs" --steps-per-epoch 170 --lr "$lr" --warmup-epochs 0.1 --seed "$run"
  prev=cls_run$run
done

# ------------------------------------------------------------------------------------------- the files
ship=$(printf 'epoch_%03d.pth' "$SEG_SHIP_EPOCH")
[[ -f "$OUT/seg_3/$ship" || -f "$OUT/export_seg/DONE" ]] || die "$OUT/seg_3/$ship is missing (SEG_SHIP_EPOCH=$SEG_SHIP_EPOCH)"
run_stage export_seg "$PYTHON" -m models.export --seg "$OUT/seg_3/$ship" --out "$OUT/weights"
run_stage export_cls "$PYTHON" -m models.export --cls "$OUT/cls_run6/best.pth" "$OUT/cls_run16/best.pth" \
  --out "$OUT/weights"

echo "all stages done: $OUT (the models: $OUT/weights/segmentation.pt, $OUT/weights/classifier.pt)"
