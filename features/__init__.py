"""Per-chromosome features: centre line and straightening, centromere and polarity, banding, the triad, the crops.

See :mod:`features.triad` for the feature vector (geometry + centromere, scale, texture) and
:mod:`features.crops` for every crop of a chromosome (:func:`make_crops`).
"""

from .centromere import CentromereEstimate, locate_centromere
from .crops import Crops, CropSpec, make_crops
from .geometry import centerline, line_length, straighten, width_profile
from .texture import band_stats, density_profile
from .triad import (
    FEATURE_GROUPS,
    FEATURE_NAMES,
    InstanceFeatures,
    feature_names,
    instance_features,
    select_features,
    spread_features,
)

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "CentromereEstimate",
    "CropSpec",
    "Crops",
    "InstanceFeatures",
    "band_stats",
    "centerline",
    "density_profile",
    "feature_names",
    "instance_features",
    "line_length",
    "locate_centromere",
    "make_crops",
    "select_features",
    "spread_features",
    "straighten",
    "width_profile",
]
