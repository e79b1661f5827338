"""Per-chromosome features: centre line and straightening, centromere and polarity, banding, the triad.

See :mod:`features.triad` for the feature vector (geometry + centromere, scale, texture).
"""

from .centromere import CentromereEstimate, locate_centromere
from .geometry import centerline, line_length, straighten, width_profile
from .texture import band_stats, density_profile
from .triad import (
    FEATURE_GROUPS,
    FEATURE_NAMES,
    InstanceFeatures,
    feature_names,
    instance_features,
    oriented_crop,
    select_features,
    spread_features,
)

__all__ = [
    "FEATURE_GROUPS",
    "FEATURE_NAMES",
    "CentromereEstimate",
    "InstanceFeatures",
    "band_stats",
    "centerline",
    "density_profile",
    "feature_names",
    "instance_features",
    "line_length",
    "locate_centromere",
    "oriented_crop",
    "select_features",
    "spread_features",
    "straighten",
    "width_profile",
]
