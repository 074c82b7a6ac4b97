"""``bench fit``: does the selected call fit a natural request? (the standard in ``docs/fit.md``)

Agreement with creators (``bench select``) asks whether we picked what one creator used for a Civitai tag
prompt. Users of an MCP tool send natural requests instead, to registries that may hold no sample images, and
ask something simpler and stricter: is this the right *kind* of model, and did the tool add anything I did not
ask for? This benchmark answers that automatically from labels:

- prompt labels (``fit_labels/prompts.jsonl``): for 360 requests drawn from the shared prompt sets, the
  kinds of checkpoint a judge graded good (2) and acceptable (1), whether the request has a style cue, and the
  looks it asks for. Prompts are referenced by file and index with a hash of their text; the text itself is
  read from the prompt sets (``../shared/data/prompts``) and never stored here. A third of them
  (``split == "heldout"``) is never used for tuning.
- model labels: each checkpoint's kinds and each LoRA's role and concepts; judges' labels (a JSONL file the
  caller passes, keyed by registry version id; for Civitai models they stay outside the repo, like the data they
  judge) take precedence over the registry's own (curated in ``default_models.toml``, or derived from tags).

Metrics per registry: wrong-kind rate (fit 0), mean fit (0/1/2), harmful-LoRA rate (a call with at least one
style or subject LoRA whose concepts the request does not name), LoRA rate, invalid calls.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from diffagent.apicall import ApiCall
from diffagent.errors import UserInputError
from diffagent.prompttext import html_to_text
from diffagent.registry.info import VersionInfo
from diffagent.registry.kinds import NEUTRAL_ROLES, NOT_STANDALONE, name_phrase
from diffagent.registry.query import contains_words

LABELS_DIR = Path(__file__).with_name("fit_labels")
PROMPT_LABELS = LABELS_DIR / "prompts.jsonl"
SPLITS = ("dev", "heldout")
KINDS = frozenset({"photo", "general", "art", "anime", "cartoon", "pixel"})


@dataclass(frozen=True)
class FitItem:
    ref: str
    prompt: str
    good: frozenset[str]
    ok: frozenset[str]
    style_cue: bool
    asks_for: tuple[str, ...]
    split: str

    def grade(self, kinds: list[str] | tuple[str, ...]) -> int:
        """The judge's grade of a checkpoint with these kinds: its best kind; a raw base model or an
        unlabelled one is acceptable at best; a model that cannot render alone is wrong."""
        if not kinds or set(kinds) & NOT_STANDALONE:
            return 0
        return max(2 if k in self.good else 1 if k in self.ok or k in ("base", "unknown") else 0 for k in kinds)

    def asks(self, concepts: list[str] | tuple[str, ...]) -> bool:
        """The request names one of these concepts (in its text or in what the judge says it asks for)."""
        text = " ".join(self.prompt.lower().split())
        asked = [a.lower() for a in self.asks_for]
        for c in concepts:
            c = c.lower().strip()
            if len(c) < 3:
                continue
            if contains_words(text, c) or any(c == a or c in a.split() for a in asked):
                return True
        return False


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_prompt(root: Path, ref: str) -> str:
    """The text of ``file#key`` in the shared prompt sets (a .csv row, a .txt line, a .json key or id)."""
    rel, _, key = ref.partition("#")
    path = root / rel
    if not path.is_file():
        raise UserInputError(f"prompt file {path} is missing; pass --prompts-root pointing at shared/data/prompts")
    return _prompt_tables(path)[key]


_TABLES: dict[tuple, dict[str, str]] = {}


def _prompt_tables(path: Path) -> dict[str, str]:
    st = path.stat()
    key = (path, st.st_mtime_ns, st.st_size)
    if key not in _TABLES:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            table = {str(i): (r.get("Prompts") or r.get("prompt") or "").strip() for i, r in enumerate(rows)}
        elif path.suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                table = {str(k): str(v).strip() for k, v in data.items()}
            else:
                table = {str(r["id"]): r["prompt"].strip() for r in data}
        else:
            table = {str(i): ln.strip() for i, ln in enumerate(text.splitlines()) if ln.strip()}
        _TABLES[key] = table
    return _TABLES[key]


def load_labels(path: Path = PROMPT_LABELS) -> list[dict]:
    """The prompt label rows, checked: known kinds only, no kind both good and ok, splits as declared."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        good, ok = set(r["good"]), set(r["ok"])
        if not good or not good <= KINDS or not ok <= KINDS or good & ok or r["split"] not in SPLITS:
            raise UserInputError(
                f"{path.name}:{n}: bad label {r!r}: good/ok must be disjoint sets of {sorted(KINDS)}, "
                f"good non-empty, split one of {SPLITS}"
            )
        rows.append(r)
    return rows


def load_fit_set(prompts_root: Path, split: str = "heldout", path: Path = PROMPT_LABELS) -> list[FitItem]:
    """Labelled requests of one split (``dev``, ``heldout`` or ``all``), their text read from the prompt sets;
    a prompt whose text no longer matches the label's hash is an error (the label may not fit it any more)."""
    if split not in (*SPLITS, "all"):
        raise UserInputError(f"unknown split {split!r}; use dev, heldout or all")
    items = []
    for r in load_labels(path):
        if split != "all" and r["split"] != split:
            continue
        text = read_prompt(Path(prompts_root), r["ref"])
        if _sha(text) != r["sha"]:
            raise UserInputError(
                f"{r['ref']}: the prompt text changed since it was labelled (hash {_sha(text)} != "
                f"{r['sha']}); relabel it"
            )
        items.append(
            FitItem(
                r["ref"],
                text,
                frozenset(r["good"]),
                frozenset(r["ok"]),
                bool(r["style_cue"]),
                tuple(r["asks_for"]),
                r["split"],
            )
        )
    return items


def load_model_labels(path: Path) -> dict[int, dict]:
    """Judges' labels of registry models, keyed by version id: ``{"kinds": [...], "concepts": [...], "by": ...}``,
    checked against the kinds vocabulary (``registry/kinds.py``)."""
    from diffagent.registry.kinds import CHECKPOINT_KINDS, LORA_ROLES, NOT_STANDALONE

    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model labels {path} not found; pass a JSONL file of judged labels (docs/fit.md)")
    allowed = set(CHECKPOINT_KINDS) | NOT_STANDALONE | set(LORA_ROLES)
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        if not r.get("kinds") or not set(r["kinds"]) <= allowed or not r.get("by"):
            raise UserInputError(
                f"{path.name}:{n}: bad model label {r!r}: kinds must be words of {sorted(allowed)}, "
                "and 'by' must say who judged it"
            )
        out[int(r["version_id"])] = r
    return out


@dataclass
class FitScores:
    n: int = 0
    grades: Counter = field(default_factory=Counter)
    harmful: int = 0
    with_lora: int = 0
    invalid: int = 0
    unlabelled: int = 0
    kinds: Counter = field(default_factory=Counter)
    by_cue: dict = field(default_factory=lambda: {True: Counter(), False: Counter()})
    failures: list[dict] = field(default_factory=list)
    #: every model a graded call chose (checkpoints and LoRAs) that no judge labelled, in first-seen order
    to_judge: dict[int, VersionInfo] = field(default_factory=dict)

    def row(self) -> dict:
        p = lambda a: round(a / self.n, 4) if self.n else None  # noqa: E731
        fit = sum(g * c for g, c in self.grades.items())
        cue = {
            ("style_cue" if k else "no_cue"): {"n": v["n"], "wrong_kind": round(v[0] / v["n"], 4) if v["n"] else None}
            for k, v in self.by_cue.items()
        }
        return {
            "n": self.n,
            "wrong_kind_rate": p(self.grades[0]),
            "mean_fit": p(fit),
            "good": self.grades[2],
            "acceptable": self.grades[1],
            "wrong": self.grades[0],
            "harmful_lora_rate": p(self.harmful),
            "lora_rate": p(self.with_lora),
            "invalid": self.invalid,
            "unlabelled_checkpoints": self.unlabelled,
            "chosen_kinds": dict(self.kinds.most_common()),
            **cue,
        }


def evaluate_fit(
    items: list[FitItem], select: Callable[[str], ApiCall], registry, model_labels: dict[int, dict] | None = None
) -> FitScores:
    """Run ``select`` on every request and grade the call (see the module docstring)."""
    labels = model_labels or {}
    s = FitScores()
    for it in items:
        s.n += 1
        s.by_cue[it.style_cue]["n"] += 1
        try:
            call = select(it.prompt)
        except Exception as e:  # noqa: BLE001 - an error is a failed request, it does not stop the benchmark
            s.invalid += 1
            s.grades[0] += 1
            s.by_cue[it.style_cue][0] += 1
            s.failures.append({"ref": it.ref, "error": f"{type(e).__name__}: {e}"})
            continue
        infos = registry.versions([call.checkpoint.id, *(lo.id for lo in call.loras)])
        s.to_judge.update((i, info) for i, info in infos.items() if i not in labels)
        ck = infos.get(call.checkpoint.id)
        kinds = labels.get(call.checkpoint.id, {}).get("kinds") or (ck.kinds if ck else [])
        if call.checkpoint.id not in labels and (not ck or not ck.kinds or ck.kinds == ["unknown"]):
            s.unlabelled += 1
        g = it.grade(kinds)
        s.grades[g] += 1
        if g == 0:
            s.by_cue[it.style_cue][0] += 1
        s.kinds[kinds[0] if kinds else "?"] += 1
        harmful = []
        for lo in call.loras:
            info = infos.get(lo.id)
            lab = labels.get(lo.id) or {}
            role = (lab.get("kinds") or (info.kinds if info else []) or ["subject"])[0]
            concepts = list(lab.get("concepts") or (info.concepts if info else []))
            if info is not None:
                concepts.append(name_phrase(info.model_name))
            if role not in NEUTRAL_ROLES and not it.asks(concepts):
                harmful.append(lo.name)
        s.with_lora += bool(call.loras)
        s.harmful += bool(harmful)
        if g == 0 or harmful:
            s.failures.append(
                {
                    "ref": it.ref,
                    "prompt": it.prompt[:160],
                    "checkpoint": call.checkpoint.name,
                    "kinds": kinds,
                    "fit": g,
                    "harmful_loras": harmful,
                }
            )
    return s


def judge_input(info: VersionInfo) -> dict:
    """One line for a judge of what a model is for (docs/fit-judging.md, part 2): the page's own text."""
    return {
        "version_id": info.id,
        "type": info.type,
        "name": info.model_name,
        "version": info.name,
        "base_model": info.base_model,
        "tags": info.tags,
        "trigger_words": info.trained_words,
        "description": html_to_text(info.description, max_chars=400),
    }


def markdown_table(rows: dict[str, dict]) -> str:
    cols = ["n", "wrong_kind_rate", "mean_fit", "harmful_lora_rate", "lora_rate", "invalid", "unlabelled_checkpoints"]
    out = ["| run | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, r in rows.items():
        out.append(f"| {name} | " + " | ".join("-" if r.get(c) is None else str(r[c]) for c in cols) + " |")
    return "\n".join(out)
