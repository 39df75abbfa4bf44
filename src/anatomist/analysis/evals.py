"""Quick behavioural evaluations: induction, a sanity-check loss, indirect-object identification
(IOI), zero-shot MMLU and the mean loss over a data loader.

The classic ``transformer_lens.evals`` names and defaults, without downloads: the classic
``make_*_data_loader`` helpers fetched datasets from the Hugging Face hub; here they raise
`DatasetUnavailableError`, `make_data_loader` builds a loader from texts you already have, and
`make_mmlu_data_loader` / `mmlu_eval` read MMLU from local files or rows (``data=``).
Rough evals for comparing models cheaply, not benchmarks.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from anatomist.utils import lm_cross_entropy_loss, tokenize_and_concatenate

# --- induction ------------------------------------------------------------------------------------


@dataclass
class InductionResult:
    scores: Tensor  # [n_layers, n_heads]: mean attention from a repeated token to the token
    # that followed its previous occurrence
    loss_first: float  # mean next-token loss over the first (unpredictable) repeat
    loss_second: float  # ... and over the second, which induction can predict

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        flat = self.scores.flatten()
        top = flat.topk(min(k, flat.numel()))
        n_heads = self.scores.shape[1]
        return [
            (i // n_heads, i % n_heads, float(s)) for s, i in zip(top.values, top.indices.tolist())
        ]


def repeated_random_tokens(model: Any, seq_len: int, batch: int = 1, seed: int = 0) -> Tensor:
    """``[batch, 1 + 2 * seq_len]``: BOS (when the model uses one), then random tokens twice."""
    gen = torch.Generator().manual_seed(seed)
    low = 100 if model.cfg.d_vocab > 1000 else 0  # skip special and byte tokens of real vocabs
    half = torch.randint(low, model.cfg.d_vocab, (batch, seq_len), generator=gen)
    tokens = torch.cat([half, half], dim=1)
    bos = getattr(model.tokenizer, "bos_token_id", None) if model.tokenizer is not None else None
    if bos is not None and model.cfg.default_prepend_bos:
        tokens = torch.cat([torch.full((batch, 1), bos), tokens], dim=1)
    return tokens


def induction_scores(
    model: Any, seq_len: int = 40, batch: int = 1, seed: int = 0
) -> InductionResult:
    """Score every head for induction and measure the per-token loss on each repeat."""
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    offset = tokens.shape[1] - 2 * seq_len  # 1 with BOS, else 0
    loss, cache = model.run_with_cache(
        tokens,
        return_type="loss",
        loss_per_token=True,
        names_filter=lambda name: name.endswith("hook_pattern"),
    )
    # A token at position t in the second repeat attends to t - seq_len + 1 under induction.
    dest = torch.arange(offset + seq_len, offset + 2 * seq_len)
    src = dest - seq_len + 1
    scores = torch.stack(
        [
            cache["pattern", layer][:, :, dest, src].mean(dim=(0, -1))
            for layer in range(model.cfg.n_layers)
        ]
    )
    # loss[:, t] is the loss of predicting token t + 1.
    first = loss[:, offset : offset + seq_len - 1].mean()
    second = loss[:, offset + seq_len : offset + 2 * seq_len - 1].mean()
    return InductionResult(scores.float(), float(first), float(second))


@torch.no_grad()
def induction_loss(
    model: Any,
    tokenizer: Any = None,
    batch_size: int = 4,
    subseq_len: int = 384,
    prepend_bos: bool | None = None,
    device: str | torch.device | None = None,
    *,
    seed: int | None = None,
) -> Tensor:
    """Mean loss on the second half of random token sequences repeated twice.

    A model with induction heads predicts the second copy almost perfectly. As the classic: the
    tokens are drawn from ``[100, 20000)`` (clipped to the vocabulary), the sequence is
    ``2 * subseq_len`` long, with `prepend_bos` (default: the model's) its first token is replaced
    by BOS, and the loss is averaged over the predictions from position ``subseq_len + 1`` on.
    `seed` makes the draw reproducible (default: torch's global generator, as the classic).
    """
    if 2 * subseq_len > model.cfg.n_ctx:
        raise ValueError(
            f"2 * subseq_len = {2 * subseq_len} tokens do not fit in n_ctx={model.cfg.n_ctx}; "
            "pass a smaller subseq_len."
        )
    high = min(20000, model.cfg.d_vocab)
    low = 100 if high > 1000 else 0  # real vocabularies: skip special and byte tokens
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    first_half = torch.randint(low, high, (batch_size, subseq_len), generator=gen)
    tokens = first_half.repeat(1, 2)
    if model.cfg.default_prepend_bos if prepend_bos is None else prepend_bos:
        tokenizer = tokenizer if tokenizer is not None else model.tokenizer
        bos = getattr(tokenizer, "bos_token_id", None)
        if bos is None:
            raise ValueError(
                "prepend_bos needs a tokenizer with a BOS token; pass tokenizer= or "
                "prepend_bos=False."
            )
        tokens[:, 0] = bos
    tokens = tokens.to(device if device is not None else _model_device(model))
    logits = model(tokens, return_type="logits")
    per_token = lm_cross_entropy_loss(logits, tokens, per_token=True)
    return per_token[:, subseq_len + 1 :].mean()


# --- sanity check and dataset losses --------------------------------------------------------------

_SANITY_TEXT = (
    "Many important transition points in the history of science have been moments when science "
    "'zoomed in.' At these points, we develop a visualization or tool that allows us to see the "
    "world in a new level of detail, and a new field of science develops to study the world "
    "through this lens."
)  # the first paragraph of "Zoom In: An Introduction to Circuits" (Olah et al. 2020)


@torch.no_grad()
def sanity_check(model: Any) -> Tensor:
    """The model's loss on one paragraph of English: below ~5 the model is probably fine, above
    ~7 something is broken. A smoke test, not an evaluation."""
    return model(_SANITY_TEXT, return_type="loss")


class DatasetUnavailableError(RuntimeError):
    """A classic eval helper that downloaded a dataset; anatomist never downloads data."""


def _no_download(name: str, source: str) -> Any:
    def loader(tokenizer: Any = None, batch_size: int = 8) -> DataLoader[Any]:
        raise DatasetUnavailableError(
            f"{name} downloaded {source} from the Hugging Face hub in the classic library; "
            "anatomist never downloads datasets. Build a loader from texts you have: "
            "evals.make_data_loader(texts, tokenizer, batch_size=...) (texts: any iterable of "
            "strings, or of dicts with a 'text' key, e.g. a datasets.Dataset you loaded)."
        )

    loader.__name__ = name
    loader.__doc__ = "Classic name kept for discoverability; raises DatasetUnavailableError."
    return loader


make_wiki_data_loader = _no_download("make_wiki_data_loader", "Wikitext-2")
make_owt_data_loader = _no_download("make_owt_data_loader", "OpenWebText-10k")
make_pile_data_loader = _no_download("make_pile_data_loader", "the Pile-10k")
make_code_data_loader = _no_download("make_code_data_loader", "CodeParrot")
DATASET_NAMES = ["wiki", "owt", "pile", "code"]
DATASET_LOADERS = [
    make_wiki_data_loader,
    make_owt_data_loader,
    make_pile_data_loader,
    make_code_data_loader,
]


def make_data_loader(
    texts: Iterable[Any],
    tokenizer: Any,
    batch_size: int = 8,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    shuffle: bool = False,
    drop_last: bool = False,
) -> DataLoader[Any]:
    """A loader of ``{"tokens": [batch, max_length]}`` from texts: `tokenize_and_concatenate`
    (texts joined with EOS, cut into rows, BOS first), batched. `texts` is any iterable of
    strings or of dicts holding `column_name` (a ``datasets.Dataset`` works too)."""
    dataset = tokenize_and_concatenate(
        texts, tokenizer, max_length=max_length, column_name=column_name,
        add_bos_token=add_bos_token,
    )  # fmt: skip
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)


@torch.no_grad()
def evaluate_on_dataset(
    model: Any,
    data_loader: Iterable[Any],
    truncate: int | None = 100,
    device: str | torch.device | None = None,
) -> float:
    """The mean over batches of the model's mean next-token loss, for the first `truncate`
    batches (None: all).

    A batch is ``{"tokens": [b, p]}`` (what `make_data_loader` and ``tokenize_and_concatenate``
    give), a token tensor ``[b, p]``, or a list of strings (padded and masked by the model).
    `device` defaults to the model's. Difference from the classic: exactly `truncate` batches
    are read (the classic read one more), and the device is not hard-wired to "cuda".
    """
    device = device if device is not None else _model_device(model)
    losses: list[float] = []
    for batch in tqdm(data_loader, desc="evaluate", total=truncate, leave=False):
        model_input = _batch_input(batch)
        if isinstance(model_input, Tensor):
            model_input = model_input.to(device)
        losses.append(float(model(model_input, return_type="loss").mean()))
        if truncate is not None and len(losses) >= truncate:
            break
    if not losses:
        raise ValueError("The data loader yielded no batches.")
    return sum(losses) / len(losses)


@torch.no_grad()
def evaluate(
    model: Any,
    truncate: int = 100,
    batch_size: int = 8,
    tokenizer: Any = None,
    texts: Mapping[str, Iterable[Any]] | None = None,
) -> dict[str, float]:
    """``{f"{name}_loss": loss}`` for each named collection of `texts`, as the classic
    ``evaluate`` did over its downloaded datasets (which it needs you to supply here)."""
    if texts is None:
        raise DatasetUnavailableError(
            "The classic evaluate() downloaded Wikitext, OpenWebText, the Pile and CodeParrot; "
            "anatomist never downloads datasets. Pass texts={'wiki': [...], ...}."
        )
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    losses = {}
    for name, collection in texts.items():
        max_length = min(1024, model.cfg.n_ctx)  # the classic's 1024, within the context
        loader = make_data_loader(collection, tokenizer, batch_size, max_length=max_length)
        losses[f"{name}_loss"] = evaluate_on_dataset(model, loader, truncate=truncate)
    return losses


def _batch_input(batch: Any) -> Any:
    if isinstance(batch, Mapping):
        if "tokens" not in batch:
            raise KeyError(f"A dict batch needs a 'tokens' key; it has {sorted(batch)}.")
        batch = batch["tokens"]
    if isinstance(batch, Tensor | str):
        return batch
    if isinstance(batch, Sequence) and batch and all(isinstance(t, str) for t in batch):
        return list(batch)
    if isinstance(batch, Sequence):
        return torch.as_tensor(batch)
    raise TypeError(f"Cannot read a batch of type {type(batch).__name__}.")


def _model_device(model: Any) -> torch.device:
    return next(model.parameters()).device


# --- indirect object identification ---------------------------------------------------------------

# Common first names; the defaults keep those that are one token (with a leading space) for the
# tokenizer at hand, so the logit difference compares two single tokens.
_NAMES = [
    "John", "Mary", "James", "Michael", "David", "Sarah", "Tom", "Anna", "Paul", "Mark",
    "Lisa", "Kate", "Daniel", "Emma", "Peter", "Laura", "Chris", "Alice", "Robert", "Jessica",
    "Steven", "Rachel", "Andrew", "Emily", "Kevin", "Amy", "Brian", "Helen", "Eric", "Grace",
    "Sam", "Jane", "George", "Susan", "Frank", "Julia", "Henry", "Karen", "Jack", "Linda",
]  # fmt: skip
# Templates in the style of Wang et al. 2022 ("Interpretability in the Wild", IOI): [A] is the
# indirect object (the answer, last word), [B] the subject, named twice. The first two are the
# classic's defaults.
_TEMPLATES = [
    "[A] and [B] went to the [LOCATION] to buy [OBJECT]. [B] handed the [OBJECT] to [A]",
    "Then, [B] and [A] went to the [LOCATION]. [B] gave the [OBJECT] to [A]",
    "When [A] and [B] got some [OBJECT] at the [LOCATION], [B] decided to give the [OBJECT] to [A]",
    "After [B] and [A] arrived at the [LOCATION], [B] passed the [OBJECT] to [A]",
    "While [A] and [B] were working at the [LOCATION], [B] brought the [OBJECT] to [A]",
    "[B] and [A] spent the day at the [LOCATION]. Later, [B] gave the [OBJECT] to [A]",
]
_NOUNS = {
    "LOCATION": ["store", "market", "school", "park", "office", "hospital", "garden", "station"],
    "OBJECT": ["milk", "eggs", "bread", "flowers", "apples", "water", "coffee", "cookies"],
}


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    """`text`'s ids without the tokenizer's own special tokens; a tokenizer whose ``encode``
    takes only the text (tiktoken-style) adds none anyway."""
    try:
        return list(tokenizer.encode(text, add_special_tokens=False))
    except TypeError:
        return list(tokenizer.encode(text))


def single_token_names(tokenizer: Any, names: Iterable[str]) -> list[str]:
    """The names that `tokenizer` encodes, with a leading space, as one known token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    kept = []
    for name in names:
        ids = _encode_text(tokenizer, " " + name)
        if len(ids) == 1 and ids[0] != unk:
            kept.append(name)
    return kept


class IOIDataset(Dataset[dict[str, Tensor]]):
    """Indirect-object-identification prompts (Wang et al. 2022, arXiv:2211.00593).

    Each sample fills a template such as "Then, [B] and [A] went to the [LOCATION]. [B] gave the
    [OBJECT] to [A]" with two different names and a noun per slot; the model should prefer the
    indirect object [A] over the subject [B] as the last word. ``ds[i]`` is
    ``{"prompt": ids (ending with IO), "IO": ids of " A", "S": ids of " B"}``.

    Default names are the ones that are single tokens for `tokenizer`, or all of them when fewer
    than two are (`ioi_eval` then compares the first token where the names differ).
    `symmetric` adds, for every sample, the same sentence with the names swapped.

    Differences from the classic: samples really differ (the classic re-seeded Python's global
    generator on every sample, so all ``num_samples`` prompts were the same sentence); `seed`
    makes them reproducible without touching the global generator; more default templates,
    names, places and objects; BOS is prepended only when the tokenizer has one, and the text is
    encoded without the tokenizer's own special tokens.
    """

    def __init__(
        self,
        tokenizer: Any,
        templates: list[str] | None = None,
        names: list[str] | None = None,
        nouns: dict[str, list[str]] | None = None,
        num_samples: int = 1000,
        symmetric: bool = False,
        prepend_bos: bool = True,
        *,
        seed: int = 42,
    ) -> None:
        self.tokenizer = tokenizer
        self.prepend_bos = prepend_bos
        self.templates = templates if templates is not None else self.get_default_templates()
        if names is None:
            names = single_token_names(tokenizer, self.get_default_names())
            if len(names) < 2:
                names = self.get_default_names()
        if len(set(names)) < 2:
            raise ValueError(
                f"IOI needs at least two distinct names, got {names}; the default names are kept "
                "only when they are single tokens for this tokenizer: pass names=[...]."
            )
        self.names = list(names)
        self.nouns = nouns if nouns is not None else self.get_default_nouns()
        self._rng = random.Random(seed)
        self.samples: list[dict[str, str]] = []
        for _ in range(num_samples // 2 if symmetric else num_samples):
            self.samples.extend(self.get_sample(symmetric=symmetric))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, Tensor]:
        sample = self.samples[idx]
        prompt = self._encode(sample["text"])
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.prepend_bos and bos is not None:
            prompt = [bos, *prompt]
        io, s = self._encode(sample["IO"]), self._encode(sample["S"])
        if prompt[-len(io) :] != io:
            raise ValueError(
                f"The prompt {sample['text']!r} does not end with the tokens of {sample['IO']!r} "
                "(the name tokenizes differently in context)."
            )
        return {"prompt": torch.tensor(prompt), "IO": torch.tensor(io), "S": torch.tensor(s)}

    def _encode(self, text: str) -> list[int]:
        return _encode_text(self.tokenizer, text)

    def get_sample(self, symmetric: bool = False) -> list[dict[str, str]]:
        """One sample (two with `symmetric`): ``{"text", "IO", "S"}``, names with a space."""
        rng = self._rng
        template = rng.choice(self.templates)
        for noun_type, choices in self.nouns.items():
            template = template.replace(f"[{noun_type}]", rng.choice(choices))
        a, b = rng.sample(sorted(set(self.names)), 2)
        samples = [_fill(template, a, b)]
        if symmetric:
            samples.append(_fill(template, b, a))
        return samples

    @staticmethod
    def get_default_names() -> list[str]:
        return list(_NAMES)

    @staticmethod
    def get_default_templates() -> list[str]:
        return list(_TEMPLATES)

    @staticmethod
    def get_default_nouns() -> dict[str, list[str]]:
        return {k: list(v) for k, v in _NOUNS.items()}


def _fill(template: str, io: str, subject: str) -> dict[str, str]:
    text = template.replace("[A]", io).replace("[B]", subject)
    return {"text": text, "IO": " " + io, "S": " " + subject}


@torch.no_grad()
def ioi_eval(
    model: Any,
    dataset: Any = None,
    batch_size: int = 8,
    num_samples: int = 1000,
    tokenizer: Any = None,
    symmetric: bool = False,
) -> dict[str, float]:
    """``{"Logit Difference": mean IO - S logit, "Accuracy": fraction with IO > S}``.

    `dataset` yields ``{"prompt", "IO", "S"}`` token tensors (default: an `IOIDataset` of
    `num_samples` prompts for the model's tokenizer, BOS as the model's default). For names of
    several tokens, the first token where IO and S differ is compared, read at the position
    before it (as the classic). Prompts are right-padded and masked.
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if dataset is None:
        if tokenizer is None:
            raise ValueError("ioi_eval needs a tokenizer: the model has none, pass tokenizer=.")
        dataset = IOIDataset(
            tokenizer,
            num_samples=num_samples,
            symmetric=symmetric,
            prepend_bos=model.cfg.default_prepend_bos,
        )
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    device = _model_device(model)
    total_correct = 0
    total_logit_diff = 0.0
    count = 0
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=list):
        prompts = [sample["prompt"] for sample in batch]
        lengths = [p.shape[0] for p in prompts]
        tokens = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True, padding_value=pad)
        mask = torch.arange(tokens.shape[1])[None] < torch.tensor(lengths)[:, None]
        logits = model(tokens.to(device), attention_mask=mask.long().to(device))
        for i, sample in enumerate(batch):
            io, s = sample["IO"], sample["S"]
            n = min(io.shape[0], s.shape[0])
            differ = torch.nonzero(io[:n] != s[:n])
            if differ.numel() == 0:
                raise ValueError(
                    f"IO {io.tolist()} and S {s.tolist()} share all their first tokens; the "
                    "logit difference needs names that differ within their common length."
                )
            first = int(differ[0, 0])
            position = lengths[i] - io.shape[0] + first - 1  # predicts IO's first differing token
            diff = logits[i, position, io[first]] - logits[i, position, s[first]]
            total_logit_diff += float(diff)
            total_correct += int(diff > 0)
            count += 1
    if count == 0:
        raise ValueError("The IOI dataset is empty.")
    return {"Logit Difference": total_logit_diff / count, "Accuracy": total_correct / count}


# --- MMLU -----------------------------------------------------------------------------------------

#: The 57 subjects of MMLU (Hendrycks et al. 2021, "Measuring Massive Multitask Language
#: Understanding", arXiv:2009.03300).
MMLU_SUBJECTS = [
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions",
]  # fmt: skip
MMLU_ANSWER_LETTERS = ["A", "B", "C", "D"]
# The original release's CSV folders are named test/val/dev; cais/mmlu calls val "validation".
_MMLU_CSV_SPLITS = {"test": "test", "validation": "val", "val": "val", "dev": "dev"}

MMLURows = Mapping[str, Iterable[Mapping[str, Any]]] | Iterable[Mapping[str, Any]]


def make_mmlu_data_loader(
    subjects: str | list[str] | None = None,
    split: str = "test",
    num_samples: int | None = None,
    *,
    data: str | os.PathLike[str] | MMLURows | None = None,
) -> list[dict[str, Any]]:
    """MMLU questions as ``{"question", "choices" (4 strings), "answer" (0-3), "subject"}``,
    the first `num_samples` of each subject (None: all) of `subjects` (None: all 57).

    `data` is where they come from, since anatomist never downloads: a folder of the original
    release (``<data>/<split>/<subject>_<split>.csv``: question, four choices, answer letter;
    `split` ``"validation"`` reads ``val/``), a mapping ``{subject: rows}``, or rows carrying a
    ``"subject"`` key, e.g. ``datasets.load_dataset("cais/mmlu", "all", split="test")``.

    Raises:
        ValueError: an unknown subject, a row whose answer is not 0-3 or A-D.
        DatasetUnavailableError: no `data`, or a subject missing from it.
    """
    wanted = _mmlu_subjects(subjects)
    if data is None:
        raise DatasetUnavailableError(
            "make_mmlu_data_loader downloaded cais/mmlu from the Hugging Face hub in the classic "
            "library; anatomist never downloads datasets. Pass data=: the folder of the original "
            "MMLU release (data/test/<subject>_test.csv ...), a {subject: rows} mapping, or "
            "rows with a 'subject' key, e.g. datasets.load_dataset('cais/mmlu', 'all', "
            "split='test') on a machine that has it."
        )
    by_subject = _mmlu_rows(data, split, wanted)
    questions: list[dict[str, Any]] = []
    for subject in wanted:
        rows = by_subject.get(subject)
        if not rows:
            raise DatasetUnavailableError(
                f"The MMLU data given has no {split!r} questions of subject {subject!r}."
            )
        for row in rows[:num_samples]:
            questions.append(_mmlu_question(row, subject))
    return questions


def _mmlu_subjects(subjects: str | list[str] | None) -> list[str]:
    if subjects is None:
        return list(MMLU_SUBJECTS)
    wanted = [subjects] if isinstance(subjects, str) else list(subjects)
    unknown = sorted(set(wanted) - set(MMLU_SUBJECTS))
    if unknown:
        raise ValueError(
            f"Invalid subject(s): {unknown}. MMLU's subjects are: {', '.join(MMLU_SUBJECTS)}."
        )
    return wanted


def _mmlu_rows(
    data: str | os.PathLike[str] | MMLURows, split: str, wanted: list[str]
) -> dict[str, list[Mapping[str, Any]]]:
    """``{subject: rows}`` of the subjects `wanted`, from any form `data` may take."""
    if isinstance(data, str | os.PathLike):
        folder = Path(data) / _MMLU_CSV_SPLITS.get(split, split)
        if not folder.is_dir():
            raise DatasetUnavailableError(
                f"{str(folder)!r} is not a folder; data= must be the folder of the original MMLU "
                "release, holding test/, val/ and dev/ with <subject>_<split>.csv files."
            )
        found: dict[str, list[Mapping[str, Any]]] = {}
        for subject in wanted:
            path = folder / f"{subject}_{folder.name}.csv"
            if path.is_file():
                with path.open(newline="", encoding="utf-8") as file:
                    found[subject] = [
                        {"question": r[0], "choices": r[1:5], "answer": r[5]}
                        for r in csv.reader(file)
                    ]
        return found
    if isinstance(data, Mapping):
        return {subject: list(rows) for subject, rows in data.items()}
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in data:
        if "subject" not in row:
            raise ValueError(
                "MMLU rows given as one sequence need a 'subject' key each; pass "
                "{subject: rows} for rows without one."
            )
        grouped.setdefault(row["subject"], []).append(row)
    return grouped


def _mmlu_question(row: Mapping[str, Any], subject: str) -> dict[str, Any]:
    choices = [str(c) for c in row["choices"]]
    answer = row["answer"]
    if isinstance(answer, str) and answer.strip() in MMLU_ANSWER_LETTERS:
        answer = MMLU_ANSWER_LETTERS.index(answer.strip())
    if len(choices) != 4 or isinstance(answer, bool) or answer not in range(4):
        raise ValueError(
            f"An MMLU question needs four choices and an answer 0-3 (or A-D); got "
            f"{len(choices)} choices and answer {answer!r} in subject {subject!r}."
        )
    return {
        "question": row["question"],
        "choices": choices,
        "answer": int(answer),
        "subject": subject,
    }


@torch.no_grad()
def mmlu_eval(
    model: Any,
    tokenizer: Any = None,
    subjects: str | list[str] | None = None,
    split: str = "test",
    num_samples: int | None = None,
    *,
    data: str | os.PathLike[str] | MMLURows | None = None,
) -> dict[str, Any]:
    """Zero-shot MMLU: ``{"accuracy", "num_correct", "num_total", "subject_scores"}``.

    Each question is shown with its four lettered choices and ends ``"Answer:"``; the model's
    answer is the letter (" A" ... " D", or "A" ... where the spaced letter is not one token)
    with the highest log-probability at the last position. Questions come from
    `make_mmlu_data_loader` (`subjects`, `split`, `num_samples`, `data`).
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if tokenizer is None:
        raise ValueError("mmlu_eval needs a tokenizer: the model has none, pass tokenizer=.")
    questions = make_mmlu_data_loader(subjects, split, num_samples, data=data)
    letter_ids = []
    for letter in MMLU_ANSWER_LETTERS:
        ids = _encode_text(tokenizer, " " + letter)
        letter_ids.append(ids[0] if len(ids) == 1 else _encode_text(tokenizer, letter)[0])
    device = _model_device(model)
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for q in tqdm(questions, desc="MMLU", leave=False):
        lines = [f"Question: {q['question']}", "Choices:"]
        lines += [f"{letter}. {c}" for letter, c in zip(MMLU_ANSWER_LETTERS, q["choices"])]
        prompt = "\n".join(lines) + "\nAnswer:"
        tokens = torch.as_tensor(tokenizer.encode(prompt))[None].to(device)
        last = model(tokens, return_type="logits")[0, -1]
        predicted = int(last[letter_ids].argmax())
        subject = q["subject"]
        correct[subject] = correct.get(subject, 0) + int(predicted == q["answer"])
        total[subject] = total.get(subject, 0) + 1
    n_correct, n_total = sum(correct.values()), sum(total.values())
    return {
        "accuracy": n_correct / n_total,
        "num_correct": n_correct,
        "num_total": n_total,
        "subject_scores": {subject: correct[subject] / total[subject] for subject in total},
    }
