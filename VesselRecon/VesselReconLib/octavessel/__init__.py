"""OCTAVessel: a small en face OCTA vessel segmenter trained on phantoms only.

The transfer test of the OCTA phantom engine (:mod:`VesselReconLib.phantoms.octa`): a network that
never sees a real pixel in training, evaluated on real scans with expert labels (ROSSA) against the
classical baselines (``vesselrecon eval octavessel --rossa ../shared/datasets/rossa``).
"""
