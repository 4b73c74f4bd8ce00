"""Running learners: strategies, the trainer, checkpoints, evaluation and export."""
