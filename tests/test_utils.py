"""anatomist.utils: hook-name shorthands, Slice, losses and small helpers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anatomist import utils
from anatomist.utils import Slice, get_act_name, lm_accuracy, lm_cross_entropy_loss

# --- get_act_name ----------------------------------------------------------------------------------

CLASSIC = [
    (("k", 6), "blocks.6.attn.hook_k"),
    (("k6",), "blocks.6.attn.hook_k"),
    (("scale", 4, "ln1"), "blocks.4.ln1.hook_scale"),
    (("scale4ln1",), "blocks.4.ln1.hook_scale"),
    (("attn", 2), "blocks.2.attn.hook_pattern"),
    (("attn_logits", 2), "blocks.2.attn.hook_attn_scores"),
    (("pattern", 0), "blocks.0.attn.hook_pattern"),
    (("resid_post", 3), "blocks.3.hook_resid_post"),
    (("resid_pre", 0), "blocks.0.hook_resid_pre"),
    (("pre", 1), "blocks.1.mlp.hook_pre"),
    (("post", 1), "blocks.1.mlp.hook_post"),
    (("pre_linear", 5), "blocks.5.mlp.hook_pre_linear"),
    (("mlp_post", 2), "blocks.2.mlp.hook_post"),
    (("z", 11), "blocks.11.attn.hook_z"),
    (("z11",), "blocks.11.attn.hook_z"),
    (("rot_q", 0), "blocks.0.attn.hook_rot_q"),
    (("result", 3), "blocks.3.attn.hook_result"),
    (("q", 1, "a"), "blocks.1.attn.hook_q"),
    (("key", 1), "blocks.1.attn.hook_k"),
    (("attn_out", 7), "blocks.7.hook_attn_out"),
    (("mlp_out", 7), "blocks.7.hook_mlp_out"),
    (("q_input", 2), "blocks.2.hook_q_input"),
    (("resid_mid", 1, "b"), "blocks.1.hook_resid_mid"),
    (("embed",), "hook_embed"),
    (("pos_embed",), "hook_pos_embed"),
    (("scale",), "ln_final.hook_scale"),
    (("normalized",), "ln_final.hook_normalized"),
    (("normalized", 3, "ln2"), "blocks.3.ln2.hook_normalized"),
    (("scale", 2, "ln1_post"), "blocks.2.ln1_post.hook_scale"),
    (("scale2ln1_post",), "blocks.2.ln1_post.hook_scale"),
    (("resid_pre10",), "blocks.10.hook_resid_pre"),
    (("blocks.0.attn.hook_pattern",), "blocks.0.attn.hook_pattern"),
    (("hook_embed",), "hook_embed"),
    (("ln_final.hook_scale",), "ln_final.hook_scale"),
]


@pytest.mark.parametrize(("args", "expected"), CLASSIC)
def test_get_act_name_classic_outputs(args: tuple[Any, ...], expected: str) -> None:
    assert get_act_name(*args) == expected


def test_get_act_name_keyword_arguments() -> None:
    assert get_act_name("scale", layer=4, layer_type="ln1") == "blocks.4.ln1.hook_scale"
    assert get_act_name(name="v", layer=0) == "blocks.0.attn.hook_v"


# --- Slice ----------------------------------------------------------------------------------------


def test_slice_int_drops_axis() -> None:
    t = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    s = Slice(2)
    assert torch.equal(s.apply(t, dim=1), t[:, 2])
    assert s.apply(t, dim=1).shape == (2, 3)
    assert torch.equal(Slice(-1).apply(t, dim=-1), t[..., -1])
    assert list(s.indices(5)) == [2]
    # numpy integers and 0-d tensors select like an int (and say so).
    for index in (np.int64(2), torch.tensor(2)):
        sl = Slice(index)
        assert isinstance(sl.slice, int) and sl.slice == 2
        assert torch.equal(sl.apply(t, dim=1), t[:, 2])


def test_slice_tuple_slice_list_none() -> None:
    t = torch.arange(2 * 6).reshape(2, 6)
    assert torch.equal(Slice((1, 4)).apply(t, dim=1), t[:, 1:4])
    assert torch.equal(Slice((0, 6, 2)).apply(t, dim=1), t[:, 0:6:2])
    assert torch.equal(Slice(slice(2, None)).apply(t, dim=1), t[:, 2:])
    assert torch.equal(Slice([5, 0, 3]).apply(t, dim=1), t[:, [5, 0, 3]])
    assert torch.equal(Slice(np.array([1, 1])).apply(t, dim=1), t[:, [1, 1]])
    assert torch.equal(Slice(torch.tensor([4])).apply(t, dim=1), t[:, [4]])
    assert Slice(None).apply(t, dim=1) is t
    assert Slice().apply(t) is t
    assert torch.equal(Slice((0, 1)).apply(t, dim=0), t[:1])
    assert list(Slice((1, 4)).indices(6)) == [1, 2, 3]
    assert list(Slice([5, 0]).indices(6)) == [5, 0]
    assert list(Slice([-1, 1]).indices(6)) == [5, 1]  # counted from the end, as in the axis
    assert list(Slice(None).indices(3)) == [0, 1, 2]
    assert list(Slice(2).indices()) == [2]  # only an int knows its indices without max_ctx
    for needs_length in ((1, 4), [5, 0], torch.tensor([1])):
        with pytest.raises(ValueError, match="max_ctx"):
            Slice(needs_length).indices()
    with pytest.raises(IndexError):
        Slice([7]).indices(6)
    with pytest.raises(TypeError, match="Cannot build a Slice from str"):
        Slice("first")
    with pytest.raises(ValueError):  # the classic raised ValueError
        Slice(1.5)
    assert [Slice(s).mode for s in (None, 3, (1, 2), [1])] == ["identity", "int", "slice", "array"]
    inner = Slice((1, 3))
    assert Slice(inner).slice == inner.slice


# --- losses ---------------------------------------------------------------------------------------


def _logits_tokens(b: int = 3, p: int = 6, v: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    return torch.randn(b, p, v, generator=gen), torch.randint(0, v, (b, p), generator=gen)


def test_lm_cross_entropy_loss_matches_torch() -> None:
    logits, toks = _logits_tokens()
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 11), toks[:, 1:].reshape(-1))
    assert torch.allclose(lm_cross_entropy_loss(logits, toks), expected, atol=1e-6)
    per = lm_cross_entropy_loss(logits, toks, per_token=True)
    assert per.shape == (3, 5)
    expected_per = F.cross_entropy(
        logits[:, :-1].reshape(-1, 11), toks[:, 1:].reshape(-1), reduction="none"
    ).reshape(3, 5)
    assert torch.allclose(per, expected_per, atol=1e-6)
    # Hand formula for one entry: logsumexp - the target logit.
    b, i = 1, 2
    by_hand = torch.logsumexp(logits[b, i], -1) - logits[b, i, toks[b, i + 1]]
    assert torch.allclose(per[b, i], by_hand, atol=1e-6)


def test_lm_cross_entropy_loss_with_mask() -> None:
    logits, toks = _logits_tokens()
    mask = torch.ones_like(toks)
    mask[0, :2] = 0  # left padding
    mask[2, -3:] = 0  # right padding
    valid = (mask[:, :-1] * mask[:, 1:]).bool()
    all_nll = F.cross_entropy(
        logits[:, :-1].reshape(-1, 11), toks[:, 1:].reshape(-1), reduction="none"
    ).reshape(3, 5)
    per = lm_cross_entropy_loss(logits, toks, attention_mask=mask, per_token=True)
    assert per.shape == (3, 5)
    assert torch.allclose(per[valid], all_nll[valid], atol=1e-6)
    assert torch.count_nonzero(per[~valid]) == 0
    mean = lm_cross_entropy_loss(logits, toks, attention_mask=mask)
    assert torch.allclose(mean, all_nll[valid].mean(), atol=1e-6)
    # Row 0 alone, without its padding, gives the same per-token losses.
    alone = lm_cross_entropy_loss(logits[:1, 2:], toks[:1, 2:], per_token=True)
    assert torch.allclose(alone[0], per[0, 2:], atol=1e-6)
    # An all-ones mask is the same as no mask.
    full = lm_cross_entropy_loss(logits, toks, attention_mask=torch.ones_like(toks))
    assert torch.allclose(full, lm_cross_entropy_loss(logits, toks), atol=1e-7)


def test_lm_cross_entropy_loss_ignores_nonfinite_padding() -> None:
    logits, toks = _logits_tokens()
    mask = torch.ones_like(toks)
    mask[1, -2:] = 0
    logits = logits.clone()
    logits[1, -2:] = float("nan")  # garbage at padding positions must not leak into the loss
    loss = lm_cross_entropy_loss(logits, toks, attention_mask=mask)
    assert torch.isfinite(loss)
    per = lm_cross_entropy_loss(logits, toks, attention_mask=mask, per_token=True)
    assert torch.isfinite(per).all()


def test_lm_accuracy() -> None:
    logits, toks = _logits_tokens()
    hits = logits[:, :-1].argmax(-1) == toks[:, 1:]
    assert torch.equal(lm_accuracy(logits, toks, per_token=True), hits)
    assert torch.isclose(lm_accuracy(logits, toks), hits.float().mean())
    perfect = F.one_hot(torch.cat([toks[:, 1:], toks[:, :1]], 1), 11).float()
    assert lm_accuracy(perfect, toks) == 1.0


# --- small helpers --------------------------------------------------------------------------------


def test_to_numpy_remove_batch_dim_get_corner() -> None:
    t = torch.arange(6.0).reshape(1, 2, 3).requires_grad_(True)
    arr = utils.to_numpy(t)
    assert isinstance(arr, np.ndarray) and arr.shape == (1, 2, 3) and arr[0, 1, 2] == 5.0
    assert utils.to_numpy(torch.nn.Parameter(torch.ones(2))).tolist() == [1.0, 1.0]
    assert utils.to_numpy([1, 2]).tolist() == [1, 2]
    assert utils.to_numpy(3.5).item() == 3.5
    a = np.zeros(2)
    assert utils.to_numpy(a) is a
    with pytest.raises(TypeError):
        utils.to_numpy(object())
    assert utils.remove_batch_dim(t).shape == (2, 3)
    two = torch.zeros(2, 3)
    assert utils.remove_batch_dim(two) is two
    big = torch.arange(5 * 5 * 5).reshape(5, 5, 5)
    assert torch.equal(utils.get_corner(big, 2), big[:2, :2, :2])
    assert utils.get_corner(big).shape == (3, 3, 3)


class _StubTokenizerModel:
    """Just enough of a model for test_prompt: one token per character, fixed logits."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.alphabet = "abcdefghij "

    def to_tokens(self, text: str, prepend_bos: bool | None = None) -> torch.Tensor:
        ids = [self.alphabet.index(c) for c in text]
        if prepend_bos is not False:
            ids = [0, *ids]
        return torch.tensor([ids])

    def to_str_tokens(self, tokens: torch.Tensor) -> list[str]:
        return [self.alphabet[i] for i in tokens[0].tolist()]

    def to_single_str_token(self, token: int) -> str:
        return self.alphabet[token]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.logits[:, : tokens.shape[1]]


def test_test_prompt_ranks_and_probabilities(capsys: pytest.CaptureFixture[str]) -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(1, 10, 11, generator=gen)
    stub = _StubTokenizerModel(logits)
    # Prompt "ab" -> [bos, a, b]; answer " c" -> [' ', 'c'] predicted at positions 2 and 3.
    results = utils.test_prompt("ab", "c", stub, print_details=True, top_k=3)
    probs = logits[0].softmax(-1)
    space, c = stub.alphabet.index(" "), stub.alphabet.index("c")
    expected = [
        (" ", probs[2, space].item(), int((probs[2] > probs[2, space]).sum())),
        ("c", probs[3, c].item(), int((probs[3] > probs[3, c]).sum())),
    ]
    assert [r[0] for r in results] == [e[0] for e in expected]
    for got, want in zip(results, expected, strict=True):
        assert got[1] == pytest.approx(want[1], abs=1e-6) and got[2] == want[2]
    out = capsys.readouterr().out
    assert "rank" in out and "top 2" in out
    quiet = utils.test_prompt("ab", "c", stub, prepend_space_to_answer=False, print_details=False)
    assert [r[0] for r in quiet] == ["c"]
    assert quiet[0][1] == pytest.approx(probs[2, c].item(), abs=1e-6)
    assert capsys.readouterr().out == ""


def test_test_prompt_with_several_answers_compares_first_tokens() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(1, 10, 11, generator=gen)
    stub = _StubTokenizerModel(logits)
    results = utils.test_prompt("ab", ["c", "de"], stub, print_details=False)
    probs = logits[0].softmax(-1)
    # Each answer is " c" / " de" -> only its first token (" ") counts, read after the prompt.
    space = stub.alphabet.index(" ")
    assert [r[0] for r in results] == [" ", " "]
    assert all(r[1] == pytest.approx(probs[2, space].item(), abs=1e-6) for r in results)
    no_space = utils.test_prompt("ab", ["c", "de"], stub, False, print_details=False)
    assert [r[0] for r in no_space] == ["c", "d"]
    d = stub.alphabet.index("d")
    assert no_space[1][2] == int((probs[2] > probs[2, d]).sum())


# --- Slice.unwrap, triangular checks, sample_logits ------------------------------------------------


def test_slice_unwrap_keeps_the_axis_of_an_int() -> None:
    t = torch.arange(12).reshape(3, 4)
    assert Slice.unwrap(2).apply(t, dim=1).shape == (3, 1)
    s = Slice((0, 2))
    assert Slice.unwrap(s) is s
    assert torch.equal(Slice.unwrap(None).apply(t), t)


def test_is_square_and_lower_triangular() -> None:
    assert utils.is_square(torch.zeros(3, 3)) and not utils.is_square(torch.zeros(3, 4))
    assert not utils.is_square(torch.zeros(2, 2, 2))
    assert utils.is_lower_triangular(torch.tril(torch.ones(4, 4)))
    assert not utils.is_lower_triangular(torch.ones(4, 4))
    assert not utils.is_lower_triangular(torch.ones(4, 3))


def test_sample_logits_is_exported_from_generation() -> None:
    from anatomist.model.generate import sample_logits

    assert utils.sample_logits is sample_logits
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert utils.sample_logits(logits, temperature=0.0).tolist() == [1, 0]
    assert set(utils.sample_logits(logits.repeat(50, 1), top_k=1).tolist()) <= {0, 1}


# --- tokenize_and_concatenate ---------------------------------------------------------------------


def _tokenizer() -> Any:
    from tests.helpers import tiny_tokenizer

    return tiny_tokenizer()


TEXTS = ["the cat sat on the mat", "a dog ran", "the big red house", "mary gave john milk"]


def _stream(tok: Any, texts: list[str]) -> list[int]:
    """The texts' ids joined by EOS, tokenized one by one (the reference for packing)."""
    ids: list[int] = []
    for i, text in enumerate(texts):
        if i:
            ids.append(tok.eos_token_id)
        ids.extend(tok.encode(text, add_special_tokens=False))
    return ids


def test_tokenize_and_concatenate_rows_with_bos() -> None:
    tok = _tokenizer()
    vocab_size = len(tok)
    stream = _stream(tok, TEXTS)  # 6 + 1 + 3 + 1 + 4 + 1 + 4 = 20 tokens
    assert len(stream) == 20
    ds = utils.tokenize_and_concatenate(TEXTS, tok, max_length=7)
    # 20 tokens -> 3 rows of 6 (2 dropped), each behind BOS.
    assert len(ds) == 3 and ds["tokens"].shape == (3, 7)
    assert (ds["tokens"][:, 0] == tok.bos_token_id).all()
    assert ds["tokens"][:, 1:].flatten().tolist() == stream[:18]
    assert ds[1]["tokens"].tolist() == [tok.bos_token_id, *stream[6:12]]
    assert ds["tokens"].dtype == torch.long
    assert len(tok) == vocab_size  # the tokenizer is not modified (the classic added a pad token)

    # Without BOS the rows are max_length tokens of the stream.
    plain = utils.tokenize_and_concatenate(TEXTS, tok, max_length=5, add_bos_token=False)
    assert plain["tokens"].shape == (4, 5)
    assert plain["tokens"].flatten().tolist() == stream
    assert (plain["tokens"] != tok.bos_token_id).all()


def test_tokenize_and_concatenate_inputs_and_loader() -> None:
    tok = _tokenizer()
    ds = utils.tokenize_and_concatenate(TEXTS, tok, max_length=7)
    # Rows of dicts (like a datasets.Dataset), with another column name.
    rows = [{"content": t, "id": i} for i, t in enumerate(TEXTS)]
    other = utils.tokenize_and_concatenate(iter(rows), tok, max_length=7, column_name="content")
    assert torch.equal(other["tokens"], ds["tokens"])
    with pytest.raises(KeyError, match="column_name"):
        utils.tokenize_and_concatenate(rows, tok, max_length=7)
    # Streaming packs the same rows lazily.
    streamed = utils.tokenize_and_concatenate(TEXTS, tok, streaming=True, max_length=7)
    assert isinstance(streamed, torch.utils.data.IterableDataset)
    assert torch.equal(torch.stack([r["tokens"] for r in streamed]), ds["tokens"])
    # A DataLoader yields {"tokens": [batch, max_length]}, as over the classic's dataset.
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["tokens"].shape == (2, 7)


def test_tokenize_and_concatenate_short_and_batched_text() -> None:
    tok = _tokenizer()
    # Fewer tokens than one row: one row, padded with the pad token (as the classic).
    short = utils.tokenize_and_concatenate(["the cat"], tok, max_length=6)
    ids = tok.encode("the cat", add_special_tokens=False)
    assert short["tokens"].tolist() == [[tok.bos_token_id, *ids, *[tok.pad_token_id] * 3]]
    # Texts are packed 1000 at a time (the classic's map batches): leftovers do not carry over.
    texts = ["the cat sat"] * 1001  # 3 tokens each, EOS between
    ds = utils.tokenize_and_concatenate(texts, tok, max_length=11)
    first_batch = (1000 * 3 + 999) // 10  # rows from the first 1000 texts
    assert len(ds) == first_batch + 1  # the last text alone makes one padded row
    with pytest.raises(ValueError, match="BOS"):
        no_bos = _tokenizer()
        no_bos.bos_token = None
        utils.tokenize_and_concatenate(TEXTS, no_bos)
    with pytest.raises(TypeError, match="iterable of texts"):
        utils.tokenize_and_concatenate("the cat", tok)
    with pytest.raises(ValueError, match="no text"):
        utils.tokenize_and_concatenate([], tok)


def test_tokenize_and_concatenate_on_a_datasets_dataset() -> None:
    datasets = pytest.importorskip("datasets")
    tok = _tokenizer()
    hf = datasets.Dataset.from_dict({"text": TEXTS, "id": list(range(len(TEXTS)))})
    ds = utils.tokenize_and_concatenate(hf, tok, max_length=7, num_proc=1)
    assert ds.column_names == ["tokens"]
    expected = utils.tokenize_and_concatenate(TEXTS, tok, max_length=7)["tokens"]
    # datasets >= 4 returns a lazy Column for ds["tokens"]; a slice gives the formatted tensor.
    assert torch.equal(ds[:]["tokens"], expected)
