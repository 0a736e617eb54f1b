"""Validation: how far the model is from measured inference, on points it was not fitted on.

Stands on :mod:`perfmodel.measuring` (measurements, live runs) and the model; never imported by
the model nor by :mod:`perfmodel.calibration`.

- :mod:`perfmodel.validate.validation` - live or replayed comparison, MAPE per split and metric.
- :mod:`perfmodel.validate.report_pages` - the HTML and markdown reports, from the jinja2 templates
  in ``templates/``; :mod:`perfmodel.validate.report_metrics` (MAPE, verdict, worst points) and
  :mod:`perfmodel.validate.report_charts` (altair charts, the Vega JavaScript) feed them.
- :mod:`perfmodel.validate.terminal` / :mod:`perfmodel.validate.cli` - the ``validate`` command.
"""
