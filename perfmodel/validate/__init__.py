"""Validation: how far the model is from measured inference, on points it was not fitted on.

Stands on :mod:`perfmodel.measuring` (measurements, live runs) and the model; never imported by
the model nor by :mod:`perfmodel.calibration`.

- :mod:`perfmodel.validate.validation` - live or replayed comparison, MAPE per split and metric.
- :mod:`perfmodel.validate.report` - the HTML and markdown reports.
- :mod:`perfmodel.validate.terminal` / :mod:`perfmodel.validate.cli` - the ``validate`` command.
"""
