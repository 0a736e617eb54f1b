"""Calibration: microbenchmarks of the kernels an engine uses, and the fits of engine profiles.

Stands on :mod:`perfmodel.measuring` (timing, environment, model builders, committed
measurements) and the model; never imported by the model nor by :mod:`perfmodel.validate`.
Measured tables live in ``calibration/data/<gpu>/``, fitted profiles in ``calibration/profiles/``.
The GPU machine has no altair, so these modules do not import it.

- :mod:`perfmodel.calibration.bench` (``perfmodel calibrate bench``) and its ``bench_*`` stages.
- :mod:`perfmodel.calibration.bench_shapes` - the benchmark's shapes, and each benchmarked call as
  the model's ops.
- :mod:`perfmodel.calibration.fit_kernels` - efficiency curves from the tables: the tables read as
  rows of model ops (:mod:`~perfmodel.calibration.fit_tables`), fitted through the model's
  roofline (:mod:`~perfmodel.calibration.fit_curves`).
- :mod:`perfmodel.calibration.fit` (``perfmodel calibrate fit``) - the engine profile.
- :mod:`perfmodel.calibration.bench_collectives` (``perfmodel calibrate collectives``) - collectives
  between the GPUs of one host; :mod:`~perfmodel.calibration.fit_collectives` fits the link
  efficiency and per-step latency from its table.
"""
