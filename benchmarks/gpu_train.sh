#!/usr/bin/env bash
# The detector recipe for about 9 minutes on one lent GPU (the device tool), its fp16 weights back under $OUT.
#
# The device tool copies the repository (~46 MB with weights/) but not ../shared, and at most 64 MiB go, so
# a small CIL subset and the one wheel that GPU image lacks (pycocotools) travel in .gpu/, ignored by git:
#
#   bash benchmarks/gpu_train.sh --pack      # here, once: .gpu/ = wheel + N_VAL val + N_TRAIN train images
#   device run: command="bash benchmarks/gpu_train.sh", carry=[".gpu"], timeout_s=600
#   CPU check of the same path: DEVICE=cpu TRAIN_S=120 STEPS=2 BATCH=1 WORKERS=0 bash benchmarks/gpu_train.sh
#
# The images are re-encoded as JPEG quality 80 to fit (a small loss of detail against the originals). The
# subset's val split is the first N_VAL of the README's CIL val split: splits order images by a seeded hash
# of their name, so with --val-fraction N_VAL/(N_VAL+N_TRAIN) the subset's val images are exactly those.
# The run starts from weights/segmentation.pt (--pretrained: the flags below must be the shipped model's),
# trains with --amp for TRAIN_S seconds in epochs of STEPS steps (each checkpointed and validated), then
# writes $OUT/segmentation_gpu.pt.part-00 and -01 (fp16, in two parts under the 16 MiB limit; `cat` them into
# segmentation_gpu.pt for `--pretrained` back on the CPU) and $OUT/train.log, and prints
# the trainer's s/step and val figures.
set -euo pipefail
cd "$(dirname "$0")/.."

PACK=.gpu
N_VAL=${N_VAL:-40}
N_TRAIN=${N_TRAIN:-200}
TRAIN_S=${TRAIN_S:-480}
STEPS=${STEPS:-100}
BATCH=${BATCH:-8}
WORKERS=${WORKERS:-12}
DEVICE=${DEVICE:-cuda}
# the shipped detector's model flags (weights/MODEL_CARD.md); --trainable-layers 5 and the default frozen
# BatchNorm of a --pretrained run are what its ImageNet start trained with
SEG_ARGS=(--backbone efficientnet_lite0_fpn --agnostic --box-head-dim 256 --mask-head-layers 128 128
  --roi-batch-size 128 --fixed-scale 0.75 --crop-size 512 --max-size 1333 --trainable-layers 5)

if [[ "${1:-}" == "--pack" ]]; then
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
  rm -rf "$PACK" && mkdir -p "$PACK/whl"
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$PACK/whl" pycocotools
  python - "$PACK/cil" "$N_VAL" "$N_TRAIN" <<'EOF'
import shutil, sys
from pathlib import Path

import cv2

from datasets.splits import assign_splits

out, n_val, n_train = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
src = Path("../shared/data/cil54816")
stems = sorted(p.stem for p in (src / "annotations").glob("*.xml"))
split = assign_splits(stems, val_fraction=0.1, seed=0)  # the README's val split
from datasets.splits import _key  # noqa: E402  the order the split is taken in

val = sorted((s for s in stems if split[s] == "val"), key=lambda s: _key(s, 0))[:n_val]
train = sorted(s for s in stems if split[s] == "train")[:n_train]
(out / "JEPG").mkdir(parents=True)
(out / "annotations").mkdir()
for s in val + train:
    img = cv2.imread(str(src / "JEPG" / f"{s}.jpg"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(out / "JEPG" / f"{s}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    shutil.copy(src / "annotations" / f"{s}.xml", out / "annotations")
print(f"packed {len(val)} val + {len(train)} train images")
EOF
  du -sh "$PACK"
  exit 0
fi

[[ -d "$PACK/cil" ]] || { echo "gpu_train.sh: no $PACK/ here: run 'bash benchmarks/gpu_train.sh --pack' and carry .gpu" >&2; exit 2; }
if ! python3 -c "import pycocotools" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$PACK"/whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu_out}
mkdir -p "$OUT"
[[ "$DEVICE" == cpu ]] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
amp=()
[[ "$DEVICE" == cpu ]] || amp=(--amp)
vf=$(python3 -c "print($N_VAL / ($N_VAL + $N_TRAIN))")
run=runs/gpu_seg
set +e
timeout "$TRAIN_S" python3 train_segmentation.py --dataset voc --data-root "$PACK/cil" --val-fraction "$vf" \
  "${SEG_ARGS[@]}" --pretrained weights/segmentation.pt --batch-size "$BATCH" --optimizer adamw --lr 1.5e-4 \
  --warmup-steps 10 --epochs 1000 --max-steps-per-epoch "$STEPS" --workers "$WORKERS" --device "$DEVICE" \
  ${amp[@]+"${amp[@]}"} --output-dir "$run" --resume auto --no-progress 2>&1 | tee "$OUT/train.log"
set -e
[[ -f "$run/best.pth" ]] || { echo "no checkpoint written (see $OUT/train.log)" >&2; exit 1; }
python3 -m models.export --seg "$run/best.pth" --out "$run/export"
# the device tool returns files of at most 16 MiB: the fp16 file (~18 MB) comes back in two parts;
# join them here with: cat segmentation_gpu.pt.part-* > segmentation_gpu.pt
split -b 15M -d "$run/export/segmentation.pt" "$OUT/segmentation_gpu.pt.part-"
md5sum "$run/export/segmentation.pt"
grep -E "val bbox_AP50|s/step" "$OUT/train.log" | tail -n 20
ls -la "$OUT"
