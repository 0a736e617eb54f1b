"""The measuring layer: what calibration and validation both stand on.

It runs real inference and records it; it imports the model (``perfmodel``'s core) but neither
:mod:`perfmodel.calibration` nor :mod:`perfmodel.validate`, which import it. The GPU machine has
no altair, so nothing here imports it.

Modules:

- :mod:`perfmodel.measuring.env` - the environment of a run (GPU, driver, library versions, commit).
- :mod:`perfmodel.measuring.timing` - CUDA-event and CUDA-graph timing (Triton's do_bench_cudagraph
  where it fits), CUDA-graph capture of one step.
- :mod:`perfmodel.measuring.preflight` - refusals before anything runs (no GPU, no torch, bad budget).
- :mod:`perfmodel.measuring.hf_build` - transformers models from a config, random weights.

- :mod:`perfmodel.measuring.points` - the points of a sweep and their ids.
- :mod:`perfmodel.measuring.results` - the JSONL result schema, atomic appends, resume.
- :mod:`perfmodel.measuring.runner` - the backend-agnostic sweep driver (resume, OOM rows, time budget).
- :mod:`perfmodel.measuring.hf_runner` - the ``hf`` backend: transformers modeling code, StaticCache,
  CUDA-graph replay of decode steps, torch.profiler kernel split; its timed passes in
  :mod:`perfmodel.measuring.hf_steps`, its routing recorder in :mod:`perfmodel.measuring.hf_routing`,
  its time estimate (the roofline's) in :mod:`perfmodel.measuring.hf_estimate`.
- :mod:`perfmodel.measuring.vllm_backend` - the ``vllm`` backend (offline engine); its routing
  probe in :mod:`perfmodel.measuring.vllm_routing`, its data-parallel replicas in
  :mod:`perfmodel.measuring.vllm_replicas`, serving under Poisson arrivals (async engine) in
  :mod:`perfmodel.measuring.vllm_serving`.
- :mod:`perfmodel.measuring.profiler_split` - the kernel time of a step, split by op category.
- :mod:`perfmodel.measuring.fake_backend` - a backend without a GPU, for the driver's tests.
- :mod:`perfmodel.measuring.compare` - committed measurements beside the model's predictions.
- :mod:`perfmodel.measuring.cli` / :mod:`perfmodel.measuring.measure` - the ``measure`` command.
"""
