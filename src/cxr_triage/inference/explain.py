"""Explanations of the packaged model's calibrated probability: where in the image it looked.

**Which method** (:func:`choose_method`, the rule):

- **Grad-CAM** (MONAI ``GradCAM``; Selvaraju et al., ICCV 2017) when the package's torch network
  ends in a differentiable head: a fine-tuned winner (the network's own logit), or logistic
  regression on frozen features (its standardisation and coefficients as one linear layer on
  the backbone). The calibrator is monotone, so the gradient of the logit explains the
  calibrated probability's direction. The map is the last activation layer's Grad-CAM.
- **Occlusion sensitivity** (MONAI ``OcclusionSensitivity``; Zeiler and Fergus, ECCV 2014) for
  every other winner (RBF SVM, random forest, gradient boosting, k-NN, MLP on embeddings, the
  Platt-scaled linear SVM, whose probability is an average of sigmoids over CV folds) and for
  packages whose backbone is ONNX only: each patch of the image is greyed out in turn (a
  Gaussian-weighted occlusion, patch side ``explain.occlusion_mask`` of the image, overlap
  ``explain.occlusion_overlap``), the whole package (network, classifier, calibrator) scores
  all occluded copies in batches, and the map is how much the calibrated probability *drops*
  when each pixel is hidden (negative drops are clipped to 0).

Either way the map explains :meth:`Predictor.score`'s calibrated probability of the same
prepared image (the one scoring path). It is computed on the model's square input
(``prepare_image``: padded to a square, area-resized) and mapped back to the input image's own
size (:meth:`Explanation.at_input_size`): resized to the padded square, then cropped.
:func:`overlay_png` draws it over the image as a colour PNG.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_triage.data.preprocess import to_model_input
from cxr_triage.errors import ConfigError
from cxr_triage.inference.layout import TORCH_NETWORK_FILE
from cxr_triage.inference.predictor import Predictor, PreparedImage

__all__ = [
    "METHODS",
    "ExplainedImage",
    "Explanation",
    "Explainer",
    "TorchNetwork",
    "choose_method",
    "explain_source",
    "heatmap_png",
    "load_torch_network",
    "map_to_input",
    "overlay_png",
]

log = logging.getLogger(__name__)

METHODS = ("gradcam", "occlusion")
_ACTIVATIONS = ("ReLU", "SiLU", "Swish", "MemoryEfficientSwish")
_OCCLUSION_BATCH = 64


# -- the rule --------------------------------------------------------------------------------


def choose_method(info: dict[str, Any], requested: str = "auto") -> tuple[str, str]:
    """The explanation method for a package, and why (see the module docstring).

    Args:
        info: the package's ``package.json``.
        requested: ``auto`` (the rule), ``gradcam`` or ``occlusion``.

    Raises:
        ConfigError: Grad-CAM requested for a package that has no differentiable head.
    """
    torch_info = info.get("torch_network") or {}
    head = torch_info.get("head")
    differentiable = head in ("finetuned", "linear")
    if requested == "occlusion":
        return "occlusion", "occlusion sensitivity requested (explain.method)"
    if requested == "gradcam" and not differentiable:
        raise ConfigError(
            f"Grad-CAM needs a network with a differentiable head; the {info.get('candidate')} "
            "package has none (explain.method: auto or occlusion)"
        )
    if differentiable:
        what = "the fine-tuned network's logit" if head == "finetuned" else "a linear head"
        return "gradcam", f"Grad-CAM through {what} ({info.get('candidate')})"
    why = (
        "its backbone is ONNX only"
        if not torch_info
        else f"{info.get('candidate')} is not differentiable"
    )
    return "occlusion", f"occlusion sensitivity through the whole package: {why}"


# -- the torch network of a package ----------------------------------------------------------


@dataclass
class TorchNetwork:
    """A package's network in torch: ``outputs`` gives what ``network.onnx`` gives (embedding,
    and the logit for a fine-tuned one); ``logit`` (None without a differentiable head) maps
    normalised images ``(B, 1, S, S)`` to one logit ``(B, 1)``; ``target_layer`` is the name,
    inside ``logit``, of the layer Grad-CAM reads."""

    outputs: Any
    logit: Any
    target_layer: str
    layer_names: tuple[str, ...]  # parameterised layers of the backbone, input to output


def _last_activation(module: Any, prefix: str) -> str:
    names = [n for n, m in module.named_modules() if type(m).__name__ in _ACTIVATIONS]
    if not names:
        raise ConfigError("the network has no activation layer for Grad-CAM")
    return f"{prefix}{names[-1]}"


def _linear_head(estimator: Any) -> tuple[np.ndarray, float] | None:
    """``(w, b)`` with ``logit = z @ w + b`` for a StandardScaler + LogisticRegression pipeline."""
    steps = getattr(estimator, "named_steps", {})
    scaler, model = steps.get("scale"), steps.get("model")
    if len(steps) != 2 or type(model).__name__ != "LogisticRegression" or scaler is None:
        return None
    coef = np.asarray(model.coef_[0], dtype=np.float64)
    w = coef / scaler.scale_
    b = float(model.intercept_[0] - np.dot(coef, scaler.mean_ / scaler.scale_))
    return w, b


def load_torch_network(package_dir: Path, info: dict[str, Any], classifier: Any) -> TorchNetwork:
    """The package's torch network (``network.safetensors``), for Grad-CAM and sanity checks.

    Args:
        package_dir: the package folder.
        info: its ``package.json``.
        classifier: the transfer winner's fitted candidate (None for a fine-tuned package).

    Raises:
        ConfigError: the package has no torch network (ONNX-only backbone).
    """
    import torch
    from safetensors.torch import load_file
    from torch import nn

    from cxr_triage.models.networks import Classifier, build_backbone

    torch_info = info.get("torch_network")
    if not torch_info:
        raise ConfigError("this package has no torch network (its backbone is ONNX only)")
    state = load_file(str(Path(package_dir) / TORCH_NETWORK_FILE))
    backbone = build_backbone(torch_info["arch"])
    if torch_info["head"] == "finetuned":
        model = Classifier(backbone, 1)
        model.load_state_dict(state)
        model.eval()

        class Outputs(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                features = self.model.backbone(x)
                return torch.cat([features, self.model.head(features)], dim=1)

        layers = _weighted_layers(model.backbone, "backbone.")
        return TorchNetwork(
            Outputs().eval(),
            model,
            _last_activation(model.backbone, "backbone."),
            (*layers, "head"),
        )
    backbone.load_state_dict(state)
    backbone.eval()
    logit = None
    head = _linear_head(getattr(classifier, "estimator", None)) if classifier else None
    if torch_info["head"] == "linear" and head is not None:
        w, b = head
        linear = nn.Linear(len(w), 1)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
            linear.bias.fill_(b)
        logit = nn.Sequential()
        logit.add_module("backbone", backbone)
        logit.add_module("head", linear)
        logit.eval()
    layers = _weighted_layers(backbone, "backbone.") + (("head",) if logit is not None else ())
    return TorchNetwork(backbone, logit, _last_activation(backbone, "backbone."), layers)


def _weighted_layers(module: Any, prefix: str) -> tuple[str, ...]:
    """Names of the convolution and linear layers, input to output."""
    return tuple(
        f"{prefix}{n}"
        for n, m in module.named_modules()
        if type(m).__name__ in ("Conv2d", "Linear") and n
    )


def randomised(network: TorchNetwork, n_top_layers: int, seed: int) -> TorchNetwork:
    """A copy with the top ``n_top_layers`` weighted layers re-initialised (cascading model
    randomisation, Adebayo et al. 2018): the head first, then down the backbone."""
    import torch

    new = copy.deepcopy(network)
    module = new.logit if new.logit is not None else new.outputs
    generator = torch.Generator().manual_seed(seed)
    chosen = set(network.layer_names[::-1][:n_top_layers])
    for name, layer in module.named_modules():
        if name in chosen or (new.logit is None and f"backbone.{name}" in chosen):
            with torch.no_grad():
                for param in layer.parameters(recurse=False):
                    # The weights' own spread (a one-element bias: its magnitude), never NaN.
                    spread = (
                        float(param.std(unbiased=False))
                        if param.numel() > 1
                        else float(param.abs().max())
                    )
                    scale = spread if spread > 0 else 1.0
                    param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return new


# -- geometry and drawing --------------------------------------------------------------------


def map_to_input(saliency: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """A map on the model's square input, at the input image's ``(rows, cols)``.

    ``prepare_image`` pads the image to a centred square of side ``max(rows, cols)`` and
    area-resizes it; this resizes the map to that square (bilinear) and crops the padding.
    """
    from PIL import Image

    side = max(rows, cols)
    square = np.asarray(
        Image.fromarray(np.ascontiguousarray(saliency, dtype=np.float32), mode="F").resize(
            (side, side), Image.Resampling.BILINEAR
        )
    )
    top, left = (side - rows) // 2, (side - cols) // 2
    return np.ascontiguousarray(square[top : top + rows, left : left + cols])


def _colour_lut() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps["inferno"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def overlay_png(
    image: np.ndarray, saliency: np.ndarray, *, opacity: float = 0.5, max_side: int | None = None
) -> bytes:
    """The map over the image as a colour PNG.

    Args:
        image: grey image, float in [0, 1] (or ``uint8``), ``(H, W)``.
        saliency: map in [0, 1] of the same shape.
        opacity: opacity of the colour where the map is 1 (it fades to 0 with the map).
        max_side: downscale so the longer side is at most this (None: full size).
    """
    from PIL import Image

    grey = np.asarray(image)
    if grey.dtype != np.uint8:
        grey = np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)
    heat = np.clip(np.asarray(saliency, dtype=np.float32), 0, 1)
    if max_side is not None and max(grey.shape) > max_side:
        scale = max_side / max(grey.shape)
        size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
        grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.BOX))
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR))
    colour = _colour_lut()[np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8)]
    alpha = (opacity * heat)[..., None]
    blended = grey[..., None] * (1 - alpha) + colour * alpha
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8)).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def heatmap_png(saliency: np.ndarray, *, max_side: int | None = None) -> bytes:
    """The map alone as an RGBA PNG: the colour scale, transparent where the map is 0 (for a
    page to lay over the image with its own opacity)."""
    from PIL import Image

    heat = np.clip(np.asarray(saliency, dtype=np.float32), 0, 1)
    if max_side is not None and max(heat.shape) > max_side:
        scale = max_side / max(heat.shape)
        size = (max(1, round(heat.shape[1] * scale)), max(1, round(heat.shape[0] * scale)))
        heat = np.asarray(Image.fromarray(heat, mode="F").resize(size, Image.Resampling.BILINEAR))
    level = np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8)
    rgba = np.concatenate([_colour_lut()[level], level[..., None]], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# -- explanations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Explanation:
    """A map of what drove one image's calibrated probability.

    Attributes:
        method: ``gradcam`` or ``occlusion``.
        saliency: ``(S, S)`` float32 in [0, 1] on the model's square input (1: most evidence
            for *abnormal*).
        prob_abnormal: the calibrated probability it explains (:meth:`Predictor.score`).
        scale: for occlusion, the largest drop of the probability when a patch is hidden (what
            1 on the map means, in probability); for Grad-CAM, None (maps are normalised).
        rows, cols: the input image's size.
    """

    method: str
    saliency: np.ndarray
    prob_abnormal: float
    scale: float | None
    rows: int
    cols: int

    def at_input_size(self) -> np.ndarray:
        """The map at the input image's ``(rows, cols)``."""
        return map_to_input(self.saliency, self.rows, self.cols)


ScoreFn = Callable[[np.ndarray], np.ndarray]


def _scale_to_max(maps: Any) -> Any:
    """Grad-CAM maps ``(B, 1, S, S)`` (non-negative after Grad-CAM's ReLU) scaled so that each
    image's maximum is 1; an all-zero map stays 0 (no evidence for *abnormal* anywhere)."""
    peak = maps.flatten(1).amax(dim=1).clamp_min(1e-12)
    return maps / peak[:, None, None, None]


class Explainer:
    """Explanations for a :class:`Predictor`'s package.

    Args:
        predictor: the package's predictor (its scoring path is what occlusion explains).
        method: ``auto`` (the rule), ``gradcam`` or ``occlusion``; default: the package's
            ``explain.method``.
        occlusion_mask: patch side as a fraction of the image side; default: the package's.
        occlusion_overlap: overlap of neighbouring patches; default: the package's.

    Raises:
        ConfigError: Grad-CAM requested where the package has no differentiable head.
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        method: str | None = None,
        occlusion_mask: float | None = None,
        occlusion_overlap: float | None = None,
    ) -> None:
        settings = predictor.info.get("explain", {})
        self.predictor = predictor
        self.method, self.reason = choose_method(
            predictor.info, method or settings.get("method", "auto")
        )
        self.occlusion_mask = float(occlusion_mask or settings.get("occlusion_mask", 0.25))
        self.occlusion_overlap = float(
            settings.get("occlusion_overlap", 0.5)
            if occlusion_overlap is None
            else occlusion_overlap
        )
        self._network: TorchNetwork | None = None
        self._gradcam: Any = None

    @property
    def network(self) -> TorchNetwork:
        """The package's torch network (loaded on first use)."""
        if self._network is None:
            self._network = load_torch_network(
                self.predictor.package_dir, self.predictor.info, self.predictor.classifier
            )
        return self._network

    def explain(self, prepared: PreparedImage) -> Explanation:
        """The explanation of one prepared image (decode with :meth:`Predictor.prepare`)."""
        images = prepared.pixels[None]
        prob = float(self.predictor.score(images).prob_abnormal[0])
        saliency, scale = self.saliency(images, prob=np.array([prob]))
        rows = int(prepared.metadata.get("orig_rows") or prepared.pixels.shape[0])
        cols = int(prepared.metadata.get("orig_cols") or prepared.pixels.shape[1])
        return Explanation(self.method, saliency[0], prob, scale[0], rows, cols)

    def saliency(
        self,
        images: np.ndarray,
        *,
        prob: np.ndarray | None = None,
        network: TorchNetwork | None = None,
    ) -> tuple[np.ndarray, list[float | None]]:
        """Maps ``(N, S, S)`` in [0, 1] of prepared ``uint8`` images, and their scales.

        Args:
            images: ``uint8 (N, S, S)``.
            prob: their calibrated probabilities, when known (occlusion's reference).
            network: another torch network to explain with the same method (the sanity test's
                randomised copies); default: the package's own (ONNX for occlusion).
        """
        images = np.asarray(images, dtype=np.uint8)
        if self.method == "gradcam":
            return self._gradcam_maps(images, network), [None] * len(images)
        score = self.predictor.score_model_input if network is None else self._torch_score(network)
        maps, scales = [], []
        for i, image in enumerate(images):
            reference = None if prob is None else float(prob[i])
            saliency, scale = self._occlusion_map(image, score, reference)
            maps.append(saliency)
            scales.append(scale)
        return np.stack(maps), scales

    def _torch_score(self, network: TorchNetwork) -> ScoreFn:
        import torch

        def score(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                outputs = network.outputs(torch.from_numpy(np.ascontiguousarray(x))).numpy()
            return self.predictor.probabilities(outputs)

        return score

    def _gradcam_maps(self, images: np.ndarray, network: TorchNetwork | None) -> np.ndarray:
        import torch
        from monai.visualize import GradCAM

        own = network is None
        net = self.network if own else network
        if own and self._gradcam is not None:
            cam = self._gradcam
        else:
            # MONAI's default postprocessing maps (min, max) to (1, 0): it *flips* the map
            # (documented on monai.visualize.class_activation_maps.default_normalizer), so
            # the hottest region would come out coldest. Scale by the maximum instead.
            cam = GradCAM(
                nn_module=net.logit, target_layers=net.target_layer, postprocessing=_scale_to_max
            )
            if own:
                self._gradcam = cam
        x = torch.from_numpy(to_model_input(images))
        with torch.enable_grad():
            maps = cam(x, class_idx=0).detach().numpy()[:, 0]
        return np.nan_to_num(maps.astype(np.float32), nan=0.0)

    def _occlusion_map(
        self, image: np.ndarray, score: ScoreFn, reference: float | None
    ) -> tuple[np.ndarray, float]:
        import torch
        from monai.visualize import OcclusionSensitivity

        side = image.shape[0]
        mask = max(2, int(round(self.occlusion_mask * side)))
        x = to_model_input(image[None])
        base = float(score(x)[0]) if reference is None else reference

        def module(batch: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(score(batch.numpy()).astype(np.float32)[:, None])

        occlusion = OcclusionSensitivity(
            nn_module=module,
            mask_size=mask,
            n_batch=_OCCLUSION_BATCH,
            verbose=False,
            overlap=self.occlusion_overlap,
            activate=False,
        )
        with torch.inference_mode(), warnings.catch_warnings():
            # MONAI 1.6 indexes tensors with lists (a torch deprecation notice per window).
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
            occluded, _ = occlusion(torch.from_numpy(x))
        # (1, 1, S, S), with a trailing class axis when the module has several outputs.
        probability = np.asarray(occluded)[0, 0]
        if probability.ndim == 3:
            probability = probability[..., 0]
        drop = base - probability
        drop = np.clip(drop, 0.0, None).astype(np.float32)
        scale = float(drop.max())
        return (drop / scale if scale > 0 else drop), scale


# -- one file, end to end ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainedImage:
    """One file's prediction with its explanation, and the full-resolution image it is drawn on.

    Attributes:
        prediction: what :meth:`Predictor.predictions` gives for the file (the same
            probability, label and quality-gate verdict as ``/predict``).
        explanation: the map on the model's input and the probability it explains.
        image: the decoded image, float32 in [0, 1] (MONOCHROME2), ``(rows, cols)``.
    """

    prediction: Any
    explanation: Explanation
    image: np.ndarray

    def saliency(self) -> np.ndarray:
        """The map at the input image's size, float32 in [0, 1]."""
        return self.explanation.at_input_size()

    def overlay_png(self, *, opacity: float = 0.5, max_side: int | None = None) -> bytes:
        """The map over the image as a colour PNG (:func:`overlay_png`)."""
        return overlay_png(self.image, self.saliency(), opacity=opacity, max_side=max_side)

    def heatmap_png(self, *, max_side: int | None = None) -> bytes:
        """The map alone as an RGBA PNG, transparent where it is 0 (:func:`heatmap_png`)."""
        return heatmap_png(self.saliency(), max_side=max_side)

    def image_png(self, *, max_side: int | None = None) -> bytes:
        """The image alone as a grey PNG (the same size as :meth:`heatmap_png`'s)."""
        return overlay_png(self.image, np.zeros_like(self.image), opacity=0.0, max_side=max_side)


def explain_source(
    explainer: Explainer,
    source: str | Path | bytes,
    metadata: dict[str, Any] | None = None,
    *,
    enforce_qc: bool = True,
) -> ExplainedImage:
    """Decode, gate, score and explain one file: what ``/explain`` and ``cxr-triage explain``
    answer.

    Args:
        explainer: the package's explainer.
        source: a DICOM/PNG/JPEG file or its bytes.
        metadata: caller metadata (:data:`~cxr_triage.inference.predictor.CALLER_METADATA`).
        enforce_qc: raise the quality gate's refusal (as ``/predict`` does).

    Raises:
        InvalidImageError: the reader or (``QcFailedError``) the quality gate refuses the file.
    """
    predictor = explainer.predictor
    prepared = predictor.prepare(source, metadata, enforce_qc=enforce_qc, keep_decoded=True)
    scores = predictor.score(prepared.pixels[None])
    (prediction,) = predictor.predictions([prepared], scores)
    saliency, scale = explainer.saliency(prepared.pixels[None], prob=scores.prob_abnormal)
    rows, cols = prepared.decoded.shape  # type: ignore[union-attr]
    explanation = Explanation(
        explainer.method, saliency[0], prediction.prob_abnormal, scale[0], int(rows), int(cols)
    )
    return ExplainedImage(prediction, explanation, prepared.decoded)  # type: ignore[arg-type]
