"""The optimizer a config names: `make_optimizer(config.optimizer, num_steps)`, with the
learning-rate schedule `config.optimizer.schedule` asks for."""

from __future__ import annotations

import keras

from tfmeta.errors import UserError

# Fields of `config.optimizer` that describe the learning-rate schedule, not the optimizer.
SCHEDULE_FIELDS = ("schedule", "decay_steps", "decay_rate")
SCHEDULES = ("step", "cosine")


def learning_rate_schedule(optimizer_config, num_steps=None):
    """The learning rate `config.optimizer` asks for: a float or a Keras schedule.

    `schedule=None`: constant `learning_rate`. `"step"`: multiplied by `decay_rate`
    every `decay_steps` meta-steps (Prototypical Networks halve it every 2000
    episodes: decay_steps=2000, decay_rate=0.5). `"cosine"`: cosine decay to 0 over
    `decay_steps` (default `num_steps`). Schedules read `optimizer.iterations`, so a
    resumed run continues where it stopped.
    """
    rate = optimizer_config.learning_rate
    name = optimizer_config.schedule
    decay_steps = optimizer_config.decay_steps
    if not name:
        return rate
    if name not in SCHEDULES:
        raise UserError(f"optimizer.schedule must be one of {SCHEDULES} or None; got {name!r}.")
    if name == "step":
        decay_rate = optimizer_config.decay_rate
        if not decay_steps or decay_steps < 1 or decay_rate is None or not 0 < decay_rate <= 1:
            raise UserError(
                "optimizer.schedule='step' needs optimizer.decay_steps >= 1 and "
                f"optimizer.decay_rate in (0, 1]; got decay_steps={decay_steps}, "
                f"decay_rate={decay_rate}. Example: --set=optimizer.decay_steps=2000 "
                "--set=optimizer.decay_rate=0.5")
        return keras.optimizers.schedules.ExponentialDecay(rate, decay_steps, decay_rate,
                                                           staircase=True)
    decay_steps = decay_steps or num_steps
    if not decay_steps or decay_steps < 1:
        raise UserError("optimizer.schedule='cosine' needs optimizer.decay_steps >= 1 or "
                        f"num_steps; got decay_steps={decay_steps}, num_steps={num_steps}.")
    return keras.optimizers.schedules.CosineDecay(rate, decay_steps)


def make_optimizer(optimizer_config, num_steps=None) -> keras.optimizers.Optimizer:
    """The Keras optimizer `config.optimizer` names, with its schedule."""
    kwargs = {k: v for k, v in optimizer_config.items()
              if k not in ("name", *SCHEDULE_FIELDS) and v is not None}
    kwargs["learning_rate"] = learning_rate_schedule(optimizer_config, num_steps)
    try:
        optimizer = keras.optimizers.get(optimizer_config.name)
    except ValueError as error:
        raise UserError(f"Unknown optimizer {optimizer_config.name!r} ({error}); use a Keras "
                        "optimizer name such as 'adam', 'sgd' or 'adamw'.") from None
    return optimizer.__class__(**kwargs)
