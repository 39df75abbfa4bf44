"""head_detector.detect_head: detection patterns, scores on hand-built models and caches, and
induction heads found in a toy model trained here."""

from __future__ import annotations

import pytest
import torch

import anatomist
from anatomist.analysis.head_detector import (
    SEQ_LEN_ERR,
    HeadDetectionError,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)
from tests.helpers import gpt2_like, tiny_tokenizer

# --- detection patterns ---------------------------------------------------------------------------


def test_detection_patterns_by_hand() -> None:
    tokens = torch.tensor([[5, 7, 5, 9, 7, 5]])
    prev = get_previous_token_head_detection_pattern(tokens)
    assert torch.equal(prev, torch.diag(torch.ones(5), -1))
    dup = get_duplicate_token_head_detection_pattern(tokens)
    expected_dup = torch.zeros(6, 6)
    for q, k in [(2, 0), (4, 1), (5, 0), (5, 2)]:  # earlier copies of the same token
        expected_dup[q, k] = 1
    assert torch.equal(dup, expected_dup)
    ind = get_induction_head_detection_pattern(tokens)
    expected_ind = torch.zeros(6, 6)
    for q, k in [(2, 1), (4, 2), (5, 1), (5, 3)]:  # the token after each earlier copy
        expected_ind[q, k] = 1
    assert torch.equal(ind, expected_ind)


# --- a hand-built previous-token head -------------------------------------------------------------

N = 8  # positions; the sequence fills the whole context (the classic refused seq_len == n_ctx)


def _previous_token_model() -> anatomist.HookedTransformer:
    """One attention layer: head 0 attends from each position to the one before it (position
    0 to itself, its only key); head 1 has zero queries and keys, so it attends uniformly."""
    cfg = anatomist.TransformerConfig(
        n_layers=1, d_model=N, n_ctx=N, d_head=N, n_heads=2, d_vocab=5, attn_only=True,
        normalization_type=None, seed=0,
    )  # fmt: skip
    model = anatomist.HookedTransformer(cfg)
    c = 10.0  # score c**2 / sqrt(d_head) ~ 35: the softmax is one-hot to ~1e-15
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.pos_embed.W_pos.copy_(torch.eye(N))  # residual at position i: e_i
        model.blocks[0].attn.W_Q[0].copy_(c * torch.diag(torch.ones(N - 1), -1))  # q_i = c e_{i-1}
        model.blocks[0].attn.W_K[0].copy_(c * torch.eye(N))  # k_j = c e_j
    return model


def test_hand_built_previous_token_head_scores() -> None:
    model = _previous_token_model()
    tokens = torch.zeros(N, dtype=torch.long)
    scores = detect_head(model, tokens, "previous_token_head")
    assert scores.shape == (1, 2) and scores.dtype == torch.float32
    # Head 0: every row but the first puts all its attention on the previous token.
    assert scores[0, 0].item() == pytest.approx((N - 1) / N, abs=1e-6)
    # Head 1, uniform: row i gives 1 / (i + 1) to the previous token.
    uniform = sum(1 / (i + 1) for i in range(1, N)) / N
    assert scores[0, 1].item() == pytest.approx(uniform, abs=1e-6)

    # Without BOS, row 0 (and row 1, whose previous token is BOS) drop out: head 0 is perfect.
    no_bos = detect_head(model, tokens, "previous_token_head", exclude_bos=True)
    assert no_bos[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    uniform_no_bos = sum(1 / (i + 1) for i in range(2, N)) / sum(i / (i + 1) for i in range(N))
    assert no_bos[0, 1].item() == pytest.approx(uniform_no_bos, abs=1e-6)
    # Without the current token, row 0's attention (to itself) drops out as well.
    no_self = detect_head(model, tokens, "previous_token_head", exclude_current_token=True)
    assert no_self[0, 0].item() == pytest.approx(1.0, abs=1e-6)

    # abs: 1 - sum|pattern - detection| / N; head 0 differs only in row 0 (1 on the diagonal).
    abs_scores = detect_head(model, tokens, "previous_token_head", error_measure="abs")
    assert abs_scores[0, 0].item() == pytest.approx(1 - round(1 / N, 3), abs=1e-6)
    abs_no_bos = detect_head(
        model, tokens, "previous_token_head", error_measure="abs", exclude_bos=True
    )
    assert abs_no_bos[0, 0].item() == pytest.approx(1.0, abs=1e-6)
    # Head 0 is no duplicate-token head on distinct tokens (nothing to match).
    distinct = torch.arange(N) % 5
    assert detect_head(model, distinct[:5], "duplicate_token_head")[0, 0].item() == 0.0


# --- scores from a given cache --------------------------------------------------------------------


def _known_cache(n: int) -> dict[str, torch.Tensor]:
    """Patterns of gpt2_like (2 layers x 4 heads): L0H0 previous-token, L0H1 all on BOS, the rest
    uniform; layer 0 stored without a batch axis, layer 1 with one."""
    uniform = torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]
    prev = torch.diag(torch.ones(n - 1), -1)
    prev[0, 0] = 1.0
    bos = torch.zeros(n, n)
    bos[:, 0] = 1.0
    layer0 = torch.stack([prev, bos, uniform, uniform])
    layer1 = torch.stack([uniform, uniform, prev, uniform])[None]
    return {"blocks.0.attn.hook_pattern": layer0, "blocks.1.attn.hook_pattern": layer1}


def test_scores_from_a_cache_with_known_patterns() -> None:
    model = gpt2_like()
    n = 6
    tokens = torch.arange(n)
    cache = _known_cache(n)
    before = {k: v.clone() for k, v in cache.items()}
    scores = detect_head(model, tokens, "previous_token_head", cache=cache)
    assert scores.shape == (2, 4)
    uniform = sum(1 / (i + 1) for i in range(1, n)) / n
    expected = torch.tensor(
        [[(n - 1) / n, 1 / n, uniform, uniform], [uniform, uniform, (n - 1) / n, uniform]]
    )
    torch.testing.assert_close(scores, expected)
    # A head with all its attention on BOS has nothing left to score without BOS (0 / 0).
    no_bos = detect_head(model, tokens, "previous_token_head", cache=cache, exclude_bos=True)
    assert torch.isnan(no_bos[0, 1]) and no_bos[0, 0].item() == pytest.approx(1.0)
    # The classic zeroed the cached patterns in place; the cache is untouched here.
    for key, value in before.items():
        assert torch.equal(cache[key], value)

    # Only the asked heads are scored; the others are -1. Both classic forms of `heads`.
    some = detect_head(model, tokens, "previous_token_head", heads=[(0, 0), (1, 2)], cache=cache)
    same = detect_head(model, tokens, "previous_token_head", heads={0: [0], 1: [2]}, cache=cache)
    assert torch.equal(some, same)
    assert some[0, 0] == expected[0, 0] and some[1, 2] == expected[1, 2]
    mask = torch.ones(2, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 2] = False
    assert (some[mask] == -1).all()


def test_custom_pattern_and_abs_measure() -> None:
    model = gpt2_like()
    n = 5
    cache = _known_cache(n)
    half = 0.5 * torch.diag(torch.ones(n - 1), -1) + 0.5 * torch.eye(n)  # half back, half self
    half[0, 0] = 1.0
    cache["blocks.1.attn.hook_pattern"][0, 3] = half
    scores = detect_head(model, torch.arange(n), half, cache=cache, error_measure="abs")
    assert scores[1, 3].item() == pytest.approx(1.0)
    assert (scores[1, :3] < 1).all()
    # 'mul' reads fractions as weights and says so.
    with pytest.warns(UserWarning, match="other than 0 and 1"):
        detect_head(model, torch.arange(n), half, cache=cache)


def test_real_forward_matches_cached_patterns_and_lists_average() -> None:
    model = anatomist.HookedTransformer(gpt2_like().cfg, tokenizer=tiny_tokenizer())
    text = "the cat sat on the mat and the cat ran"
    _, cache = model.run_with_cache(text)
    from_cache = detect_head(model, text, "induction_head", cache=cache)
    fresh = detect_head(model, text, "induction_head")
    torch.testing.assert_close(from_cache, fresh)
    # Hand formula on the cached patterns: attention on the induction targets / all attention.
    target = get_induction_head_detection_pattern(model.to_tokens(text)[0])
    pattern = cache["pattern", 1][0]
    by_hand = (pattern * target).sum((-1, -2)) / pattern.sum((-1, -2))
    torch.testing.assert_close(fresh[1], by_hand)

    # A list of texts: each scored on its own (options passed on), then averaged.
    texts = ["the cat sat on the mat the cat", "a dog ran to a big house a dog"]
    for kwargs in ({}, {"exclude_bos": True}, {"error_measure": "abs"}):
        each = [detect_head(model, t, "duplicate_token_head", **kwargs) for t in texts]
        together = detect_head(model, texts, "duplicate_token_head", **kwargs)
        torch.testing.assert_close(together, torch.stack(each).mean(0))
    assert not torch.allclose(
        detect_head(model, texts, "duplicate_token_head"),
        detect_head(model, texts, "duplicate_token_head", exclude_bos=True),
    )
    # Token rows [batch, pos] likewise.
    rows = torch.randint(4, 30, (3, 7))
    each = [detect_head(model, row, "previous_token_head") for row in rows]
    torch.testing.assert_close(
        detect_head(model, rows, "previous_token_head"), torch.stack(each).mean(0)
    )


def test_errors_say_what_is_wrong() -> None:
    """Each error says what is wrong; all are HeadDetectionError, a ValueError that is also the
    AssertionError the classic raised."""
    assert issubclass(HeadDetectionError, ValueError) and issubclass(
        HeadDetectionError, AssertionError
    )
    model = gpt2_like()
    tokens = torch.arange(6)
    with pytest.raises(HeadDetectionError, match="one of"):
        detect_head(model, tokens, "copy_head")
    with pytest.raises(HeadDetectionError, match="error_measure"):
        detect_head(model, tokens, "induction_head", error_measure="max")
    with pytest.raises(HeadDetectionError, match="lower triangular"):
        detect_head(model, tokens, torch.ones(6, 6))
    with pytest.raises(HeadDetectionError, match="sequence_length=6"):
        detect_head(model, tokens, torch.eye(5))
    with pytest.raises(HeadDetectionError, match="context window") as caught:
        detect_head(model, torch.arange(model.cfg.n_ctx + 1) % 50, "induction_head")
    assert str(caught.value).startswith(SEQ_LEN_ERR)  # the classic message, then the numbers
    with pytest.raises(HeadDetectionError, match="one sequence"):
        detect_head(model, torch.zeros(2, 6, dtype=torch.long), "induction_head", cache={})
    with pytest.raises(HeadDetectionError, match="this sequence"):
        detect_head(model, tokens[:5], "induction_head", cache=_known_cache(6))


# --- induction heads of a toy model trained here --------------------------------------------------

VOCAB, CTX = 64, 24


def _toy_config() -> anatomist.TransformerConfig:
    # Rotary positions in layer 0 (a previous-token head is one relative offset away) and none
    # in layer 1 (NoPE), so layer 1 cannot predict the repeat from positions and has to find it
    # by content: the previous-token -> induction circuit (Olsson et al. 2022).
    return anatomist.TransformerConfig(
        n_layers=2, d_model=32, n_ctx=CTX, d_head=8, n_heads=4, d_vocab=VOCAB, attn_only=True,
        normalization_type=None, positional_embedding_type="rotary", nope_layers=[1], seed=1,
    )  # fmt: skip


def _train_on_repeats(model: anatomist.HookedTransformer, steps: int) -> None:
    """Random tokens repeating with a random period of 5-10, loss on the predictable tokens."""
    gen = torch.Generator().manual_seed(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        period = torch.randint(5, 11, (32, 1), generator=gen)
        segment = torch.randint(0, VOCAB, (32, CTX), generator=gen)
        tokens = segment.gather(1, torch.arange(CTX)[None] % period)
        predictable = (torch.arange(CTX)[None] >= period)[:, 1:]  # target t + 1 repeats
        per_token = model(tokens, return_type="loss", loss_per_token=True)
        loss = per_token[predictable].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_induction_heads_of_a_trained_toy_model() -> None:
    torch.manual_seed(1)
    model = anatomist.HookedTransformer(_toy_config())
    half = torch.randint(0, VOCAB, (4, 10), generator=torch.Generator().manual_seed(123))
    test_tokens = torch.cat([half, half], dim=1)  # 4 sequences of 10 random tokens, twice

    untrained = detect_head(model, test_tokens, "induction_head")
    assert untrained.max() < 0.1

    _train_on_repeats(model, steps=400)
    trained = detect_head(model, test_tokens, "induction_head")
    # At most half the rows (the second copy) can attend to an induction target: 0.5 is perfect.
    assert trained[1].max() > 0.3
    assert trained[1].max() > 4 * untrained.max()
    assert trained[0].max() < 0.2  # layer 0 cannot do induction (it needs a previous layer)
    # ... and the circuit's first half is there: a previous-token head in layer 0.
    previous = detect_head(model, test_tokens, "previous_token_head")
    assert previous[0].max() > 0.4
