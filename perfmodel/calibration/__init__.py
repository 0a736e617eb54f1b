"""Measuring kernels on a GPU (microbenchmarks, :mod:`perfmodel.calibration.bench`) for the calibration fits.

Measured tables live in ``calibration/data/<gpu>/``. Nothing here is imported by the ``perfmodel``
formulas; the GPU machine has no pydantic or altair, so these modules do not import them.
"""
