"""Bounds on what a user or a rows file may give, shared by the planner, the measuring rows'
schema and the validation (no dependency: the GPU side imports it too)."""

#: The longest length a row, a planning question or a request may give, tokens (batch, input,
#: output; a lengths file's row; a percentile): beyond any model's context.
MAX_LEN = 10_000_000
