"""Image and pixel metrics (scikit-learn based) and the range of each figure a category report holds."""
from __future__ import annotations

from pyimgano_hydra.defects.evaluate import FIGURES as DEFECT_FIGURES

SHARE, AT_LEAST_0, ANY = (0.0, 1.0), (0.0, None), (None, None)
# every figure under a category report.json's ``metrics`` (null where it is undefined): (low, high), None open
METRIC_RANGES: dict[str, tuple] = {
    "n_normal": AT_LEAST_0, "n_anomalous": AT_LEAST_0,
    **{name: SHARE for name in ("image_auroc", "image_ap", "image_f1_max", "image_f1", "image_accuracy",
                                "image_fpr", "image_tpr", "pixel_auroc", "pixel_aupro")},
    "image_f1_max_threshold": ANY,  # a score
    **{f"defects_{name}": AT_LEAST_0 if name == "false_regions_per_normal_image" else SHARE
       for name in DEFECT_FIGURES},
}
