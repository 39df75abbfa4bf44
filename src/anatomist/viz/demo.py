"""The `anatomist demo` report: the demo's results as pictures, in one offline HTML page."""

from __future__ import annotations

from typing import Any

import torch

from anatomist.viz.attention import attention_patterns
from anatomist.viz.lens import logit_lens
from anatomist.viz.plots import bar, heatmap, token_values
from anatomist.viz.report import Report

# (clean prompt, corrupted prompt, indirect object, subject): the corrupted prompt names the IO
# as the subject of the last clause, so the right answer flips while one token changes
# (docs/guide-ioi.md uses the same construction).
DEFAULT_IOI = (
    "When Mary and John met, John gave a book to",
    "When Mary and John met, Mary gave a book to",
    " Mary",
    " John",
)


def demo_report(
    model: Any,
    prompt: str = "The capital of France is",
    answer: str = " Paris",
    seq_len: int = 40,
    *,
    induction: Any = None,
    ioi: tuple[str, str, str, str] | None = DEFAULT_IOI,
) -> Report:
    """Build the demo's report for `model`: top predictions for `prompt`, the logit lens of
    `answer`, the induction score grid and the strongest induction head's attention (with the
    per-token loss) on a random sequence of `seq_len` tokens repeated once, and a residual-stream
    patching heatmap with direct logit attribution on the `ioi` prompt pair (None leaves it out).

    `induction` is an `InductionResult` the caller already has (computed again when None).
    """
    from anatomist.analysis.evals import induction_scores, repeated_random_tokens
    from anatomist.analysis.logit_lens import top_predictions

    name = model.cfg.model_name
    report = Report(
        f"anatomist demo: {name}",
        intro=f"{name}: {model.cfg.n_layers} layers, {model.cfg.n_heads} heads per layer, "
        f"d_model {model.cfg.d_model}. Every picture is inline: the page loads nothing from the "
        "network. Hover over cells, bars and tokens for their values.",
    )
    with torch.no_grad():
        top = top_predictions(model, prompt, k=10)
        report.add(
            f"Top next-token predictions for {prompt!r}",
            bar([p for _, p in top], [repr(t) for t, _ in top], value_label="probability"),
        )

        _, cache = model.run_with_cache(prompt, names_filter=lambda n: "resid" in n)
        report.add(
            f"Logit lens: rank of {answer!r} after each layer",
            logit_lens(model, cache, answer, tokens=model.to_str_tokens(prompt), mode="rank"),
            note="Each row is the residual stream before a block, read through the final norm "
            "and unembedding (the last row is the model's output); 0 = top prediction. The "
            "tooltip of a cell lists its top tokens.",
        )

        result = induction if induction is not None else induction_scores(model, seq_len=seq_len)
        n_heads = result.scores.shape[1]
        report.add(
            f"Induction heads on a random sequence of {seq_len} tokens, repeated once",
            heatmap(
                result.scores,
                [f"H{h}" for h in range(n_heads)],
                [f"L{layer}" for layer in range(result.scores.shape[0])],
                x_title="head",
                y_title="layer",
                scale="sequential",
                vmin=0.0,
                vmax=1.0,
            ),  # fmt: skip
            note="Score = mean attention from a token in the second repeat to the token that "
            "followed its previous occurrence.",
        )
        layer, head, score = result.top_heads(1)[0]
        tokens = repeated_random_tokens(model, seq_len)  # the sequence induction_scores scored
        loss, seq_cache = model.run_with_cache(
            tokens,
            return_type="loss",
            loss_per_token=True,
            names_filter=f"blocks.{layer}.attn.hook_pattern",
        )
        str_tokens = model.to_str_tokens(tokens[0])
        report.add(
            f"The strongest induction head, L{layer}H{head} (score {score:.2f}), on that sequence",
            attention_patterns(
                str_tokens,
                seq_cache["pattern", layer][0],
                [f"L{layer}H{h}" for h in range(n_heads)],
                selected=[head],
            ),
            token_values(
                str_tokens[1:],
                loss[0],
                scale="sequential",
                vmin=0.0,
                title="Loss of predicting each token (lower in the second repeat)",
            ),  # fmt: skip
            note=f"Rows: the attending (query) token; columns: the token it reads. An induction "
            "head draws an off-diagonal stripe in the second half. Tick other heads of layer "
            f"{layer} to compare; hover a token or a cell to highlight its row and column.",
        )
        if ioi is not None:
            _add_ioi(report, model, *ioi)
    return report


def _add_ioi(report: Report, model: Any, clean: str, corrupted: str, io: str, s: str) -> None:
    """Residual-stream activation patching (and direct logit attribution) on one prompt pair."""
    from anatomist.analysis.patching import get_act_patch_resid_pre

    heading = "Activation patching of the residual stream (indirect object identification)"
    clean_tokens, corrupted_tokens = model.to_tokens(clean), model.to_tokens(corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        report.add(heading, note="Left out: the two prompts tokenize to different lengths.")
        return
    differ = (clean_tokens[0] != corrupted_tokens[0]).nonzero()
    io_id, s_id = model.to_single_token(io), model.to_single_token(s)
    if differ.numel() == 0 or io_id == s_id:
        report.add(heading, note="Left out: the tokenizer maps the two names to one token.")
        return

    def logit_diff(logits: torch.Tensor) -> torch.Tensor:
        return logits[0, -1, io_id] - logits[0, -1, s_id]

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    clean_diff, corrupted_diff = logit_diff(clean_logits), logit_diff(model(corrupted_tokens))
    span = float(clean_diff - corrupted_diff)
    if abs(span) < 1e-6:
        report.add(heading, note="Left out: the clean and corrupted logit differences are equal.")
        return

    def metric(logits: torch.Tensor) -> torch.Tensor:  # 0 = corrupted run, 1 = clean run
        return (logit_diff(logits) - corrupted_diff) / span

    n_layers = model.cfg.n_layers
    # The changed name and the last position: earlier positions hold the same stream in both
    # runs, and the ones between carry little (docs/guide-ioi.md); two columns keep it quick.
    positions = sorted({int(differ[0, 0]), clean_tokens.shape[1] - 1})
    layers = sorted({*range(0, n_layers, 3), n_layers - 1})  # as docs/guide-ioi.md
    cells = [(layer, p) for layer in layers for p in positions]
    result = get_act_patch_resid_pre(
        model,
        corrupted_tokens,
        clean_cache,
        metric,
        index_df=cells,
        batch_size=len(cells),
        progress=False,
    ).reshape(len(layers), len(positions))  # fmt: skip  (one forward pass)
    str_tokens = model.to_str_tokens(clean_tokens[0])
    stack, labels = clean_cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    attrs = clean_cache.logit_attrs(stack, io_id, s_id, pos_slice=-1)[:, 0]
    report.add(
        heading,
        heatmap(
            result,
            [f"{p} {str_tokens[p]!r}" for p in positions],
            [f"L{layer}" for layer in layers],
            x_title="position",
            y_title="resid_pre of layer",
        ),  # fmt: skip
        bar(
            attrs,
            labels,
            value_label=f"logit({io!r}) - logit({s!r})",
            title="Direct logit attribution of the clean logit difference",
        ),  # fmt: skip
        note=f"Clean {clean!r} (logit difference {float(clean_diff):.2f}) against corrupted "
        f"{corrupted!r} ({float(corrupted_diff):.2f}). Each cell runs the corrupted prompt with "
        "one residual-stream vector (every third layer's resid_pre, and the last's) patched in from "
        "the clean run: 1 restores the clean logit "
        "difference, 0 leaves the corrupted one. Shown: the changed name and the last position "
        "(earlier positions hold the same stream in both runs). The bars split the clean logit "
        "difference at the last position into what each component wrote.",
    )
