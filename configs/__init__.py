"""Experiment configs: one module per algorithm, each with `get_config(dataset, setting)`.

`base.get_config` holds the fields every run has; an algorithm's module fills in its
`learner` and `model` sections and overrides a few fields per dataset and setting.
"""
