"""Evaluation of a checkpoint: ``metarl eval``, returns after 0..K inner steps on held-out tasks
against baselines (:mod:`metarl.evaluation.eval`)."""
