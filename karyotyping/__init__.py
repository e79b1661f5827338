"""The karyotyping pipeline as a library: image array in, typed :class:`KaryotypePrediction` out.

* :mod:`karyotyping.core`: :class:`KaryotypePipeline` (``run(image) -> KaryotypePrediction``,
  ``process(path)``) and the prediction type;
* :mod:`karyotyping.detection`: the detection score thresholds' owner, detections -> record, the one
  detection-evaluation loop (sharded over torchrun ranks);
* :mod:`karyotyping.masks`: the mask post-processing after detection and :class:`MaskConfig`, the owner of its
  thresholds and switches (``KaryotypePipeline(..., masks=MaskConfig(...))``);
* :mod:`karyotyping.export`: adapters at the edge (JSON document and back, COCO results, karyogram and
  overlay pictures);
* :mod:`karyotyping.runtime`: the one ``--device`` resolver (``cuda:$LOCAL_RANK`` under torchrun).

Imports go one way: this package uses ``datasets``, ``features``, ``models``, ``karyogram`` and ``metrics``;
none of them imports it. The names below are imported lazily, so ``import karyotyping.runtime`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KaryotypePipeline", "KaryotypePrediction", "MaskConfig", "PipelineError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from karyotyping import core

        return getattr(core, name)
    raise AttributeError(f"module 'karyotyping' has no attribute {name!r}")
