"""Tokenizer helpers: BOS handling, padding and masks, string conversions."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import anatomist
from tests.helpers import load, tiny_gpt2, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> anatomist.HookedTransformer:
    folder = tmp_path_factory.mktemp("llama_tok")
    tiny_llama(folder, num_key_value_heads=2)
    tiny_tokenizer().save_pretrained(folder)
    return load(folder)


def test_tokenizer_is_loaded_from_the_folder(model: anatomist.HookedTransformer) -> None:
    assert model.tokenizer is not None
    assert model.to_tokens("the cat sat")[0].tolist() == [0, 4, 6, 8]


def test_bos_is_never_doubled(model: anatomist.HookedTransformer) -> None:
    assert model.to_tokens("<bos> the cat")[0].tolist() == [0, 4, 6]
    assert model.to_tokens("the cat", prepend_bos=False)[0].tolist() == [4, 6]


def test_tokenizer_that_adds_bos_itself(tmp_path: Path) -> None:
    from tokenizers import processors

    tok = tiny_tokenizer()
    tok._tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 0)]
    )
    assert tok("the")["input_ids"] == [0, 4]
    folder = tmp_path / "m"
    tiny_gpt2(folder)
    model = load(folder, tokenizer=tok)
    assert model.cfg.tokenizer_prepends_bos is True
    assert model.to_tokens("the cat")[0].tolist() == [0, 4, 6]


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_and_mask(model: anatomist.HookedTransformer, side: str) -> None:
    tokens, mask = model.tokenize_with_mask(["the cat sat on the mat", "dog"], padding_side=side)
    assert mask is not None
    assert mask.sum(-1).tolist() == [7, 2]
    pad = model.tokenizer.pad_token_id
    if side == "left":
        assert tokens[1].tolist()[:5] == [pad] * 5 and tokens[1, -1].item() == 7
        assert mask[1].tolist() == [0] * 5 + [1, 1]
    else:
        assert tokens[1].tolist()[2:] == [pad] * 5
        assert mask[1].tolist() == [1, 1] + [0] * 5


@pytest.mark.parametrize("side", ["left", "right"])
def test_text_batch_equals_rows_alone(model: anatomist.HookedTransformer, side: str) -> None:
    texts = ["the cat sat on the mat and ran", "mary gave john a drink", "dog"]
    batch = model(texts, padding_side=side)
    for i, text in enumerate(texts):
        alone = model(text)[0]
        n = alone.shape[0]
        rows = batch[i, -n:] if side == "left" else batch[i, :n]
        assert (rows - alone).abs().max() <= 1e-5


def test_padded_loss_ignores_padding(model: anatomist.HookedTransformer) -> None:
    texts = ["the cat sat on the mat", "mary gave john a drink of milk"]
    batch_loss = model(texts, return_type="loss", loss_per_token=True, padding_side="left")
    for i, text in enumerate(texts):
        alone = model(text, return_type="loss", loss_per_token=True)[0]
        assert (batch_loss[i, -alone.shape[0] :] - alone).abs().max() <= 1e-5
    mean = model(texts, return_type="loss", padding_side="right")
    per_row = [model(t, return_type="loss", loss_per_token=True)[0] for t in texts]
    assert torch.allclose(mean, torch.cat(per_row).mean(), atol=1e-5)


def test_string_helpers(model: anatomist.HookedTransformer) -> None:
    assert model.to_str_tokens("the cat") == ["<bos>", "the", "cat"]
    assert model.to_str_tokens(["the", "dog ran"]) == [["<bos>", "the"], ["<bos>", "dog", "ran"]]
    assert model.to_string(torch.tensor([4, 6])) == "the cat"
    assert model.to_single_token("cat") == 6
    assert model.to_single_str_token(6) == "cat"
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("the cat")
    assert model.get_token_position("the", "the cat sat on the mat") == 1
    assert model.get_token_position("the", "the cat sat on the mat", mode="last") == 5
    direction = model.tokens_to_residual_directions("cat")
    assert torch.equal(direction, model.W_U[:, 6])


def test_both_returns_logits_and_loss(model: anatomist.HookedTransformer) -> None:
    out = model("the cat sat", return_type="both")
    assert isinstance(out, anatomist.Output)
    expected = torch.nn.functional.cross_entropy(
        out.logits[0, :-1], model.to_tokens("the cat sat")[0, 1:]
    )
    assert torch.allclose(out.loss, expected, atol=1e-6)


def test_model_without_tokenizer_explains() -> None:
    cfg = anatomist.TransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=10)
    with pytest.raises(ValueError, match="no tokenizer"):
        anatomist.HookedTransformer(cfg)("hello")
