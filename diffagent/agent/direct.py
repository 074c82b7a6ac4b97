"""The paper's design: the LLM writes the checkpoint's name from the request alone, with no candidate
list in the prompt, constrained to a token trie of every checkpoint the registry allows — so, as in
the listed design, a name that is not in the registry cannot be produced.

Its knowledge of which model suits which request must come from fine-tuning; it is measured beside
the listed design (``DIFFAGENT_LLM_DESIGN=direct``) and is cheaper per request (no candidate lines to
evaluate), at the cost of not seeing models added after training.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffagent.agent.llm import LlamaBackend
from diffagent.agent.prompt import quote_untrusted

DIRECT_INSTRUCTIONS = (
    "You are DiffAgent. For an image request, write the name of the Stable Diffusion checkpoint that fits it best.\n\n"
)


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    version_id: int | None = None  # set on the node reached by the end token


class NameTrie:
    """Token trie over ``" {name}\\n"`` for each allowed checkpoint version."""

    def __init__(self, backend: LlamaBackend, names: dict[int, str]):
        self.root = _Node()
        self.size = 0
        for vid, name in names.items():
            node = self.root
            for tok in backend.tokenize(" " + quote_untrusted(name, 48).strip('"') + "\n"):
                node = node.children.setdefault(tok, _Node())
            if node.version_id is None:  # two versions with one display name: the first (most popular) wins
                node.version_id = vid
                self.size += 1


def direct_prompt(request: str) -> str:
    return f"{DIRECT_INSTRUCTIONS}### Request\n{quote_untrusted(request, 160)}\n### Answer\nCheckpoint:"


def decode_name(backend: LlamaBackend, trie: NameTrie, prompt_tokens: list[int]) -> tuple[int, float]:
    """Greedy decoding inside the trie; returns (version id, sum of masked log-probabilities)."""
    node, seq, logprob = trie.root, [], 0.0
    while node.children:
        allowed = list(node.children)
        if len(allowed) == 1:  # a forced token: no need to ask the model
            tok = allowed[0]
        else:
            x = backend.logits(prompt_tokens + seq)[np.asarray(allowed)]
            x = x - x.max()
            lp = x - np.log(np.exp(x).sum())
            k = int(np.argmax(lp))
            tok, logprob = allowed[k], logprob + float(lp[k])
        seq.append(tok)
        node = node.children[tok]
    return node.version_id, logprob
