"""The scorer half shared by CLIP score and HPS v2: both are an open_clip model and a cosine.

They differ only in where the weights come from (CLIP also accepts an open_clip pretrained tag),
in what the weights are called in error messages, and in how the cosine is reported; the
subclasses in ``clip`` and ``hps`` say just that.
"""

from __future__ import annotations

from PIL import Image

from diffagent.scoring import cache, openclip_models, weights
from diffagent.scoring.base import ModelScorer
from diffagent.scoring.config import resolve_device


class OpenClipScorer(ModelScorer):
    """An open_clip model (name or model-config JSON ``model``) with weights ``weights_ref``; scores are cosines."""

    #: names the weights in "not found" errors; ``{name}`` is the open_clip model name
    weights_what: str
    #: whether ``weights_ref`` may be an open_clip pretrained tag ('openai'); else it must be a file
    accepts_tags: bool = False

    def __init__(self, model: str, **options):
        super().__init__(**options)
        self.model_spec = model

    @property
    def weights_ref(self) -> str:
        """A pretrained tag (when ``accepts_tags``), a local file or an hf: file."""
        raise NotImplementedError

    def loaded(self) -> openclip_models.OpenClipModel:
        """The model, loaded on first use and shared by every scorer with the same weights."""
        device = resolve_device(self.device)
        name = openclip_models.model_name(self.model_spec)
        ref = self.weights_ref
        if self.accepts_tags and not weights.is_hub_ref(ref) and ref in openclip_models.pretrained_tags(name):
            key = ("open_clip", name, "tag", ref, device)
            return cache.load_once(
                key, lambda: openclip_models.load(self.model_spec, pretrained_tag=ref, device=device)
            )
        path = weights.resolve(
            ref,
            what=self.weights_what.format(name=name),
            allow_downloads=self.allow_downloads,
            cache_dir=self.hub_cache_dir,
        ).resolve()
        key = ("open_clip", name, "file", str(path), device)
        return cache.load_once(
            key,
            lambda: openclip_models.load(
                self.model_spec, checkpoint=path, device=device, trust_pickles=self.trust_pickles
            ),
        )

    def score(self, prompt: str, images: list[Image.Image]) -> list[float]:
        """cos(image, prompt) per image; a subclass may rescale it."""
        return openclip_models.cosines(
            self.loaded(), prompt, images, batch_size=self.batch_size, half=self.half_precision
        )
