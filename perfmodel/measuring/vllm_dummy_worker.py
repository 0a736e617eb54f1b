"""A vLLM worker extension that gives a checkpoint-quantized model real dummy weights in the
process that loads it.

The serving engine (vLLM's ``AsyncLLM``) runs its engine core, and with it the worker that loads
the model, in a process of its own, where the patch of :mod:`perfmodel.measuring.vllm_dummy`
made in the measuring process does not reach. vLLM imports a worker extension class
(``worker_extension_cls``, named by its qualified name) in the worker's process when it builds the
worker, before the model is loaded: importing this module there patches that process's dummy
loader, and the extension's method (:data:`perfmodel.measuring.vllm_dummy.FILLED_METHOD`), called through
``collective_rpc``, says how many quantized
tensors the loader filled (zero means the weights were timed as vLLM left them: refuse the run).
"""

from __future__ import annotations

from perfmodel.measuring.vllm_dummy import filled_tensors, patch_dummy_loader

patch_dummy_loader()  # in the worker's process, on vLLM's import of the extension


class DummyFillExtension:
    """Mixed into vLLM's worker class by ``worker_extension_cls``
    (:data:`perfmodel.measuring.vllm_dummy.FILL_EXTENSION`)."""

    def perfmodel_dummy_filled(self) -> int:
        """Quantized tensors the patched dummy loader filled in this worker's process."""
        return filled_tensors()
