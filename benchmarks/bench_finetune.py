"""Fine-tuning throughput (images/s) of small_cnn and densenet121 at 128 px on the CPU.

Two figures per architecture:

- step: the training step alone, on stored ``uint8`` images already in memory: augmentation
  (:func:`~cxr_triage.models.augment.augment_batch`), forward, weighted BCE, backward, AdamW
  step, as :func:`~cxr_triage.models.finetune.train_classifier` does it;
- epoch: one real ``train_classifier`` epoch (the same steps plus its val pass and two atomic
  checkpoint writes), training images per second of the epoch's wall time.

Each step figure is the best of ``--repeat`` passes over the images after a warm-up pass.

    python benchmarks/bench_finetune.py                      # 2 threads, as on the demo machine
    python benchmarks/bench_finetune.py --threads 1 --n-small 128 --n-densenet 32
    python benchmarks/bench_finetune.py --device cuda --size 224 --repeat-runs 2  # the GPU path

On a GPU the step figure moves the augmented batch to the device as ``train_classifier`` does
(augmentation stays on the CPU), the epoch figure runs ``train_classifier`` itself with mixed
precision (bf16 where the GPU has it), and ``--repeat-runs 2`` trains each network twice with
the same seed and prints whether the weights came out bit-identical.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name

from cxr_triage.models.augment import augment_batch
from cxr_triage.models.finetune import FinetuneOptions, train_classifier
from cxr_triage.models.networks import Classifier, build_backbone


def step_rate(
    model: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    batch: int,
    repeat: int,
    device: torch.device,
) -> float:
    """Images/s of augmentation + forward + loss + backward + optimiser step."""
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.from_numpy(images)
    targets = torch.from_numpy(labels.astype(np.float32))[:, None].to(device)
    model.train()

    def one_pass() -> None:
        for start in range(0, len(images), batch):
            x = augment_batch(pixels[start : start + batch], generator).to(device)
            loss = F.binary_cross_entropy_with_logits(model(x), targets[start : start + batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    one_pass()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        one_pass()
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def epoch_rate(
    arch: str, images: np.ndarray, labels: np.ndarray, options: FinetuneOptions, device: str
) -> tuple[float, str]:
    """Training images/s of one ``train_classifier`` epoch, wall time including val and saves,
    and a digest of the trained weights."""
    torch.manual_seed(0)
    model = Classifier(build_backbone(arch), 1)
    n_val = max(len(images) // 4, 2)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-finetune-") as tmp:
        result = train_classifier(
            model,
            images,
            labels,
            images[:n_val],
            labels[:n_val],
            options=replace(options, epochs=1),
            checkpoint_dir=tmp,
            device=device,
        )
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return len(images) / result.history[0]["seconds"], digest.hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--n-small", type=int, default=128, help="images for small_cnn")
    parser.add_argument("--n-densenet", type=int, default=32, help="images for densenet121")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument(
        "--repeat-runs", type=int, default=1, help="train each network this often (same seed)"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    device = torch.device(args.device)
    options = FinetuneOptions(
        batch_size=args.batch_size,
        num_threads=args.threads,
        seed=0,
        mixed_precision=device.type == "cuda",
    )
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    print(f"{args.size} px, batch {args.batch_size}, {args.threads} threads, {device} ({gpu})")
    print(f"{'arch':12s} {'images':>6s} {'step img/s':>11s} {'epoch img/s':>12s}  weights")
    for arch, n in (("small_cnn", args.n_small), ("densenet121", args.n_densenet)):
        images = rng.integers(0, 256, (n, args.size, args.size), dtype=np.uint8)
        labels = (np.arange(n) % 2).astype(np.int64)
        torch.manual_seed(0)
        model = Classifier(build_backbone(arch), 1)
        step = step_rate(model, images, labels, args.batch_size, args.repeat, device)
        runs = [
            epoch_rate(arch, images, labels, options, args.device) for _ in range(args.repeat_runs)
        ]
        same = (
            ""
            if len(runs) == 1
            else ("  identical" if len({d for _, d in runs}) == 1 else "  DIFFER between runs")
        )
        print(f"{arch:12s} {n:6d} {step:11.1f} {runs[-1][0]:12.1f}  {runs[-1][1]}{same}")


if __name__ == "__main__":
    main()
