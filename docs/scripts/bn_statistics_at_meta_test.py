"""Which batch-norm statistics a meta-trained MAML/MAML++ run adapts and predicts with:

    python docs/scripts/bn_statistics_at_meta_test.py runs/maml_table/bn [episodes]

For a trained workdir (e.g. the `bn` row of maml_omniglot_table.py: per-step running
statistics), meta-test episodes on the test alphabets are scored four ways: the inner
loop's support passes normalized by the support's own statistics or by the moving
averages, and the query pass by the query batch's statistics or by the moving averages.
The learner's own choice (tfmeta.algorithms.task_loop) is support statistics for the
inner loop, and the moving averages for the queries with `batch_norm="running_stats"`.
Prints the mean query loss and accuracy of each."""
import os
import sys
from unittest import mock

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tfmeta import weights  # noqa: E402
from tfmeta.data import EpisodeShape, episode_dataset  # noqa: E402
from tfmeta.tensors import cross_entropy  # noqa: E402
from tfmeta.training.run import open_run  # noqa: E402


def query_logits(learner, params, state, task, steps, support_batch_stats, query_batch_stats):
    """Query logits after the learner's own inner loop (`adapt`, as at meta-test), with its
    support passes normalized as chosen."""
    forward_at = learner.forward_at

    def support_pass(params, state, inputs, training, step):
        del training
        return forward_at(params, state, inputs, support_batch_stats, step)

    with mock.patch.object(learner, "forward_at", support_pass):
        fast = learner.adapt(params, state, task["support_images"], task["support_labels"],
                             steps, training=False)
    return forward_at(fast, state, task["query_images"], query_batch_stats, steps)[0]


def main(workdir, episodes=100):
    try:
        run = open_run(workdir)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    learner, config = run.learner, run.config
    steps = learner.inner_steps_test
    params = weights.values(learner.params)
    state = weights.values(learner.loop_state_variables)
    batches = episode_dataset(run.dataset.split("test"),
                              EpisodeShape(config.ways, config.shots, config.queries), 10,
                              seed=1234, num_episodes=episodes)
    for support_batch_stats in (True, False):
        for query_batch_stats in (True, False):
            losses, accuracies = [], []
            for batch in batches:
                for t in range(int(batch["query_labels"].shape[0])):
                    task = {k: v[t] for k, v in batch.items()}
                    logits = query_logits(learner, params, state, task, steps,
                                          support_batch_stats, query_batch_stats)
                    losses.append(float(cross_entropy(task["query_labels"], logits)))
                    accuracies.append(float(np.mean(
                        np.argmax(logits, -1) == task["query_labels"].numpy())))
            print(f"support: {'own' if support_batch_stats else 'moving'} statistics, "
                  f"queries: {'batch' if query_batch_stats else 'moving'} statistics: "
                  f"query loss {np.mean(losses):.3g}, accuracy {100 * np.mean(accuracies):.1f}%",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1], *[int(a) for a in sys.argv[2:]])
