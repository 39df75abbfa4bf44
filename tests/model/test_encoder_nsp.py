"""BertNextSentencePrediction (and HookedEncoder's pooler + NSP head) against Hugging Face's
BertForNextSentencePrediction / BertForPreTraining, built from tiny random configs and saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

import anatomist
from anatomist.loading.errors import CheckpointError
from anatomist.model.encoder import BertNextSentencePrediction
from tests.helpers import WORDS, random_tokens, save_tiny

VOCAB = 101


def save_bert(model_class: Any, folder: Path) -> Any:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
    )
    hf = model_class(config)
    save_tiny(hf, folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(WORDS)]
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    return hf


@pytest.fixture(scope="module")
def nsp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, BertNextSentencePrediction, Path]:
    folder = tmp_path_factory.mktemp("bert-nsp")
    hf = save_bert(transformers.BertForNextSentencePrediction, folder)
    return hf, BertNextSentencePrediction.from_pretrained(folder, progress=False), folder


def pair_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two rows, the second right-padded, with sentence B starting at position 5."""
    tokens = random_tokens(VOCAB, 2, 10, seed=3)
    types = torch.zeros_like(tokens)
    types[:, 5:] = 1
    mask = torch.ones_like(tokens)
    mask[1, 8:] = 0
    return tokens, types, mask


def test_logits_match_hugging_face(nsp: tuple[Any, BertNextSentencePrediction, Path]) -> None:
    hf, model, _ = nsp
    assert model.model.has_nsp_head and not model.model.has_mlm_head
    tokens, types, mask = pair_batch()
    ours = model(tokens, token_type_ids=types, one_zero_attention_mask=mask)
    with torch.no_grad():
        theirs = hf(tokens, token_type_ids=types, attention_mask=mask).logits
    assert ours.shape == (2, 2)
    assert (ours - theirs).abs().max() <= 1e-5


def test_text_pair_and_predictions(nsp: tuple[Any, BertNextSentencePrediction, Path]) -> None:
    hf, model, folder = nsp
    pair = [" ".join(WORDS[:4]), " ".join(WORDS[4:7])]
    tokenizer = transformers.BertTokenizer.from_pretrained(folder)
    encoded = tokenizer(*pair, return_tensors="pt")
    tokens, types, mask = model.to_tokens(pair)
    assert torch.equal(tokens, encoded["input_ids"]) and torch.equal(
        types, encoded["token_type_ids"]
    )
    assert torch.equal(mask, encoded["attention_mask"])
    with torch.no_grad():
        theirs = hf(**encoded).logits
    assert (model(pair) - theirs).abs().max() <= 1e-5
    verdict = ["The sentences are sequential", "The sentences are NOT sequential"][
        int(theirs.argmax())
    ]
    assert model(pair, return_type="predictions") == verdict
    assert model.forward(pair, return_type=None) is None


def test_pooler_and_head_hooks(nsp: tuple[Any, BertNextSentencePrediction, Path]) -> None:
    hf, model, _ = nsp
    tokens, types, mask = pair_batch()
    before = model.model.forward
    logits, cache = model.run_with_cache(tokens, token_type_ids=types, one_zero_attention_mask=mask)
    assert model.model.forward == before and "forward" not in vars(model.model)
    assert isinstance(cache, anatomist.ActivationCache) and cache.model is model
    with torch.no_grad():
        out = hf.bert(tokens, token_type_ids=types, attention_mask=mask)
    assert (cache["pooler.hook_pooler_out"] - out.pooler_output).abs().max() <= 1e-5
    assert torch.equal(cache["nsp_head.hook_nsp_out"], logits)
    assert (
        cache["blocks.1.hook_normalized_resid_post"] - out.last_hidden_state
    ).abs().max() <= 1e-5
    _, raw = model.run_with_cache(
        tokens,
        token_type_ids=types,
        return_cache_object=False,
        names_filter="pooler.hook_pooler_out",
    )
    assert isinstance(raw, dict) and list(raw) == ["pooler.hook_pooler_out"]

    flipped = model.model.run_with_hooks(
        tokens,
        return_type="embeddings",
        token_type_ids=types,
        fwd_hooks=[("nsp_head.hook_nsp_out", lambda x, hook: -x)],
    )
    assert flipped.shape == (2, 10, 32)  # forward runs no NSP head, so the hook never fires
    with model.model.hooks(fwd_hooks=[("nsp_head.hook_nsp_out", lambda x, hook: -x)]):
        negated = model(tokens, token_type_ids=types, one_zero_attention_mask=mask)
    assert (negated + logits).abs().max() <= 1e-6  # cached and fused attention differ by rounding


def test_pretraining_checkpoint_has_both_heads(tmp_path: Path) -> None:
    hf = save_bert(transformers.BertForPreTraining, tmp_path)
    encoder = anatomist.HookedEncoder.from_pretrained(tmp_path, progress=False)
    assert encoder.has_mlm_head and encoder.has_nsp_head
    tokens, types, _ = pair_batch()
    with torch.no_grad():
        out = hf(tokens, token_type_ids=types)
    assert (encoder(tokens, token_type_ids=types) - out.prediction_logits).abs().max() <= 1e-5
    nsp = BertNextSentencePrediction(encoder)
    assert (nsp(tokens, token_type_ids=types) - out.seq_relationship_logits).abs().max() <= 1e-5
    # A head turned off is not read; the rest of the checkpoint still loads.
    lean = anatomist.HookedEncoder.from_pretrained(
        tmp_path, progress=False, mlm_head=False, nsp_head=False
    )
    assert not hasattr(lean, "pooler") and not hasattr(lean, "mlm_head")
    with torch.no_grad():
        last = hf.bert(tokens, token_type_ids=types).last_hidden_state
    assert (lean.encoder_output(tokens, types) - last).abs().max() <= 1e-5
    with pytest.raises(ValueError, match="no next-sentence head"):
        BertNextSentencePrediction(lean)


def test_masked_lm_checkpoint_has_no_nsp_head(tmp_path: Path) -> None:
    save_bert(transformers.BertForMaskedLM, tmp_path)
    encoder = anatomist.HookedEncoder.from_pretrained(tmp_path, progress=False)
    assert not encoder.has_nsp_head and not hasattr(encoder, "nsp_head")
    with pytest.raises(CheckpointError, match="pooler.W"):
        anatomist.HookedEncoder.from_pretrained(tmp_path, progress=False, nsp_head=True)


def test_random_init_has_the_classic_heads() -> None:
    cfg = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20, act_fn="gelu", seed=0
    )
    encoder = anatomist.HookedEncoder(cfg)
    assert encoder.pooler.W.shape == (16, 16) and encoder.nsp_head.W.shape == (16, 2)
    tokens = random_tokens(20, 3, 6)
    types = torch.zeros_like(tokens)
    resid = encoder.encoder_output(tokens, types)
    expected = torch.tanh(resid[:, 0] @ encoder.pooler.W + encoder.pooler.b)
    expected = expected @ encoder.nsp_head.W + encoder.nsp_head.b
    logits = BertNextSentencePrediction(encoder)(tokens, token_type_ids=types)
    assert (logits - expected).abs().max() <= 1e-6
    verdicts = BertNextSentencePrediction(encoder)(tokens, "predictions", types)
    assert isinstance(verdicts, list) and len(verdicts) == 3


def test_bad_input() -> None:
    cfg = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20, act_fn="gelu"
    )
    nsp = BertNextSentencePrediction(anatomist.HookedEncoder(cfg))
    tokens = random_tokens(20, 1, 5)
    with pytest.raises(ValueError, match="without specifying token_type_ids"):
        nsp(tokens)
    with pytest.raises(ValueError, match="exactly two sentences"):
        nsp.to_tokens(["one", "two", "three"])
    with pytest.raises(ValueError, match="no tokenizer"):
        nsp(["one", "two"])
    with pytest.raises(ValueError, match="return_type"):
        nsp(tokens, return_type="embeddings", token_type_ids=torch.zeros_like(tokens))
