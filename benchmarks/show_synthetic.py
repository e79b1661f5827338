"""Draw a synthetic spread beside a real CIL:54816 metaphase, plus the synthetic masks, for a visual check.

    python benchmarks/show_synthetic.py --out docs/synthetic_vs_real.png

The real image is read where it lies (``../shared/data/cil54816/JEPG/103071.jpg`` by default; CIL:54816,
CC BY 4.0, Tseng et al., Scientific Data 10:104, 2023); without it the panel says so.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datasets.io import atomic_save_figure, read_image  # noqa: E402
from datasets.synthetic import generate_spread  # noqa: E402
from karyogram.labels import name_of  # noqa: E402

DEFAULT_REAL = ROOT.parent / "shared" / "data" / "cil54816" / "JEPG" / "103071.jpg"


def colour_masks(masks: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB float [H, W, 3]: each mask [N, H, W] in its own colour; pixels of several masks are averaged."""
    n, h, w = masks.shape
    cols = np.random.default_rng(seed).uniform(0.2, 1.0, (n, 3)).astype(np.float32)
    m = masks.reshape(n, -1).astype(np.float32)
    count = m.sum(0)
    rgb = (m.T @ cols) / np.maximum(count, 1)[:, None]
    rgb[count == 0] = 1.0
    return rgb.reshape(h, w, 3)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Synthetic vs real metaphase picture.")
    p.add_argument("--out", default=str(ROOT / "docs" / "synthetic_vs_real.png"), help="output PNG")
    p.add_argument("--real", default=str(DEFAULT_REAL), help="a real CIL:54816 image")
    p.add_argument("--seed", type=int, default=3, help="synthetic spread seed")
    p.add_argument("--karyotype", default="46,XY", help="ISCN karyotype of the synthetic spread")
    p.add_argument("--size", type=int, default=700, help="synthetic image size, px")
    return p


def main(args: argparse.Namespace) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = generate_spread(np.random.default_rng(args.seed), None, args.karyotype, size=(args.size, args.size))
    fig, ax = plt.subplots(1, 3, figsize=(18, 6.4))
    ax[0].imshow(rec.image, cmap="gray", vmin=0, vmax=1)
    ax[0].set_title(f"synthetic {rec.meta['karyotype']} (seed {args.seed}, {rec.width}x{rec.height} px)")
    real = Path(args.real)
    if real.exists():
        ax[1].imshow(read_image(real), cmap="gray", vmin=0, vmax=1)
        ax[1].set_title(f"real CIL:54816 {real.name} (CC BY 4.0, Tseng et al. 2023)")
    else:
        ax[1].text(0.5, 0.5, f"real image not found:\n{real}", ha="center", va="center")
        ax[1].set_title("real (absent)")
    ax[2].imshow(colour_masks(rec.masks, args.seed))
    c, d = rec.centromeres, rec.p_dir
    ax[2].plot(c[:, 0], c[:, 1], "k.", ms=3)
    ax[2].quiver(c[:, 0], c[:, 1], d[:, 0], -d[:, 1], color="k", scale=40, width=0.002)
    for i in range(len(rec)):
        x1, y1, x2, y2 = rec.boxes[i]
        ax[2].text(x2, y1, name_of(int(rec.labels[i])), fontsize=6)
    ax[2].set_title("synthetic masks, centromeres (dots) and p_dir (arrows), labels")
    for a in ax:
        a.set_axis_off()
    fig.tight_layout()
    out = Path(args.out)
    atomic_save_figure(fig, out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main(get_args_parser().parse_args())
