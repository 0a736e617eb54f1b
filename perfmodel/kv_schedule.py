"""vLLM's scheduler on a fixed batch whose KV cache outgrows the GPU: which sequences run when.

vLLM does not hold a sequence's whole S + O tokens of cache from the start: it admits a prompt
when the blocks for the tokens it holds now fit, so a batch's prompts go in together as long as
their S tokens each fit. Every decode step then adds a token to each running sequence; when the
next step's tokens no longer fit, the newest running sequence is preempted (its cache freed, its
request put back at the head of the queue, keeping its generated tokens) until they do. A
preempted request is admitted again once running ones finish, its S + g tokens prefilled anew
(vLLM's recompute preemption), and it samples its next token in that prefill.

:func:`schedule` plays this for B identical requests (prompt S, output O) on a cache of C tokens
with at most N sequences at once: how many decode steps ran at each count of running sequences,
how many tokens were prefilled (first admissions and recomputes) and how many preemptions there
were. It works in tokens (vLLM's 16-token blocks are left out) and re-admits waiting requests
only when a running one has finished (vLLM re-admits none in between: in the engine's request
timelines each preempted request ran again only after the first ones finished). Measured
against vLLM 0.26 on one H100 (OLMoE-1B-7B at B = 128, Qwen1.5-MoE-A2.7B, Qwen3-30B-A3B and
Mixtral-8x7B in fp8 at B = 64, S = O = 2,048): 16, 7, 32 and 18 preemptions per run, which
this plays on the cache the engine allocated (15, 7, 31 and 18 on the cache the model computes).

The times come from the step times of the calibrated model (:mod:`perfmodel.waves`).
"""

from __future__ import annotations

import bisect
import functools
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """What the scheduler ran for a batch: ``steps_by_running`` pairs (running sequences, decode
    steps run at that count), ascending in the count; ``prefill_tokens``, tokens prefilled over
    the run (each prompt once, plus each recompute's S + g); ``preemptions``; ``max_running``,
    the most sequences that ran at once."""

    steps_by_running: tuple[tuple[int, int], ...]
    prefill_tokens: int
    preemptions: int
    max_running: int

    @property
    def decode_steps(self) -> int:
        """Decode steps of the whole run."""
        return sum(steps for _, steps in self.steps_by_running)

    def knot_weights(self, knots: tuple[int, ...]) -> tuple[float, ...]:
        """Decode steps apportioned to ``knots`` (ascending, distinct running counts) so that
        Σ_k weight_k · t(knot_k) is the run's decode time when a step's time t(n) is linear
        between knots (flat beyond the first and the last)."""
        weights = [0.0] * len(knots)
        for n, steps in self.steps_by_running:
            j = bisect.bisect_left(knots, n)
            if j == len(knots):
                weights[-1] += steps
            elif j == 0 or knots[j] == n:
                weights[j] += steps
            else:
                lo, hi = knots[j - 1], knots[j]
                share = (n - lo) / (hi - lo)
                weights[j - 1] += steps * (1 - share)
                weights[j] += steps * share
        return tuple(weights)


@functools.lru_cache(maxsize=65536)
def schedule(batch: int, prompt: int, output: int, capacity: int, max_sequences: int) -> Schedule:
    """vLLM's scheduler on ``batch`` requests of ``prompt`` tokens each generating ``output``
    tokens, on a KV cache of ``capacity`` tokens with at most ``max_sequences`` running (see
    the module). Needs capacity ≥ prompt + output (one whole sequence fits): ValueError else.

    Requests admitted together are one cohort (the same tokens held, the same steps left), so
    the play moves from event to event (a cohort finishing, the cache filling) with a few
    additions each, whatever the batch."""
    if min(batch, prompt, output, max_sequences) < 1 or capacity < prompt + output:
        raise ValueError(f"no schedule: B={batch}, S={prompt}, O={output}, C={capacity}, N={max_sequences}")
    # waiting: [count, tokens held, decode steps left, recomputed]; running cohorts:
    # [count, tokens held at admission, step count at admission, step count at its end]
    waiting: deque[list] = deque([[batch, prompt, output - 1, False]])
    cohorts: list[list[int]] = []  # in admission order; emptied ones removed at once
    clock = running = offset = 0  # offset: Σ count·(held − since); tokens held = offset + running·clock
    steps: dict[int, int] = {}
    prefilled = preemptions = most = 0
    admit = True
    while waiting or running:
        if admit:  # the queue's head first, while its tokens fit
            while waiting and running < max_sequences:
                count, held, left, recompute = waiting[0]
                fit = min(count, (capacity - offset - running * clock) // held, max_sequences - running)
                if fit < 1:
                    break
                if fit == count:
                    waiting.popleft()
                else:
                    waiting[0][0] -= fit
                left = max(left - 1, 0) if recompute else left  # the recompute samples the next token
                cohorts.append([fit, held, clock, clock + left])
                prefilled += fit * held
                running += fit
                offset += fit * (held - clock)
            most = max(most, running)
        admit = False
        finishing = min(c[3] for c in cohorts) - clock
        room = (capacity - offset - running * clock) // running
        advance = min(finishing, room)
        if advance > 0:
            clock += advance
            steps[running] = steps.get(running, 0) + advance
        done = [c for c in cohorts if c[3] <= clock]
        if done:  # those done leave, and the queue may move
            for c in done:
                running -= c[0]
                offset -= c[0] * (c[1] - c[2])
            cohorts = [c for c in cohorts if c[3] > clock]
            admit = True
            continue
        while running and offset + running * clock + running > capacity:  # the next step must fit
            count, held0, since, end = last = cohorts[-1]
            held = held0 + clock - since
            excess = offset + running * clock + running - capacity
            k = min(count, -(-excess // (held + 1)))  # each leaves its tokens and its next one
            last[0] -= k
            if not last[0]:
                cohorts.pop()
            running -= k
            offset -= k * (held0 - since)
            waiting.appendleft([k, held, end - clock, True])
            preemptions += k
        if not running:
            admit = True
    return Schedule(tuple(sorted(steps.items())), prefilled, preemptions, most)
