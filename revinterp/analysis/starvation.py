"""Embedding starvation: did the subject of a held-out question ever get trained as an input?

In the seed experiment each entity belongs to one pair, so the subject ``b_i`` of a held-out reverse
question ``b_i <-`` never appears as an input in training: its input embedding gets no gradient
(only weight decay moves it) and its answer's unembedding is only pushed down. The reverse then
fails for a reason that says nothing about how facts are stored. This module measures it:

- *inputs*: a token is an input of a trained statement when a loss position sees it, i.e. it sits
  anywhere but the last position (the loss reads logits up to the second-to-last position);
  a held-out question is *starved* when no token of its subject is ever an input;
- *movement*: ``|W_E[t] - W_E^0[t]|`` and ``|W_U[:, t] - W_U^0[:, t]|`` between the first and the last
  checkpoint of a run, per entity (mean over its tokens);
- *gradient*: the norm of the full-batch training-loss gradient on those rows, summed over the
  run's checkpoints (a Riemann sum of how much gradient the row received, on the log-spaced grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from revinterp.analysis.checkpoints import as_loaded_run, iter_checkpoints
from revinterp.data import FactSet, Statement, encode_statements
from revinterp.data.tokenizer import encode_words
from revinterp.models import LoadedRun
from revinterp.training import batch_loss, list_checkpoints, read_training_config


def token_input_counts(facts: FactSet, tokenizer) -> Int[Tensor, " d_vocab"]:
    """How many trained statements see each token as an input (every position but the last)."""
    encoded = encode_statements(facts, facts.train, tokenizer)
    lengths = encoded.prompt_lengths + encoded.answer_lengths
    seen = torch.arange(encoded.tokens.shape[1])[None] < (lengths[:, None] - 1)
    counts = torch.zeros(len(tokenizer), dtype=torch.long)
    counts.index_add_(0, encoded.tokens[seen], torch.ones(int(seen.sum()), dtype=torch.long))
    return counts


def starved_questions(facts: FactSet, tokenizer) -> tuple[Statement, ...]:
    """Held-out statements none of whose subject tokens is ever an input in training."""
    counts = token_input_counts(facts, tokenizer)
    return tuple(
        s for s in facts.split("held_out")
        if all(counts[t] == 0 for t in encode_words(tokenizer, s.subject.split()))
    )


@dataclass(frozen=True)
class StarvationReport:
    """Per entity: input count (of its least-seen token), movement and received gradient of its
    embedding and unembedding (mean over its tokens)."""

    entities: tuple[str, ...]
    input_count: Int[Tensor, " entity"]
    embed_shift: Float[Tensor, " entity"]
    unembed_shift: Float[Tensor, " entity"]
    embed_gradient: Float[Tensor, " entity"]
    unembed_gradient: Float[Tensor, " entity"]
    starved: tuple[Statement, ...]
    roles: dict[str, tuple[str, ...]]  # role name -> entities in that role (e.g. held-out subjects)

    def role_means(self) -> dict[str, dict[str, int | float]]:
        """Mean of every quantity over the entities of each role."""
        index = {e: i for i, e in enumerate(self.entities)}
        out = {}
        for role, entities in self.roles.items():
            if not entities:
                continue
            rows = torch.tensor([index[e] for e in entities])
            out[role] = {
                "n": len(rows),
                "input_count": self.input_count[rows].double().mean().item(),
                "embed_shift": self.embed_shift[rows].mean().item(),
                "unembed_shift": self.unembed_shift[rows].mean().item(),
                "embed_gradient": self.embed_gradient[rows].mean().item(),
                "unembed_gradient": self.unembed_gradient[rows].mean().item(),
            }
        return out

    def to_frame(self):
        import pandas as pd

        role_of: dict[str, list[str]] = {}
        for role, entities in self.roles.items():
            for e in entities:
                role_of.setdefault(e, []).append(role)
        return pd.DataFrame({
            "entity": self.entities,
            "roles": [",".join(role_of.get(e, [])) for e in self.entities],
            "input_count": self.input_count.tolist(),
            "embed_shift": self.embed_shift.tolist(),
            "unembed_shift": self.unembed_shift.tolist(),
            "embed_gradient": self.embed_gradient.tolist(),
            "unembed_gradient": self.unembed_gradient.tolist(),
        })

    def summary(self) -> str:
        lines = [f"{len(self.starved)} held-out question(s) whose subject never appears as an input in training"]
        lines.append(f"{'role':<28}{'n':>5}{'inputs':>9}{'|dW_E|':>9}{'|dW_U|':>9}{'sum|gW_E|':>11}{'sum|gW_U|':>11}")
        for role, m in self.role_means().items():
            lines.append(f"{role:<28}{m['n']:>5}{m['input_count']:>9.1f}{m['embed_shift']:>9.3f}"
                         f"{m['unembed_shift']:>9.3f}{m['embed_gradient']:>11.3g}{m['unembed_gradient']:>11.3g}")
        return "\n".join(lines)

    def plot(self):
        """Bars: embedding and unembedding movement per role."""
        import plotly.graph_objects as go

        means = self.role_means()
        fig = go.Figure()
        for key, name in (("embed_shift", "|W_E - W_E(0)|"), ("unembed_shift", "|W_U - W_U(0)|")):
            fig.add_bar(x=list(means), y=[m[key] for m in means.values()], name=name)
        fig.update_layout(title="How far each role's (un)embedding moved in training", barmode="group",
                          yaxis_title="L2 distance from initialization")
        return fig


def entity_roles(facts: FactSet) -> dict[str, tuple[str, ...]]:
    """Entities by role: subjects and answers of held-out questions, and subjects of trained ones."""
    roles = {
        "held_out_subject": {s.subject for s in facts.split("held_out")},
        "held_out_answer": {s.object for s in facts.split("held_out")},
        "trained_subject": {s.subject for s in facts.train if s.direction in ("forward", "reverse")},
    }
    return {k: tuple(sorted(v)) for k, v in roles.items()}


def starvation_report(run: str | Path | LoadedRun, *, device=None) -> StarvationReport:
    """The starvation diagnostic of a trained run (reads its checkpoints).

    Args:
        run: a run directory written by :func:`revinterp.training.train`, or a loaded run (its model is left as
            it is: the checkpoints go into a separate one, :func:`~revinterp.analysis.checkpoints.iter_checkpoints`).
        device: where to load the model (default the loaded run's device, or
            :func:`revinterp.models.default_device`).

    Example:
        >>> print(starvation_report("runs/seed0").summary())                             # doctest: +SKIP
    """
    run = as_loaded_run(run, device=device)
    facts, tok = run.facts, run.tokenizer
    checkpoints = list_checkpoints(run.path)
    if len(checkpoints) < 2:
        raise ValueError(f"{run.path}: {len(checkpoints)} checkpoint(s); expected the initial and at least one more")
    loss_kind = read_training_config(run.path).loss
    data = encode_statements(facts, facts.train, tok)
    entities = tuple(sorted({s.subject for s in facts.statements} | {s.object for s in facts.statements}))
    token_rows = [torch.tensor(encode_words(tok, e.split())) for e in entities]

    def per_entity(rows: Tensor) -> Tensor:  # [d_vocab] -> [entity], mean over each entity's tokens
        return torch.stack([rows[t].mean() for t in token_rows])

    embed_grad = torch.zeros(len(tok))
    unembed_grad = torch.zeros(len(tok))
    weights = {}
    for step, model in iter_checkpoints(run, device=device):
        embed = model.embed._original_component.weight
        unembed = model.unembed._original_component.weight
        weights[step] = (embed.detach().cpu().clone(), unembed.detach().cpu().clone())
        model.zero_grad(set_to_none=True)
        batch_loss(model, data.to(embed.device), loss_kind).backward()
        embed_grad += embed.grad.norm(dim=-1).cpu()
        unembed_grad += unembed.grad.norm(dim=-1).cpu()
    first, last = weights[checkpoints[0][0]], weights[checkpoints[-1][0]]
    inputs = token_input_counts(facts, tok)
    return StarvationReport(
        entities=entities,
        input_count=torch.stack([inputs[t].min() for t in token_rows]),
        embed_shift=per_entity((last[0] - first[0]).norm(dim=-1)),
        unembed_shift=per_entity((last[1] - first[1]).norm(dim=-1)),
        embed_gradient=per_entity(embed_grad),
        unembed_gradient=per_entity(unembed_grad),
        starved=starved_questions(facts, tok),
        roles=entity_roles(facts),
    )
