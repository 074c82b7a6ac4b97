"""The arguments of diffagent's tools, defined once.

``tools.py`` (the typed tool functions), the MCP server and the LangChain adapter all take their argument types
from here, so a bound or a choice cannot drift between them. ``SelectOptions`` lives beside the selector that
reads it (``agent/selector.py``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from diffagent.apicall import MAX_ID, MAX_SEED

Base = Literal["any", "sd15", "sdxl", "flux", "sd3"]
ModelType = Literal["checkpoint", "lora", "locon", "embedding", "vae"]
#: most hits ``search_models`` returns at once
SEARCH_LIMIT_MAX = 50
#: longest request and style hint a caller may send
PROMPT_MAX_CHARS = 2000
STYLE_MAX_CHARS = 200

Prompt = Annotated[str, Field(min_length=1, max_length=PROMPT_MAX_CHARS, description="what the picture should show")]
Query = Annotated[str, Field(max_length=500, description="words to match, e.g. 'anime lineart'")]
SearchLimit = Annotated[int, Field(ge=1, le=SEARCH_LIMIT_MAX, description="most hits to return")]
MinDownloads = Annotated[int, Field(ge=0, description="only models downloaded at least this often")]
VersionId = Annotated[int, Field(ge=0, le=MAX_ID, description="id from search_models")]
BestOf = Annotated[
    int,
    Field(ge=1, le=8, description="render n candidates (alternative checkpoints, other seeds), keep the best-scored"),
]


class SelectOptions(BaseModel):
    """Options of ``select_t2i_api``. NSFW policy is a setting, deliberately not an option here. Unknown keys are
    refused (a misspelt ``max_lora`` must not be ignored silently)."""

    model_config = ConfigDict(extra="forbid")

    base: Base = Field(
        "any",
        description="restrict to a base family: sd15, sdxl, flux (FLUX.1), sd3 (SD 3.5) or any "
        "(FLUX.1 / SD 3.5 only where the server allows large models)",
    )
    max_loras: int = Field(2, ge=0, le=5, description="most LoRAs to add")
    style: str | None = Field(None, max_length=STYLE_MAX_CHARS, description="style hint, e.g. 'anime', 'photo'")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="image seed; random when omitted")
    n_candidates: int = Field(3, ge=1, le=8, description="ranked alternatives to return")
    local_only: bool | None = Field(
        None,
        description="choose only models whose weights are on this machine "
        "(found by `diffagent registry scan`); default: the server's setting",
    )
    strategy: Literal["rank", "beam", "sample"] = Field(
        "rank", description="rank: exact LLM ranking; beam: diverse beam search; sample: multinomial sampling"
    )
    temperature: float = Field(0.8, gt=0, le=2.0, description="sampling temperature (strategy=sample)")
