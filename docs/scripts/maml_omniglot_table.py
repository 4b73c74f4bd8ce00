"""Regenerates the MAML / MAML++ Omniglot table of docs/maml.md:

    python docs/scripts/maml_omniglot_table.py [row ...]

MAML and MAML++ options on bundled Omniglot: 300 meta-steps each, 5-way 1-shot trained,
evaluated 5-way and 20-way 1-shot on the test alphabets (the 20-way served by the 5-way
model through its prototype head)."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tfmeta import config as config_lib  # noqa: E402
from tfmeta import evaluation  # noqa: E402
from tfmeta.data import EpisodeShape, load_dataset  # noqa: E402
from tfmeta.training import trainer  # noqa: E402

COMMON = ["num_steps=300", "checkpoint_every=300", "meta_batch_size=8", "queries=5",
          "optimizer.learning_rate=0.003", "model.filters=32", "val_episodes=20",
          "learner.head=prototypes", "learner.inner_lr=0.4", "learner.inner_steps=2",
          "learner.inner_steps_test=3", "log_every=100"]
OFF = ["learner.multi_step_loss=False", "learner.first_order_steps=0",
       "learner.learned_inner_lrs=False", "learner.per_step_batch_norm=False",
       "learner.msl_annealing_steps=150", "learner.batch_norm=batch_stats",
       "optimizer.schedule=None"]
ROWS = {
    "maml": ("maml", []),
    "msl": ("maml_plusplus", OFF + ["learner.multi_step_loss=True"]),
    "da": ("maml_plusplus", OFF + ["learner.first_order_steps=150"]),
    "lslr": ("maml_plusplus", OFF + ["learner.learned_inner_lrs=True"]),
    "bn": ("maml_plusplus", OFF + ["learner.per_step_batch_norm=True",
                                   "learner.batch_norm=running_stats"]),
    "cosine": ("maml_plusplus", OFF + ["optimizer.schedule=cosine"]),
    "all": ("maml_plusplus", OFF + ["learner.multi_step_loss=True",
                                    "learner.first_order_steps=150",
                                    "learner.learned_inner_lrs=True",
                                    "learner.per_step_batch_norm=True",
                                    "learner.batch_norm=running_stats",
                                    "optimizer.schedule=cosine"]),
}
ROWS["all_batch_stats"] = ("maml_plusplus", [o for o in ROWS["all"][1]
                                             if o != "learner.batch_norm=running_stats"])
omniglot = load_dataset("omniglot")
for name in sys.argv[1:] or ["maml", "all", "msl", "lslr", "bn", "da", "cosine"]:
    algo, extra = ROWS[name]
    config = config_lib.apply_overrides(config_lib.get_config(algo, "omniglot", "5w1s"),
                                        COMMON + extra)
    start = time.time()
    learner = trainer.train(config, f"runs/maml_table/{name}", verbose=0)
    trained = time.time() - start
    row = {"row": name, "train_s": round(trained)}
    for ways, episodes in ((5, 300), (20, 200)):
        r = evaluation.evaluate(learner, omniglot.split("test"), EpisodeShape(ways, 1, 5),
                                num_episodes=episodes, meta_batch_size=10)
        row[f"{ways}way"] = [round(100 * r["accuracy"], 1), round(100 * r["ci95"], 1)]
    print(json.dumps(row), flush=True)
