"""Embedding starvation, on both sides: was a held-out question's subject ever an input in training, and was its
answer ever a training target?

In the seed experiment each entity belongs to one pair, so the subject ``b_i`` of a held-out reverse
question ``b_i <-`` never appears as an input in training: its input embedding gets no gradient
(only weight decay moves it) (*input side*); and its answer ``a_i`` is never a training target, so its
unembedding is only ever pushed down (*answer side*). Either alone makes the held-out reverse fail for a
reason that says nothing about how facts are stored. This module measures both:

- *inputs*: a token is an input of a trained statement when a loss position sees it, i.e. it sits
  anywhere but the last position (the loss reads logits up to the second-to-last position);
  a held-out question is *input-starved* when no token of its subject is ever an input
  (:func:`starved_questions`);
- *targets*: a token is a target of a trained statement when the training loss predicts it (the answer
  tokens for ``loss="answer"``, every token after ``<bos>`` for ``loss="sequence"``); a held-out question is
  *answer-starved* when no token of its answer is ever a target (:func:`answer_starved_questions`);
- *movement*: ``|W_E[t] - W_E^0[t]|`` and ``|W_U[:, t] - W_U^0[:, t]|`` between the first and the last
  checkpoint of a run, per entity (mean over its tokens);
- *gradient*: the norm of the full-batch training-loss gradient on those rows, summed over the
  run's checkpoints (a Riemann sum of how much gradient the row received, on the log-spaced grid);
- *pull and push*: the cross-entropy gradient on an unembedding column ``W_U[:, t]`` splits exactly into a
  *pull* ``-sum_{positions with target t} h`` (from ``-logit_target``, raises ``t``'s logit where it is the
  answer) and a *push* ``sum_{all positions} p_t h`` (from ``logsumexp``, lowers it everywhere); their norms,
  summed over checkpoints like the gradient, are ``unembed_pull`` and ``unembed_push``. A token that is never
  a target has ``unembed_pull == 0`` exactly: it is only ever pushed down.
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


def loss_positions(encoded, loss: str) -> Tensor:
    """``[n, seq - 1]`` mask of the target positions the training loss reads (as :func:`revinterp.training.batch_loss`):
    position ``p`` is the token at ``p + 1``, predicted from the logits at ``p``."""
    if loss == "answer":
        return encoded.answer_mask[:, 1:]
    if loss != "sequence":
        raise ValueError(f"loss={loss!r}: expected 'answer' or 'sequence'")
    lengths = encoded.prompt_lengths + encoded.answer_lengths
    return torch.arange(encoded.tokens.shape[1] - 1, device=encoded.tokens.device)[None] < (lengths[:, None] - 1)


def token_target_counts(facts: FactSet, tokenizer, loss: str = "answer") -> Int[Tensor, " d_vocab"]:
    """How many times each token is a target of the training loss over the trained statements."""
    encoded = encode_statements(facts, facts.train, tokenizer)
    mask = loss_positions(encoded, loss)
    counts = torch.zeros(len(tokenizer), dtype=torch.long)
    counts.index_add_(0, encoded.tokens[:, 1:][mask], torch.ones(int(mask.sum()), dtype=torch.long))
    return counts


def answer_starved_questions(facts: FactSet, tokenizer, loss: str = "answer") -> tuple[Statement, ...]:
    """Held-out statements none of whose answer tokens is ever a target in training (their unembeddings are only
    ever pushed down)."""
    counts = token_target_counts(facts, tokenizer, loss)
    return tuple(
        s for s in facts.split("held_out")
        if all(counts[t] == 0 for t in encode_words(tokenizer, s.object.split()))
    )


def starved_questions(facts: FactSet, tokenizer) -> tuple[Statement, ...]:
    """Held-out statements none of whose subject tokens is ever an input in training (input-starved)."""
    counts = token_input_counts(facts, tokenizer)
    return tuple(
        s for s in facts.split("held_out")
        if all(counts[t] == 0 for t in encode_words(tokenizer, s.subject.split()))
    )


QUANTITIES = ("input_count", "target_count", "embed_shift", "unembed_shift", "embed_gradient", "unembed_gradient",
              "unembed_pull", "unembed_push")
"""The per-entity quantities of a :class:`StarvationReport`, in column order."""


@dataclass(frozen=True)
class StarvationReport:
    """Per entity: input and target counts (of its least-seen token), movement and received gradient of its
    embedding and unembedding, and the pull and push parts of the unembedding gradient (mean over its tokens).

    ``starved`` (= ``input_starved``) holds the held-out questions whose subject is never an input,
    ``answer_starved`` those whose answer is never a target.
    """

    entities: tuple[str, ...]
    input_count: Int[Tensor, " entity"]
    embed_shift: Float[Tensor, " entity"]
    unembed_shift: Float[Tensor, " entity"]
    embed_gradient: Float[Tensor, " entity"]
    unembed_gradient: Float[Tensor, " entity"]
    starved: tuple[Statement, ...]
    roles: dict[str, tuple[str, ...]]  # role name -> entities in that role (e.g. held-out subjects)
    target_count: Int[Tensor, " entity"] | None = None
    unembed_pull: Float[Tensor, " entity"] | None = None
    unembed_push: Float[Tensor, " entity"] | None = None
    answer_starved: tuple[Statement, ...] = ()
    held_out: tuple[Statement, ...] = ()

    @property
    def input_starved(self) -> tuple[Statement, ...]:
        """Held-out questions whose subject is never an input in training (the same as ``starved``)."""
        return self.starved

    def _quantities(self) -> dict[str, Tensor]:
        out = {}
        for name in QUANTITIES:
            value = getattr(self, name)
            out[name] = value if value is not None else torch.full((len(self.entities),), float("nan"))
        return out

    def role_means(self) -> dict[str, dict[str, int | float]]:
        """Mean of every quantity over the entities of each role."""
        index = {e: i for i, e in enumerate(self.entities)}
        out = {}
        for role, entities in self.roles.items():
            if not entities:
                continue
            rows = torch.tensor([index[e] for e in entities])
            out[role] = {"n": len(rows)} | {
                name: value[rows].double().mean().item() for name, value in self._quantities().items()
            }
        return out

    def question_frame(self):
        """One row per held-out question: its subject's input side (inputs, embedding shift and gradient) and its
        answer's answer side (targets, unembedding shift, gradient, pull and push), with both flags."""
        import pandas as pd

        index = {e: i for i, e in enumerate(self.entities)}
        q = self._quantities()
        input_starved, answer_starved = set(self.starved), set(self.answer_starved)
        rows = []
        for s in self.held_out:
            i, j = index[s.subject], index[s.object]
            rows.append({
                "subject": s.subject, "relation": s.relation, "answer": s.object, "split": s.split,
                "input_starved": s in input_starved, "answer_starved": s in answer_starved,
                "subject_inputs": int(q["input_count"][i]), "subject_embed_shift": float(q["embed_shift"][i]),
                "subject_embed_gradient": float(q["embed_gradient"][i]),
                "answer_targets": int(q["target_count"][j]) if self.target_count is not None else -1,
                "answer_unembed_shift": float(q["unembed_shift"][j]),
                "answer_unembed_gradient": float(q["unembed_gradient"][j]),
                "answer_unembed_pull": float(q["unembed_pull"][j]),
                "answer_unembed_push": float(q["unembed_push"][j]),
            })
        return pd.DataFrame(rows)

    def to_frame(self):
        import pandas as pd

        role_of: dict[str, list[str]] = {}
        for role, entities in self.roles.items():
            for e in entities:
                role_of.setdefault(e, []).append(role)
        return pd.DataFrame({
            "entity": self.entities,
            "roles": [",".join(role_of.get(e, [])) for e in self.entities],
            **{name: value.tolist() for name, value in self._quantities().items()},
        })

    def summary(self) -> str:
        n = len(self.held_out) if self.held_out else None
        of = f" of {n}" if n is not None else ""
        lines = [
            f"input side: {len(self.starved)}{of} held-out question(s) whose subject never appears as an input in "
            "training",
            f"answer side: {len(self.answer_starved)}{of} held-out question(s) whose answer is never a training target",
        ]
        lines.append(f"{'role':<20}{'n':>5}{'inputs':>8}{'targets':>8}{'|dW_E|':>8}{'|dW_U|':>8}{'sum|gW_E|':>10}"
                     f"{'sum|gW_U|':>10}{'pull':>9}{'push':>9}")
        for role, m in self.role_means().items():
            lines.append(f"{role:<20}{m['n']:>5}{m['input_count']:>8.1f}{m['target_count']:>8.1f}"
                         f"{m['embed_shift']:>8.3f}{m['unembed_shift']:>8.3f}{m['embed_gradient']:>10.3g}"
                         f"{m['unembed_gradient']:>10.3g}{m['unembed_pull']:>9.3g}{m['unembed_push']:>9.3g}")
        return "\n".join(lines)

    def plot(self):
        """Two panels per role: input side (embedding movement) and answer side (unembedding movement, and the pull
        and push parts of its gradient)."""
        from plotly.subplots import make_subplots

        means = self.role_means()
        fig = make_subplots(rows=1, cols=2, subplot_titles=(
            "movement from step 0 (L2)", "unembedding gradient received (sum over checkpoints)"))
        for key, name in (("embed_shift", "input side |W_E - W_E(0)|"),
                          ("unembed_shift", "answer side |W_U - W_U(0)|")):
            fig.add_bar(x=list(means), y=[m[key] for m in means.values()], name=name, row=1, col=1)
        for key, name in (("unembed_pull", "pull (as a target)"), ("unembed_push", "push (as a non-target)")):
            fig.add_bar(x=list(means), y=[m[key] for m in means.values()], name=name, row=1, col=2)
        fig.update_layout(title=f"Embedding starvation, both sides: {len(self.starved)} input-starved and "
                                f"{len(self.answer_starved)} answer-starved held-out question(s)", barmode="group")
        return fig


def entity_roles(facts: FactSet) -> dict[str, tuple[str, ...]]:
    """Entities by role: subjects and answers of held-out questions, and subjects and answers of trained relational
    statements (the added ``attribute`` statements of a starvation control are not counted as trained ones)."""
    relational = [s for s in facts.train if s.direction in ("forward", "reverse")]
    roles = {
        "held_out_subject": {s.subject for s in facts.split("held_out")},
        "held_out_answer": {s.object for s in facts.split("held_out")},
        "trained_subject": {s.subject for s in relational},
        "trained_answer": {s.object for s in relational},
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
    unembed_push = torch.zeros(len(tok))
    unembed_pull = torch.zeros(len(tok))
    weights = {}
    for step, model in iter_checkpoints(run, device=device):
        embed = model.embed._original_component.weight
        unembed = model.unembed._original_component.weight
        weights[step] = (embed.detach().cpu().clone(), unembed.detach().cpu().clone())
        model.zero_grad(set_to_none=True)
        on_device = data.to(embed.device)
        batch_loss(model, on_device, loss_kind).backward()
        embed_grad += embed.grad.norm(dim=-1).cpu()
        unembed_grad += unembed.grad.norm(dim=-1).cpu()
        # the same loss, split: cross-entropy = logsumexp(logits) - logit[target] (push and pull on W_U)
        mask = loss_positions(on_device, loss_kind)
        logits = model(on_device.tokens)[:, :-1][mask]
        target = on_device.tokens[:, 1:][mask]
        push = logits.logsumexp(-1).mean()
        pull = -logits.gather(-1, target[:, None]).mean()
        push_grad, pull_grad = (torch.autograd.grad(part, unembed, retain_graph=True)[0] for part in (push, pull))
        unembed_push += push_grad.norm(dim=-1).cpu()
        unembed_pull += pull_grad.norm(dim=-1).cpu()
        model.zero_grad(set_to_none=True)
    first, last = weights[checkpoints[0][0]], weights[checkpoints[-1][0]]
    inputs = token_input_counts(facts, tok)
    targets = token_target_counts(facts, tok, loss_kind)
    return StarvationReport(
        entities=entities,
        input_count=torch.stack([inputs[t].min() for t in token_rows]),
        embed_shift=per_entity((last[0] - first[0]).norm(dim=-1)),
        unembed_shift=per_entity((last[1] - first[1]).norm(dim=-1)),
        embed_gradient=per_entity(embed_grad),
        unembed_gradient=per_entity(unembed_grad),
        starved=starved_questions(facts, tok),
        roles=entity_roles(facts),
        target_count=torch.stack([targets[t].min() for t in token_rows]),
        unembed_pull=per_entity(unembed_pull),
        unembed_push=per_entity(unembed_push),
        answer_starved=answer_starved_questions(facts, tok, loss_kind),
        held_out=facts.split("held_out"),
    )
