"""Every shim that makes ``image-reward`` 1.5 work on current transformers/timm, in one place.

image-reward 1.5 (2023) was written for transformers 4.2x. On transformers 4.57 and 5.x it fails
to import and to build; ``tests/scoring/test_imagereward_compat.py`` pins the upstream sources by
hash, so an upstream release fails that test loudly instead of drifting silently. What is shimmed,
in the order it breaks:

1. The package ``__init__`` imports ``ReFL`` (a training script: ``datasets``, ``accelerate``,
   ``diffusers``) and the optional CLIP/BLIP/Aesthetic baselines (OpenAI ``clip``, not on PyPI in
   a working form). Scoring needs none of them, so ``ImageReward`` and ``ImageReward.models`` are
   registered as bare packages (their ``__init__`` is skipped) and only ``ImageReward.ImageReward``
   and ``models.BLIP`` are imported. No third-party name is stubbed in ``sys.modules``.
2. ``med.py`` imports ``apply_chunking_to_forward``, ``find_pruneable_heads_and_indices`` and
   ``prune_linear_layer`` from ``transformers.modeling_utils``; they moved to
   ``transformers.pytorch_utils`` and the second no longer exists. Re-exported (reimplemented).
3. transformers 5 ``PreTrainedModel`` lost ``invert_attention_mask`` and ``get_head_mask``, which
   ``med.BertModel.forward`` calls: restored on ``med.BertModel`` with the 4.x behaviour.
4. transformers 5 needs ``post_init()`` (``all_tied_weights_keys``) where med's models call
   ``init_weights()``: routed to ``post_init`` with a re-entrancy guard.
5. ``blip.init_tokenizer`` hard-codes ``BertTokenizer.from_pretrained('bert-base-uncased')`` (a hub
   id) and reads ``additional_special_tokens_ids`` (gone in transformers 5): replaced, while
   building, by one that reads a local folder and refuses an empty tokenizer (transformers 5
   silently returns a specials-only tokenizer when the hub is unreachable).
6. ``ImageReward.__init__`` hard-codes BLIP ``vit='large'``: while building, ``create_vit`` builds
   the ViT that the checkpoint describes (identical to upstream for the released ViT-L/16).
7. Import-time side effects of upstream (``warnings.filterwarnings("ignore")`` in ``blip.py``,
   ``transformers.logging.set_verbosity_error()`` in ``blip_pretrain.py``) are undone.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace

from diffagent.errors import DiffAgentError, MissingDependency, UserInputError
from diffagent.scoring._torchvision import ensure_torchvision

EXPECTED_VERSION = "1.5"
#: sha256 of the upstream files these shims and the builder rely on (image-reward 1.5 wheel)
EXPECTED_SOURCES = {
    "ImageReward.py": "cc18e826ec1bc1464f691cdf7f603d1ff3f882b511e2f5fee549dd5ad4d7cf57",
    "models/BLIP/__init__.py": "76f3cef66b586b6baea6e28f25e5735940c87e40fcabffc393266675642cccb3",
    "models/BLIP/blip.py": "154f9a74f06ec40c5b8206745e0fb8d8d49aea453d48ede015e906c6145f0303",
    "models/BLIP/blip_pretrain.py": "27b96a3734f5b93b936d507ad0629c867149e45051609e9a40fbb22dd7b0bff1",
    "models/BLIP/med.py": "770ef2e7f40851a2bac25196a5e1985bafc04d5e754898f634aee79ac60a0396",
    "models/BLIP/vit.py": "126a00b7de46a474b61b1cde11042e169cb857b9157a9fe7dbbc1fe66b2052b0",
}
#: the released model: BLIP ViT-L/16 at 224 px (``vit='large'`` in upstream ``create_vit``)
RELEASED_VIT = (1024, 24, 16, 16)  # width, depth, heads, patch
IMAGE_SIZE = 224  # hard-coded by ImageReward (``_transform(224)``, ``BLIP_Pretrain(image_size=224)``)
TEXT_MAX_LENGTH = 35  # ImageReward.score / inference_rank
MLP_WIDTH = 768  # ImageReward.__init__: MLP(768), so the BERT hidden size must be 768

INSTALL_HINT = "pip install --no-deps 'image-reward==1.5' 'fairscale==0.4.13'"


class ImageRewardMissing(MissingDependency):
    """image-reward cannot be an ordinary dependency: it pins timm==0.6.13, open_clip_torch needs timm>=1.0.17."""

    def __init__(self, package: str = "image-reward"):
        DiffAgentError.__init__(
            self,
            f"{package} is not installed; ImageReward scoring needs it: {INSTALL_HINT} "
            "(--no-deps: its declared timm==0.6.13 pin conflicts with open_clip_torch), "
            "or give image_reward weight 0",
        )


_lock = threading.Lock()
_modules: SimpleNamespace | None = None


@dataclass(frozen=True)
class VitSpec:
    width: int
    depth: int
    heads: int
    patch: int

    @property
    def is_released(self) -> bool:
        return (self.width, self.depth, self.heads, self.patch) == RELEASED_VIT


def package_dir() -> Path:
    spec = importlib.util.find_spec("ImageReward")
    if spec is None or not spec.submodule_search_locations:
        raise ImageRewardMissing()
    return Path(list(spec.submodule_search_locations)[0])


def upstream_problems() -> list[str]:
    """Differences between the installed image-reward and the one these shims were written for."""
    problems = []
    try:
        version = importlib.metadata.version("image-reward")
    except importlib.metadata.PackageNotFoundError:
        return ["image-reward is not installed"]
    if version != EXPECTED_VERSION:
        problems.append(f"image-reward {version} installed, shims written for {EXPECTED_VERSION}")
    root = package_dir()
    for rel, digest in EXPECTED_SOURCES.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            problems.append(f"{rel} changed upstream (sha256 differs); re-check the shims")
    return problems


def _bare_package(name: str) -> ModuleType:
    """Register package ``name`` without running its ``__init__`` (see point 1 above)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImageRewardMissing()
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


def _patch_transformers() -> None:
    import torch
    import transformers.modeling_utils as mu
    import transformers.pytorch_utils as pu

    for name in ("apply_chunking_to_forward", "prune_linear_layer"):
        if not hasattr(mu, name):
            setattr(mu, name, getattr(pu, name))
    if not hasattr(mu, "find_pruneable_heads_and_indices"):

        def find_pruneable_heads_and_indices(heads, n_heads, head_size, already_pruned_heads):
            # transformers 4.x implementation (removed in 5); only used by head pruning
            mask = torch.ones(n_heads, head_size)
            heads = set(heads) - already_pruned_heads
            for head in heads:
                head -= sum(1 if h < head else 0 for h in already_pruned_heads)
                mask[head] = 0
            mask = mask.view(-1).contiguous().eq(1)
            return heads, torch.arange(len(mask))[mask].long()

        mu.find_pruneable_heads_and_indices = find_pruneable_heads_and_indices


def _patch_med(med: ModuleType) -> None:
    import torch
    from transformers import PreTrainedModel

    if not hasattr(med.BertModel, "invert_attention_mask"):

        def invert_attention_mask(self, mask):
            ext = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
            ext = ext.to(dtype=self.dtype)
            return (1.0 - ext) * torch.finfo(self.dtype).min

        med.BertModel.invert_attention_mask = invert_attention_mask
    if not hasattr(med.BertModel, "get_head_mask"):

        def get_head_mask(self, head_mask, num_hidden_layers, is_attention_chunked=False):
            if head_mask is not None:
                raise NotImplementedError("head masks are not supported by the ImageReward shim")
            return [None] * num_hidden_layers

        med.BertModel.get_head_mask = get_head_mask
    if hasattr(PreTrainedModel, "post_init") and not getattr(med.BertPreTrainedModel, "_diffagent_init", False):

        def init_weights(self):
            if self.__dict__.get("_diffagent_in_post_init"):
                return PreTrainedModel.init_weights(self)
            self.__dict__["_diffagent_in_post_init"] = True
            try:
                self.post_init()
            finally:
                self.__dict__["_diffagent_in_post_init"] = False

        med.BertPreTrainedModel.init_weights = init_weights
        med.BertPreTrainedModel._diffagent_init = True


def modules() -> SimpleNamespace:
    """The upstream modules ImageReward scoring needs, imported once with the shims applied."""
    global _modules
    with _lock:
        if _modules is not None:
            return _modules
        ensure_torchvision()
        try:
            import fairscale  # noqa: F401  (vit.py imports its checkpoint_wrapper)
        except ImportError as e:
            raise ImageRewardMissing("fairscale") from e
        import transformers

        _patch_transformers()
        verbosity = transformers.logging.get_verbosity()
        with warnings.catch_warnings():  # also undoes blip.py's global filterwarnings("ignore")
            warnings.simplefilter("ignore", FutureWarning)  # timm's deprecated module paths
            _bare_package("ImageReward")
            _bare_package("ImageReward.models")
            reward = importlib.import_module("ImageReward.ImageReward")
            blip_pretrain = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
            med = importlib.import_module("ImageReward.models.BLIP.med")
            vit = importlib.import_module("ImageReward.models.BLIP.vit")
        transformers.logging.set_verbosity(verbosity)
        _patch_med(med)
        _modules = SimpleNamespace(reward=reward, blip_pretrain=blip_pretrain, med=med, vit=vit)
        return _modules


def load_tokenizer(folder: Path, min_tokens: int = 30):
    """BLIP's tokenizer (BERT + [DEC] bos + [ENC]) from a local folder holding ``vocab.txt``."""
    from transformers import BertTokenizer

    if not (Path(folder) / "vocab.txt").is_file():
        raise UserInputError(
            f"no vocab.txt in {str(folder)!r}; ImageReward needs the bert-base-uncased tokenizer "
            "(hf:google-bert/bert-base-uncased)"
        )
    tok = BertTokenizer.from_pretrained(str(folder))
    if len(tok) < min_tokens:
        raise UserInputError(f"the BERT tokenizer in {str(folder)!r} has only {len(tok)} tokens; vocab.txt is broken")
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    tok.enc_token_id = tok.convert_tokens_to_ids("[ENC]")
    return tok


def vit_spec(state_dict: dict, heads: int | None = None) -> VitSpec:
    """The BLIP ViT a checkpoint was trained with, read from its tensor shapes."""
    prefix = "blip.visual_encoder."
    try:
        proj = state_dict[prefix + "patch_embed.proj.weight"]  # [width, 3, patch, patch]
        pos = state_dict[prefix + "pos_embed"]  # [1, 1 + (224 / patch)^2, width]
    except KeyError as e:
        raise UserInputError(f"not an ImageReward checkpoint: it has no {e.args[0]!r}") from None
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    depth = len({k.split(".")[3] for k in state_dict if k.startswith(prefix + "blocks.")})
    if pos.shape[1] != 1 + (IMAGE_SIZE // patch) ** 2:
        raise UserInputError(f"ImageReward checkpoint has {pos.shape[1]} positions; expected a {IMAGE_SIZE}px ViT")
    heads = heads or max(1, width // 64)
    if width % heads:
        raise UserInputError(f"ViT width {width} is not divisible by {heads} heads; set imagereward_vit_heads")
    return VitSpec(width=width, depth=depth, heads=heads, patch=patch)


def build(med_config: Path, tokenizer, vit: VitSpec):
    """An ``ImageReward.ImageReward`` with random weights, for the given ViT and text config."""
    m = modules()
    bp = m.blip_pretrain

    def create_vit(name, image_size, use_grad_checkpointing=False, ckpt_layer=0, drop_path_rate=0):
        if vit.is_released:
            return original_create_vit(name, image_size, use_grad_checkpointing, ckpt_layer, drop_path_rate)
        encoder = m.vit.VisionTransformer(
            img_size=image_size, patch_size=vit.patch, embed_dim=vit.width, depth=vit.depth, num_heads=vit.heads
        )
        return encoder, vit.width

    with _lock:  # the swap below is process-global for the duration of the constructor
        original_create_vit, original_init_tokenizer = bp.create_vit, bp.init_tokenizer
        bp.create_vit, bp.init_tokenizer = create_vit, lambda: tokenizer
        try:
            return m.reward.ImageReward(med_config=str(med_config), device="cpu")
        finally:
            bp.create_vit, bp.init_tokenizer = original_create_vit, original_init_tokenizer
