"""Facts, splits, tokenizer and token tensors: the first stage of the pipeline (knows no model)."""

from revinterp.data.encoding import EncodedStatements, encode_statements
from revinterp.data.fact_files import FactFileError, load_fact_file
from revinterp.data.facts import (
    ATTRIBUTE,
    AUGMENTED,
    CHAIN_COMPOSED_HELD_OUT,
    CHAIN_COMPOSED_SEEN,
    CHAIN_FIRST_HOP,
    CHAIN_SECOND_HOP,
    FACT_SPLITS,
    FORWARD_HELD_OUT,
    FORWARD_ONLY,
    FORWARD_SEEN,
    HELD_OUT_DIRECTIONS,
    REVERSE_HELD_OUT,
    REVERSE_ONLY,
    REVERSE_SEEN,
    SPLITS,
    FactSet,
    Relation,
    Statement,
    split_facts,
)
from revinterp.data.generators import (
    STARVATION_CELLS,
    celebrity_like,
    chain_experiment,
    description_like,
    knowledge_graph,
    leaking_statements,
    seed_experiment,
    starvation_cell,
    with_answer_feeding,
    with_attributes,
)
from revinterp.data.mitigations import MITIGATIONS, apply_mitigation, with_scratch_tokens
from revinterp.data.tokenizer import UnknownWordError, build_tokenizer, load_tokenizer, save_tokenizer

__all__ = [
    "ATTRIBUTE", "AUGMENTED", "MITIGATIONS", "apply_mitigation", "knowledge_graph", "with_attributes",
    "CHAIN_COMPOSED_HELD_OUT", "CHAIN_COMPOSED_SEEN", "CHAIN_FIRST_HOP", "CHAIN_SECOND_HOP", "FACT_SPLITS",
    "FORWARD_HELD_OUT", "FORWARD_ONLY", "FORWARD_SEEN", "HELD_OUT_DIRECTIONS", "REVERSE_HELD_OUT",
    "REVERSE_ONLY", "REVERSE_SEEN", "SPLITS", "EncodedStatements", "FactFileError", "FactSet",
    "Relation", "Statement", "UnknownWordError", "build_tokenizer", "celebrity_like", "chain_experiment",
    "description_like",
    "encode_statements", "load_fact_file", "load_tokenizer", "save_tokenizer", "seed_experiment",
    "split_facts", "STARVATION_CELLS", "leaking_statements", "starvation_cell", "with_answer_feeding",
    "with_scratch_tokens",
]
