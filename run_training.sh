#!/usr/bin/env bash
# The training recipe: segmentation (Mask R-CNN), then the chromosome classifier.
#
#   nohup ./run_training.sh &                                  # CPU, CIL:54816, defaults below
#   NGPU=4 OUT=runs/cil_4gpu nohup ./run_training.sh &         # 4 GPUs with torchrun
#   EPOCHS_SEG=2 EPOCHS_CLS=2 EXTRA_SEG_ARGS="--min-size 512 --max-size 768" ./run_training.sh
#
# Each stage writes into $OUT/<stage>/ and logs to $OUT/<stage>.log (appended, never wiped).
# Started again, a finished stage (marker $OUT/<stage>/DONE) is skipped and an unfinished one
# resumes from its last.pth (--resume auto). A failing stage stops the recipe with its exit code.
#
# Variables (environment):
#   DATA_ROOT       dataset folder                 (default ../shared/data/cil54816)
#   DATASET         loader name for DATA_ROOT      (default voc)
#   OUT             run folder                     (default runs/cil)
#   NGPU            0 = CPU, 1 = one GPU, >1 = torchrun with NGPU processes (default 0)
#   EPOCHS_SEG      segmentation epochs            (default 26)
#   EPOCHS_CLS      classification epochs          (default 30)
#   BACKBONE        segmentation backbone          (default resnet50_fpn)
#   TRAIN_ONLY      "NAME ROOT" of a dataset used whole for training, none held out (default: voc
#                   ../shared/data/cil54816_extra when DATA_ROOT is the default and that folder exists;
#                   "none" = no such dataset)
#   AGNOSTIC        1 = class-agnostic detector (the pipeline's design: identity comes from the
#                   classifier and the karyotype assignment); 0 = 24-class Mask R-CNN (default 1)
#   EXTRA_SEG_ARGS  extra flags for train_segmentation.py   (e.g. "--amp --batch-size 4")
#   EXTRA_CLS_ARGS  extra flags for train_classification.py (e.g. "--amp")
#   PYTHON          python interpreter             (default python)
set -euo pipefail
cd "$(dirname "$0")"

DATA_ROOT=${DATA_ROOT:-../shared/data/cil54816}
DATASET=${DATASET:-voc}
OUT=${OUT:-runs/cil}
NGPU=${NGPU:-0}
EPOCHS_SEG=${EPOCHS_SEG:-26}
EPOCHS_CLS=${EPOCHS_CLS:-30}
BACKBONE=${BACKBONE:-resnet50_fpn}
AGNOSTIC=${AGNOSTIC:-1}
if [[ -z "${TRAIN_ONLY:-}" && "$DATA_ROOT" == ../shared/data/cil54816 && -d ../shared/data/cil54816_extra ]]; then
  TRAIN_ONLY="voc ../shared/data/cil54816_extra"
fi
TRAIN_ONLY=${TRAIN_ONLY:-none}
EXTRA_SEG_ARGS=${EXTRA_SEG_ARGS:-}
EXTRA_CLS_ARGS=${EXTRA_CLS_ARGS:-}
PYTHON=${PYTHON:-python}

die() { echo "run_training.sh: $*" >&2; exit 2; }
[[ "$NGPU" =~ ^[0-9]+$ ]] || die "NGPU must be a whole number, got '$NGPU'"
[[ "$EPOCHS_SEG" =~ ^[0-9]+$ && "$EPOCHS_CLS" =~ ^[0-9]+$ ]] || die "EPOCHS_SEG/EPOCHS_CLS must be whole numbers"
[[ -e "$DATA_ROOT" ]] || die "DATA_ROOT '$DATA_ROOT' does not exist (set DATA_ROOT=/path/to/data)"

read -r -a seg_extra <<<"$EXTRA_SEG_ARGS"
[[ "$AGNOSTIC" == 1 ]] && seg_extra=(--agnostic ${seg_extra[@]+"${seg_extra[@]}"})
read -r -a cls_extra <<<"$EXTRA_CLS_ARGS"
if [[ "$TRAIN_ONLY" != none ]]; then
  read -r -a train_only <<<"$TRAIN_ONLY"
  [[ ${#train_only[@]} -eq 2 ]] || die "TRAIN_ONLY must be 'NAME ROOT', got '$TRAIN_ONLY'"
  [[ -e "${train_only[1]}" ]] || die "TRAIN_ONLY root '${train_only[1]}' does not exist"
  seg_extra=(--train-only-data "${train_only[@]}" ${seg_extra[@]+"${seg_extra[@]}"})
  cls_extra=(--train-only-data "${train_only[@]}" ${cls_extra[@]+"${cls_extra[@]}"})
fi

if [[ "$NGPU" -eq 0 ]]; then
  device=cpu
else
  device=cuda
fi
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

run_stage segmentation "${launch[@]}" train_segmentation.py \
  --dataset "$DATASET" --data-root "$DATA_ROOT" --backbone "$BACKBONE" \
  --epochs "$EPOCHS_SEG" --device "$device" --output-dir "$OUT/segmentation" \
  --resume auto --no-progress ${seg_extra[@]+"${seg_extra[@]}"}

cls_args=(--dataset "$DATASET" --data-root "$DATA_ROOT" --features all
  --epochs "$EPOCHS_CLS" --device "$device" --output-dir "$OUT/classification"
  --resume auto --no-progress ${cls_extra[@]+"${cls_extra[@]}"})
if [[ "$NGPU" -gt 1 && ! -f "$OUT/classification/DONE" ]]; then
  # the per-instance caches are built once, before the torchrun processes start
  run_stage classification_cache "$PYTHON" train_classification.py "${cls_args[@]}" --prepare-only
fi
run_stage classification "${launch[@]}" train_classification.py "${cls_args[@]}"

echo "all stages done: $OUT"
