"""A seq2seq sweep ranks by the metrics its training reports every epoch (chrF by default)."""

import cellforge as cf
from cellforge.tune.space import as_space
from cellforge.tune.sweep import default_metric, sweep_problems

SPEC = cf.ModelSpec(task="seq2seq", cell="gru", input={"type": "text", "tokenizer": "char"}, decode={"strategy": "beam"})


def problems(metric):
    dims, p = as_space({"attention": cf.grid(["none", "dot", "additive"]), "decode.beam_width": cf.choice([1, 3])})
    return p + sweep_problems(SPEC, dims, None, metric, "fifo", "grid", 1, 1, 3)


def test_seq2seq_metrics_rank_a_sweep_and_others_are_refused_with_the_list():
    assert default_metric("seq2seq") == "val_chrf"
    for metric in ("val_bleu", "val_chrf", "val_exact_match", "val_rouge_l", "val_token_accuracy", "val_loss"):
        assert problems(metric) == [], metric
    (field, message), = problems("val_accuracy")
    assert field == "metric" and "'val_bleu'" in message
