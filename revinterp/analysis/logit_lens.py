"""The logit lens: how early the answer can be read from the residual stream at the last position.

The residual stream before each layer and after the last one is read through ``ln_final`` (statistics
recomputed for that stream) and the unembedding (nostalgebraist 2020, "interpreting GPT: the logit lens"),
giving the answer's log-probability and rank at each depth::

    logprob_l = log softmax(W_U ln_final(resid_pre[l]) + b_U)[answer]

The last row reads the final residual stream and reproduces the model's own output.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revinterp.analysis.checks import check_eval, check_model_and_pairs
from revinterp.analysis.prompts import PromptPairs
from revinterp.evaluation import model_device
from revinterp.stats import bootstrap_ci


@dataclass(frozen=True)
class LogitLensResult:
    """The answer's log-probability and rank when the residual stream is read early, per example.

    Row ``l < n_layers`` reads ``resid_pre`` of layer ``l`` (row 0: the embeddings alone); the last row
    reads the final residual stream and reproduces the model's own output.

    Attributes:
        logprob: ``log softmax(unembed(ln_final(resid)))[answer]``.
        rank: 1 + the number of vocabulary tokens with a strictly larger logit (1 = top prediction).
        labels: ``"L0 resid_pre"``, ..., ``"final"``.
        answers: the answer token per example.
        statements: the statements, one per example (empty when not known).
    """

    logprob: Float[Tensor, "layer batch"]
    rank: Int[Tensor, "layer batch"]
    labels: tuple[str, ...]
    answers: Int[Tensor, " batch"]
    statements: tuple = ()

    @property
    def accuracy(self) -> Float[Tensor, " layer"]:
        """Fraction of examples whose answer is the top prediction at each depth."""
        return (self.rank == 1).double().mean(-1)

    def to_frame(self):
        """One row per (depth, example): ``depth, stage, example, logprob, probability, rank``."""
        import pandas as pd

        n_layers, n = self.logprob.shape
        logprob = self.logprob.detach().cpu()
        return pd.DataFrame({
            "depth": [d for d in range(n_layers) for _ in range(n)],
            "stage": [label for label in self.labels for _ in range(n)],
            "example": list(range(n)) * n_layers,
            "logprob": logprob.flatten().tolist(),
            "probability": logprob.exp().flatten().tolist(),
            "rank": self.rank.cpu().flatten().tolist(),
        })

    def plot(self):
        """Plotly lines over depth: mean answer log-probability (95 % bootstrap band) and top-1 accuracy."""
        from plotly.subplots import make_subplots

        estimates = [bootstrap_ci(row) for row in self.logprob.detach().cpu()]
        x = list(self.labels)
        fig = make_subplots(rows=1, cols=2, subplot_titles=("answer log-probability", "answer is top-1"))
        fig.add_scatter(x=x + x[::-1], y=[e.high for e in estimates] + [e.low for e in estimates][::-1],
                        fill="toself", line=dict(width=0), opacity=0.3, name="95% CI", row=1, col=1)
        fig.add_scatter(x=x, y=[e.mean for e in estimates], mode="lines+markers", name="mean log p", row=1, col=1)
        fig.add_scatter(x=x, y=self.accuracy.tolist(), mode="lines+markers", name="accuracy", row=1, col=2)
        fig.update_yaxes(range=[0, 1.05], row=1, col=2)
        fig.update_layout(title=f"Logit lens at the answer position ({self.logprob.shape[1]} examples)")
        return fig

    def summary(self) -> str:
        lines = [f"logit lens ({self.logprob.shape[1]} examples): mean log p(answer), top-1 accuracy, median rank"]
        for i, label in enumerate(self.labels):
            lines.append(
                f"  {label:<14}{str(bootstrap_ci(self.logprob[i].detach().cpu())):<28}"
                f"{100 * self.accuracy[i].item():6.1f}%{self.rank[i].median().item():>8}"
            )
        return "\n".join(lines)


def logit_lens(
    model,
    pairs_or_tokens: PromptPairs | Int[Tensor, "batch pos"],
    answers: Int[Tensor, " batch"] | None = None,
) -> LogitLensResult:
    """The answer's log-probability and rank read from the residual stream before every layer and at the end.

    Each ``resid_pre`` and the final ``resid_post`` at the last position go through the model's
    ``ln_final`` (statistics recomputed for that stream) and unembedding (nostalgebraist 2020, "the
    logit lens"), via :func:`transformer_lens.tools.analysis.logit_lens`. The final row equals the
    model's own log-probabilities.

    Args:
        model: a ``TransformerBridge`` in eval mode (no compatibility mode needed).
        pairs_or_tokens: prompt pairs (their clean prompts are read) or a ``[batch, pos]`` token tensor.
        answers: answer token per prompt; default the pairs' clean answers (required with tokens).

    Example:
        >>> lens = logit_lens(run.model, pairs)           # doctest: +SKIP
        >>> lens.accuracy                                 # doctest: +SKIP
    """
    from transformer_lens.tools.analysis import logit_lens as tl_logit_lens

    statements: tuple = ()
    if isinstance(pairs_or_tokens, PromptPairs):
        check_model_and_pairs(model, pairs_or_tokens, "logit_lens", min_pairs=1, same_device=False)
        tokens, statements = pairs_or_tokens.clean, pairs_or_tokens.statements
        answers = pairs_or_tokens.clean_answer if answers is None else answers
    else:
        tokens = pairs_or_tokens
        check_eval(model, "logit_lens")
        if answers is None:
            raise ValueError("logit_lens got a token tensor but no answers; expected one answer token per prompt")
    if answers.shape != (tokens.shape[0],):
        raise ValueError(f"answers have shape {tuple(answers.shape)}; expected ({tokens.shape[0]},), one per prompt")
    device = model_device(model)
    with torch.no_grad():
        lens = tl_logit_lens(model, tokens.to(device), targets=answers.to(device), return_type="log_probs")
    labels = tuple(f"L{label.split('_')[0]} resid_pre" if label.endswith("_pre") else "final" for label in lens.labels)
    return LogitLensResult(
        logprob=lens.values[..., 0].detach(), rank=lens.rank_trajectory() + 1, labels=labels,
        answers=answers.detach(), statements=statements,
    )
