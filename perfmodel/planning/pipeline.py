"""The engine's two resources under asynchronous scheduling: the host and the GPU, one step apart.

vLLM (0.11 and later by default) schedules and launches step k + 1 while the GPU runs step k,
and hands step k's outputs (its tokens) to the clients only once it has launched step k + 1 and
the GPU has finished step k. With a step's GPU time G and the host's time H for it
(:meth:`perfmodel.planning.steptime.StepTimes.parts`), from a host free at h (it has just handed
over the outputs of step k − 1):

- the launch of step k + 1 ends at h + H;
- a step replayed from a CUDA graph starts on the GPU when it is launched and the GPU is free:
  E(k+1) = max(E(k), h + H) + G; a launched step's kernels run as the host launches them:
  E(k+1) = max(E(k) + G, h + H);
- step k's outputs are handed over at max(h + H, E(k)), which frees the host again.

So a step of many launches (a prompt beyond the largest CUDA graph, tens of ms on the host)
overlaps the GPU time of the step before it, whose outputs it holds back until its launch ends;
its own outputs follow soon after. A run of equal steps takes max(G, H) each, as a step alone.
Times in seconds.
"""

from __future__ import annotations

import numpy as np


def gpu_end(previous_end: float, launch_end: float, gpu: float, launched: bool) -> float:
    """When the GPU finishes a step (s): ``previous_end``, when it finished the step before (or
    when the launch began, if it was idle); ``launch_end``, when the host finished launching it;
    ``gpu``, its GPU time; ``launched``, whether its kernels run as they are launched."""
    if launched:
        return max(previous_end + gpu, launch_end)
    return max(previous_end, launch_end) + gpu


def handover_times(gpu, host, launched) -> np.ndarray:
    """When each step of a busy stretch hands its outputs over (s, from an idle engine whose
    host starts scheduling the first step at 0): the steps' GPU and host times and whether each
    is launched (:meth:`perfmodel.planning.steptime.StepTimes.parts`), one entry per step, each
    a number or an array (broadcast together: many streams at once). Step k is scheduled when
    the outputs of step k − 2 are handed over."""
    n = len(gpu)
    out: list = [None] * n
    h = end = 0.0
    for k in range(n):
        launch_end = h + host[k]
        new_end = np.where(launched[k], np.maximum(end + gpu[k], launch_end),  # end = h = 0 at k = 0
                           np.maximum(end, launch_end) + gpu[k])
        if k:
            out[k - 1] = np.maximum(launch_end, end)
            h = out[k - 1]
        else:
            h = launch_end
        end = new_end
    if n:
        out[n - 1] = np.maximum(end, h)
    return np.asarray(np.broadcast_arrays(*out)) if n else np.zeros(0)


def mixed_in_decodes(decode: tuple, mixed: tuple, then_mixed: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A step holding prompt tokens amid a stream of decode-only steps: (what it adds to the
    stream's time, from its scheduling to its outputs), s. ``decode`` and ``mixed`` are (GPU
    time, host time, launched) of each kind (numbers or arrays, broadcast together); with
    ``then_mixed`` a second such step follows it. The stream's decode step takes max(GPU, host)."""
    kinds = [decode] * 4 + [mixed] * (2 if then_mixed else 1) + [decode] * 3
    out = handover_times(*(list(col) for col in zip(*kinds)))
    step = np.maximum(decode[0], decode[1])
    last = len(kinds) - 2  # the last step whose successor was launched
    added = out[last] - out[2] - (last - 2 - (2 if then_mixed else 1)) * step
    return added, out[4] - out[2]
