"""tfmeta's MAML meta-step against a PyTorch peer, alternated in one process.

The case is `configs/maml.py`'s Omniglot 5-way 1-shot (the paper's settings: meta-batch 32,
one inner step of 0.4, one query per class, Conv4 with 64 filters, batch statistics, Adam
1e-3), second order unless `--first_order`. Both sides train on the same episodes (drawn by
tfmeta's sampler) from the same kind of network, and the steps alternate: tfmeta, peer,
tfmeta, peer, ... so that whatever else the machine does falls on both alike. Printed:
the median ms per step of each and the ratio of the medians (tfmeta / peer).

The peers (`--peers`):
  func_vmap  torch.func: `vmap` over the tasks of `grad` through the inner step, the form
             the torch.func docs give for MAML (batched weights become grouped convolutions)
  loop       plain autograd: tasks one after another, `create_graph=True`

PyTorch is a benchmark-only dependency: `pip install -e ".[bench]"` (on a CPU-only machine
`pip install torch --index-url https://download.pytorch.org/whl/cpu` avoids a CUDA build).

    python bin/compare_torch.py --rounds=20
    python bin/compare_torch.py --set=learner.task_parallel=vectorized --threads=2
"""

from __future__ import annotations

import os
import statistics
import sys

from absl import app, flags

from tfmeta.episode_spec import DataSpec

flags.DEFINE_integer("rounds", 20, "Alternated rounds (one step of each side per round).",
                     lower_bound=1)
flags.DEFINE_list("peers", ["func_vmap", "loop"], "PyTorch peers: func_vmap, loop.")
flags.DEFINE_list("set", [], "tfmeta config overrides for its side (as bin/train.py --set).")
flags.DEFINE_boolean("first_order", False, "First-order MAML on both sides.")
flags.DEFINE_integer("threads", 0, "Threads for each framework: PyTorch's, and both of "
                     "TensorFlow's pools (0: PyTorch's default, the machine's cores, and "
                     "tfmeta's config.cpu_threads).", lower_bound=0)
FLAGS = flags.FLAGS

PEERS = ("func_vmap", "loop")


def torch_peer(kind: str, config, first_order: bool):
    """A step function `(batch as numpy dict) -> loss` of MAML in PyTorch at `config`'s
    settings: Conv4 (3x3 conv, batch norm with batch statistics, ReLU, 2x2 max-pool) and a
    linear head, one Adam meta-optimizer."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch.func import functional_call, grad, vmap

    filters, ways = config.model.filters, config.ways
    inner_lr, steps = config.learner.inner_lr, config.learner.inner_steps
    layers, channels = [], 1
    for _ in range(config.model.get("num_blocks", 4)):
        layers += [nn.Conv2d(channels, filters, 3, padding=1),
                   nn.BatchNorm2d(filters, track_running_stats=False), nn.ReLU(),
                   nn.MaxPool2d(2)]
        channels = filters
    model = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(ways))
    model(torch.zeros(1, 1, 28, 28))  # materializes the head
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    optimizer = torch.optim.Adam(params.values(), lr=config.optimizer.learning_rate)

    def loss_of(p, images, labels):
        return F.cross_entropy(functional_call(model, p, (images,)), labels)

    def adapt(p, images, labels):
        for _ in range(steps):
            if kind == "func_vmap":
                g = grad(loss_of)(p, images, labels)
            else:
                g = dict(zip(p, torch.autograd.grad(loss_of(p, images, labels), list(p.values()),
                                                    create_graph=not first_order)))
            if first_order:
                g = {k: v.detach() for k, v in g.items()}
            p = {k: p[k] - inner_lr * g[k] for k in p}
        return p

    def task_loss(p, support, support_labels, query, query_labels):
        return loss_of(adapt(p, support, support_labels), query, query_labels)

    def step(batch):
        optimizer.zero_grad()
        if kind == "func_vmap":
            losses = vmap(task_loss, in_dims=(None, 0, 0, 0, 0))(params, *batch)
            loss = losses.mean()
        else:
            loss = sum(task_loss(params, *(t[i] for t in batch))
                       for i in range(batch[0].shape[0])) / batch[0].shape[0]
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def to_torch(episodes):
        def images(x):  # [B, n, H, W, C] -> [B, n, C, H, W]
            return torch.from_numpy(x.numpy()).permute(0, 1, 4, 2, 3).contiguous()

        def labels(y):
            return torch.from_numpy(y.numpy()).long()

        return (images(episodes["support_images"]), labels(episodes["support_labels"]),
                images(episodes["query_images"]), labels(episodes["query_labels"]))

    return step, to_torch


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.peers) - set(PEERS))
    if unknown:
        raise app.UsageError(f"Unknown peers {unknown}; choose from {list(PEERS)}.")
    if FLAGS.threads:
        os.environ["OMP_NUM_THREADS"] = str(FLAGS.threads)
    # PyTorch's default Linux wheels bring Triton, which torch imports lazily (its first
    # optimizer does) and which crashes a process that has loaded TensorFlow (torch
    # 2.14.1+cu130, TensorFlow 2.21: a segmentation fault). The CPU peer needs no Triton.
    sys.modules.setdefault("triton", None)
    try:
        import torch
    except ImportError:
        raise app.UsageError('PyTorch is not installed; pip install -e ".[bench]" (a '
                             "benchmark-only extra).") from None
    import tensorflow as tf

    from tfmeta.benchmarking.common import _block, alternate_steps, build_config_case

    if FLAGS.threads:  # both sides' ops on this many threads, instead of config.cpu_threads
        torch.set_num_threads(FLAGS.threads)
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    overrides = list(FLAGS.set) + (["learner.first_order=True"] if FLAGS.first_order else [])
    config, dataset, learner = build_config_case("maml", overrides=overrides,
                                                 set_threads=not FLAGS.threads)
    episodes, _ = learner.training_episodes(dataset, DataSpec.from_config(config))
    batches = list(episodes.take(FLAGS.rounds + 1))
    learner.make_train_function()
    sides = {"tfmeta": (lambda b: _block(learner.train_function(iter([b]))), lambda b: b)}
    for kind in FLAGS.peers:
        sides[f"torch_{kind}"] = torch_peer(kind, config, FLAGS.first_order)
    times = alternate_steps(sides, batches)  # round 0 warms up
    medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(f"MAML {'first' if FLAGS.first_order else 'second'} order, Omniglot "
          f"{config.ways}-way {config.shots}-shot, meta-batch {config.meta_batch_size}, "
          f"{FLAGS.rounds} alternated rounds, torch {torch.__version__}, tensorflow "
          f"{tf.__version__}; tfmeta: {learner.task_loop_form()}, XLA "
          f"{'on' if learner.jit_compile else 'off'}, TensorFlow threads intra-op "
          f"{tf.config.threading.get_intra_op_parallelism_threads()} inter-op "
          f"{tf.config.threading.get_inter_op_parallelism_threads()} (0: every core), "
          f"PyTorch threads {torch.get_num_threads()}")
    for name, median in medians.items():
        ratio = "" if name == "tfmeta" else f"  tfmeta/peer {medians['tfmeta'] / median:.2f}x"
        print(f"  {name:16s} median {median:9.1f} ms/step{ratio}")


def run():
    """The entry point of bin/compare_torch.py."""
    sys.modules["__main__"].__doc__ = __doc__
    app.run(main)


if __name__ == "__main__":
    run()
