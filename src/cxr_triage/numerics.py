"""Machine-independent numerics: the same code, lock file and seed give the same weights on
another x86-64 machine.

What changes the last bits of a CPU training run, and what this project does about each:

* **Thread count** (reductions split differently): fixed in ``params.yaml``
  (``num_threads`` of ``finetune`` and ``backbone.pretrain``; every scikit-learn fit runs on one
  BLAS/OpenMP thread, so ``transfer.n_jobs`` and the core count do not matter).
* **Instruction set** (AVX-512 and AVX2 kernels sum in different orders): the vectorised
  kernels of PyTorch (ATen), oneDNN (convolutions), MKL and OpenBLAS each pick the widest
  instruction set of the machine. :func:`pinned_environment` pins all four to AVX2, which every
  x86-64 server CPU since 2013 has, so a 2-core AVX2 laptop and a 64-core AVX-512 server run the
  same kernels. Measured on a tiny training run: native AVX-512 vs AVX2 kernels change the
  weights by up to 0.056 (Adam's normalised steps amplify rounding differences of near-zero
  gradients) and the predictions by up to 2.5e-4.
* **Random draws**: every epoch's shuffling, augmentation and dropout come from generators
  seeded by ``(seed, epoch)`` (:mod:`cxr_triage.models.finetune`); folds, subsamples and
  estimators from the run's ``seed``.
* **Algorithms**: ``torch.use_deterministic_algorithms`` and no cuDNN benchmarking during
  training.

Not pinnable: onnxruntime's MLAS kernels (the ``embed`` stage and every package) choose their
instruction set at run time and offer no switch; their float32 embeddings can differ in the last
bits between machines (see ``tests/integration/test_reproducibility.py`` for the bound that is
checked). GPUs are not covered: cuDNN/cuBLAS results depend on the GPU model.

The pins must be in the environment before the libraries load (OpenBLAS reads its core type
when numpy is imported), so :func:`run_pinned` re-executes a stage's process once with them;
set ``CXR_TRIAGE_CPU_ISA=native`` to keep each library's own choice (faster on AVX-512, not
reproducible across machines).
"""

from __future__ import annotations

import os
import sys

__all__ = ["ISA_ENV", "PINNED_ISA", "pinned_environment", "run_pinned"]

ISA_ENV = "CXR_TRIAGE_CPU_ISA"
# Each library's switch, set to its AVX2 level.
PINNED_ISA: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's own CPU kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions, matmul in torch)
    "MKL_CBWR": "AVX2",  # MKL conditional numerical reproducibility
    "OPENBLAS_CORETYPE": "Haswell",  # numpy/scipy BLAS (scikit-learn)
}


def pinned_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default ``os.environ``) with the AVX2 pins added where unset.

    Returns ``environ`` unchanged when ``CXR_TRIAGE_CPU_ISA=native``. Values already set by
    the user win.
    """
    env = dict(os.environ if environ is None else environ)
    if env.get(ISA_ENV, "avx2").lower() == "native":
        return env
    for key, value in PINNED_ISA.items():
        env.setdefault(key, value)
    return env


def run_pinned(module: str) -> None:
    """Re-execute ``python -m module`` with the pins unless they are already in place.

    Call first thing in a stage's ``main()``; returns (does nothing) when the pins are set or
    ``CXR_TRIAGE_CPU_ISA=native``.
    """
    env = pinned_environment()
    if all(os.environ.get(k) == env.get(k) for k in PINNED_ISA):
        return
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)
