"""``perfmodel report paper``: the model against a published study's headline effects.

- :mod:`~perfmodel.validate.paper.effects` - the study's claims as data (``specs/studies/``).
- :mod:`~perfmodel.validate.paper.compute` - each effect predicted in the paper's setup.
- :mod:`~perfmodel.validate.paper.measured` - the same comparisons in our vLLM measurements.
- :mod:`~perfmodel.validate.paper.verdict` - reproduced, size off, sign wrong, not expressible.
- :mod:`~perfmodel.validate.paper.report` / :mod:`~perfmodel.validate.paper.charts` - report.html
  and report.md; :mod:`~perfmodel.validate.paper.terminal` - the table; ``cli`` - the command.
"""
