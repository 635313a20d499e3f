"""Defects export: ROI ▶ binarise ▶ morphology ▶ regions, pixel thresholds with provenance.

Import from the submodules (kept free of package-level imports so ``schemas.defects`` can use
``defects.roi`` without a cycle):

- ``roi``: clamp a normalised ROI, ROI mask / box for a map shape, ROI stats.
- ``mask``: binarise a map into uint8 {0, 255}.
- ``morphology``: open / close, hole filling, small-component removal.
- ``regions``: connected components with bbox, area, centroid and scores.
- ``extract``: :func:`extract_defects`, the one chain the recipe and inference call.
- ``pixel_threshold``: resolve the pixel threshold with provenance.
- ``io``: save / load masks (PNG or NPY, atomic).
- ``evaluate``: pixel precision / recall / F1 and region-level figures.
"""
