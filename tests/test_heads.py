"""Heads over features (`tfmeta.heads`): the contract every head keeps (shapes, absent
classes, padding, batching, graph mode), hand-worked cases, independent NumPy references of
the iterative heads written from the papers' equations, and a transductive toy where the
query set must correct the support."""

import numpy as np
import pytest
import tensorflow as tf

from tfmeta import heads
from tfmeta.errors import UserError
from tfmeta.tensors import ABSENT_LOGIT

# Few iterations, and steps large enough that they change something, so the contract tests
# exercise the loops quickly.
FAST = {"tim": {"iterations": 10, "learning_rate": 1e-2},
        "alpha_tim": {"iterations": 10, "learning_rate": 1e-2},
        "pt_map": {"epochs": 4}, "logistic": {"steps": 30}}
FEATURE_MEAN = np.array([0.3, 0.2, 0.4, 0.1], np.float32)


def run(name, support, labels, queries, mask=None, feature_mean=FEATURE_MEAN, **settings):
    """The head on one meta-batch, as NumPy."""
    settings = {**FAST.get(name, {}), **settings}
    return heads.head_logits(name, np.asarray(support, np.float32), np.asarray(labels, np.int32),
                             np.asarray(queries, np.float32),
                             None if mask is None else np.asarray(mask, bool),
                             feature_mean, **settings).numpy()


def episode(seed, ways, shots, queries, dim=4):
    """Non-negative features (a ReLU backbone's, which PT-MAP assumes) around class centres."""
    rng = np.random.default_rng(seed)
    centres = rng.random((ways, dim)) * 2.0
    support = np.concatenate([c + 0.3 * rng.random((shots, dim)) for c in centres])
    labels = np.repeat(np.arange(ways), shots)
    query_labels = np.arange(queries) % ways
    query = centres[query_labels] + 0.3 * rng.random((queries, dim))
    return support.astype(np.float32), labels.astype(np.int32), query.astype(np.float32)


def pad(support, labels, queries, support_size, query_size, seed=9):
    """An episode padded to the given sizes: padding support gets label -1, padding queries
    mask False, both with arbitrary finite features."""
    rng = np.random.default_rng(seed)
    extra_support, extra_queries = support_size - len(labels), query_size - len(queries)
    support = np.concatenate([support, 5.0 * rng.random((extra_support, support.shape[1]))])
    labels = np.concatenate([labels, -np.ones(extra_support, np.int32)])
    mask = np.arange(query_size) < len(queries)
    queries = np.concatenate([queries, 5.0 * rng.random((extra_queries, queries.shape[1]))])
    return support.astype(np.float32), labels, queries.astype(np.float32), mask


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def means(features, labels, ways):
    return np.stack([features[labels == n].mean(0) for n in range(ways)])


def sq_distances(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


# ---------------------------------------------------------------- the contract, every head
@pytest.mark.parametrize("name", list(heads.HEADS))
def test_padding_changes_nothing(name):
    support, labels, queries = episode(0, ways=3, shots=2, queries=6)
    plain = run(name, support[None], labels[None], queries[None])
    padded = pad(support, labels, queries, 8, 9)
    padded_logits = run(name, *(x[None] for x in padded))
    assert padded_logits.shape == (1, 9, 3)
    assert np.all(np.isfinite(padded_logits))
    np.testing.assert_allclose(padded_logits[:, :6], plain, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", list(heads.HEADS))
def test_batched_episodes_are_solved_alone(name):
    # A: 3 ways, 2 shots, 6 queries; B: 2 ways, 2 shots, 4 queries, padded to A's sizes, so
    # in the batch B has an absent class 2.
    a = episode(1, ways=3, shots=2, queries=6)
    b = episode(2, ways=2, shots=2, queries=4)
    alone_a = run(name, *(x[None] for x in a))
    alone_b = run(name, *(x[None] for x in b))
    b_support, b_labels, b_queries, b_mask = pad(*b, 6, 6)
    batch = run(name, np.stack([a[0], b_support]), np.stack([a[1], b_labels]),
                np.stack([a[2], b_queries]), np.stack([np.ones(6, bool), b_mask]))
    assert batch.shape == (2, 6, 3)
    assert np.all(np.isfinite(batch))
    np.testing.assert_allclose(batch[0], alone_a[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(batch[1, :4, :2], alone_b[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(batch[1, :, 2], ABSENT_LOGIT)


@pytest.mark.parametrize("name", list(heads.HEADS))
def test_graph_mode_with_unknown_shapes(name):
    """As a SavedModel serves it: one trace for any B, S, M, D."""
    settings = FAST.get(name, {})
    spec = [tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None, None], tf.int32),
            tf.TensorSpec([None, None, None], tf.float32), tf.TensorSpec([None, None], tf.bool),
            tf.TensorSpec([None], tf.float32)]
    compiled = tf.function(lambda *args: heads.head_logits(name, *args, **settings),
                           input_signature=spec)
    support, labels, queries, mask = pad(*episode(3, ways=3, shots=2, queries=5), 7, 6)
    args = (support[None], labels[None], queries[None], mask[None], FEATURE_MEAN)
    np.testing.assert_allclose(compiled(*args).numpy(), run(name, *args[:4]), rtol=1e-4,
                               atol=1e-4)


# ---------------------------------------------------------------- hand-worked cases
def test_prototypes_worked_case():
    # class 0: [0, 0], [2, 0] -> mean [1, 0];  class 1: [0, 2], [0, 4] -> mean [0, 3]
    # query [1, 1]: |[0, 1]|^2 = 1, |[1, -2]|^2 = 5  -> [-1, -5]
    # query [0, 0]: |[-1, 0]|^2 = 1, |[0, -3]|^2 = 9 -> [-1, -9]
    logits = run("prototypes", [[[0, 2], [0, 0], [0, 4], [2, 0]]], [[1, 0, 1, 0]],
                 [[[1, 1], [0, 0]]], feature_mean=None)
    np.testing.assert_allclose(logits, [[[-1, -5], [-1, -9]]], atol=1e-6)


def test_simpleshot_centres_normalises_then_averages():
    # feature_mean [1, 1]. class 0: [2, 1] -> [1, 0] -> [1, 0];  [1, 3] -> [0, 2] -> [0, 1]
    #   centroid [0.5, 0.5] (the mean of unit vectors, not normalised again)
    # class 1: [0, 1] -> [-1, 0] -> [-1, 0], centroid [-1, 0]
    # query [1, -2] -> [0, -3] -> [0, -1]: |[-0.5, -1.5]|^2 = 2.5, |[1, -1]|^2 = 2
    # query [4, 1]  -> [3, 0]  -> [1, 0]:  |[0.5, -0.5]|^2 = 0.5, |[2, 0]|^2 = 4
    support, labels, queries = [[[2, 1], [1, 3], [0, 1]]], [[0, 0, 1]], [[[1, -2], [4, 1]]]
    logits = run("simpleshot", support, labels, queries, feature_mean=np.ones(2, np.float32))
    np.testing.assert_allclose(logits, [[[-2.5, -2.0], [-0.5, -4.0]]], atol=1e-6)
    # Without a feature mean it centres on nothing: L2N.
    np.testing.assert_allclose(run("simpleshot", support, labels, queries, feature_mean=None),
                               run("simpleshot", support, labels, queries,
                                   feature_mean=np.zeros(2, np.float32)), atol=1e-6)


def test_bd_cspn_shift_and_rectification_worked_case():
    # Unit features, no feature mean (L2N changes nothing). Support a = [1, 0], b = [0, 1].
    # Shift: mean(support) - mean(queries) = [0.5, 0.5] - [0.8, 0.4] = [-0.3, 0.1]
    #   q1 = [1, 0] -> [0.7, 0.1], |q1| = sqrt(0.5)
    #   q2 = [0.6, 0.8] -> [0.3, 0.9], |q2| = sqrt(0.9)
    # Pseudo-labels by cosine to the basic prototypes a, b:
    #   q1: 0.7 / sqrt(0.5) = 0.989949 vs 0.141421 -> class 0
    #   q2: 0.3 / sqrt(0.9) = 0.316228 vs 0.9 / sqrt(0.9) = 0.948683 -> class 1
    # Class 0 members a (cos 1), q1 (cos 0.989949), weights softmax(10 cos):
    #   w_a = 1 / (1 + exp(-0.100505)) = 0.525105, w_q1 = 0.474895
    #   P'_0 = 0.525105 [1, 0] + 0.474895 [0.7, 0.1] = [0.857532, 0.047489]
    # Class 1 members b (cos 1), q2 (cos 0.948683):
    #   w_b = 1 / (1 + exp(-0.513167)) = 0.625549, w_q2 = 0.374451
    #   P'_1 = 0.625549 [0, 1] + 0.374451 [0.3, 0.9] = [0.112335, 0.962555]
    # logits = 10 cos(shifted query, P')
    logits = run("bd_cspn", [[[1, 0], [0, 1]]], [[0, 1]], [[[1, 0], [0.6, 0.8]]],
                 feature_mean=None)
    shifted = np.array([[0.7, 0.1], [0.3, 0.9]])
    rectified = np.array([[0.857532, 0.047489], [0.112335, 0.962555]])
    np.testing.assert_allclose(logits[0], 10 * unit(shifted) @ unit(rectified).T, atol=1e-4)


def test_knn_affinity_counts_the_query_itself_and_skips_padding():
    # Real queries on a line at 0, 1, 3, 10; a padding query at 1.5 (nearest to most).
    # knn=3 counts the query itself, as scikit-learn's kneighbors does: 2 neighbours each.
    #   0 -> 1 (d 1), 3 (d 3);  1 -> 0 (1), 3 (2);  3 -> 1 (2), 0 (3);  10 -> 3 (7), 1 (9)
    queries = tf.constant([[[0.0], [1.0], [3.0], [10.0], [1.5]]])
    mask = tf.constant([[True, True, True, True, False]])
    expected = [[0, 1, 1, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 0, 0], [0, 1, 1, 0, 0],
                [0, 0, 0, 0, 0]]
    np.testing.assert_array_equal(heads.knn_affinity(queries, mask, 3)[0], expected)
    # knn=6 asks for 5 neighbours where only 3 real others exist: those 3, never padding.
    everyone = np.ones((4, 4)) - np.eye(4)
    np.testing.assert_array_equal(heads.knn_affinity(queries, mask, 6)[0, :4, :4], everyone)
    np.testing.assert_array_equal(heads.knn_affinity(queries, mask, 6)[0, :, 4], 0)


def test_open_set_distance_worked_case():
    # Episode 0 (classes 0, 1): class 0 = [1, 0], [0, 1] -> mean [0.5, 0.5] -> unit
    #   [0.7071, 0.7071]; class 1 = [0, -1]. Query [2, 2] -> [0.7071, 0.7071]: 0 to class 0.
    #   Query [0, 3] -> [0, 1]: |[-0.7071, 0.2929]|^2 = 2 - sqrt(2) to class 0, 4 to class 1.
    # Episode 1 has class 0 only ([1, 0]) and a padding example; its class 1 is absent and
    #   its zero prototype (distance 1) must not count. Query [-1, 0]: 4 to class 0.
    #   Query [0, 1]: orthogonal, 2.
    support = [[[1, 0], [0, 1], [0, -1]], [[1, 0], [7, 7], [0, 0]]]
    labels = [[0, 0, 1], [0, -1, -1]]
    queries = [[[2, 2], [0, 3]], [[-1, 0], [0, 1]]]
    distance = heads.open_set_distance(np.float32(support), labels, np.float32(queries))
    np.testing.assert_allclose(distance, [[0, 2 - np.sqrt(2)], [4, 2]], atol=1e-5)
    # With feature mean [1, 1]: the query [1, 2] -> [0, 1], class 0's [1, 0] -> [0, -1],
    # opposite: 4 (without centring they would be 2 apart).
    centred = heads.open_set_distance(np.float32([[[1, 0]]]), [[0]], np.float32([[[1, 2]]]),
                                      feature_mean=np.ones(2, np.float32))
    np.testing.assert_allclose(centred, [[4]], atol=1e-5)


# ---------------------------------------------------------------- NumPy references
def reference_logistic(support, labels, queries, mean, steps, lr, l2):
    s, q = unit(support - mean), unit(queries - mean)
    targets = np.eye(labels.max() + 1)[labels]
    w, b = np.zeros((s.shape[1], targets.shape[1])), np.zeros(targets.shape[1])
    for _ in range(steps):
        error = softmax(s @ w + b) - targets
        w, b = w - lr * (s.T @ error / len(s) + l2 * w), b - lr * error.mean(0)
    return q @ w + b


def reference_laplacianshot(support, labels, queries, mean, lam, knn, iterations):
    """The authors' `train_lshot.py` with --proto-rect, one episode, in loops."""
    s, q = unit(support - mean), unit(queries - mean)
    ways = labels.max() + 1
    q = q + (s.mean(0) - q.mean(0))
    basic = means(s, labels, ways)
    augmented = np.concatenate([s, q])
    cos = unit(augmented) @ unit(basic).T
    predicted, weights = cos.argmax(1), softmax(10 * cos)
    prototypes = np.stack([(weights[predicted == n, n][:, None] * augmented[predicted == n])
                           .mean(0) for n in range(ways)])
    unary = sq_distances(q, prototypes)
    affinity = np.zeros((len(q), len(q)))
    for i in range(len(q)):  # scikit-learn's knn neighbours, the query itself first
        order = [j for j in np.argsort(((q - q[i]) ** 2).sum(1), kind="stable") if j != i]
        affinity[i, order[:knn - 1]] = 1
    y = softmax(-unary)
    for _ in range(iterations):
        y = softmax(-unary + lam * affinity @ y)
    return np.log(y)


def reference_tim(support, labels, queries, temperature, loss_weights, lr, iterations,
                  alpha=None):
    """TIM-GD (alpha=None) or alpha-TIM, gradients derived by hand (no autodiff), Adam.

    z = -T/2 |x - w_n|^2, dz_in/dw_n = T (x_i - w_n); with p = softmax(z), p_bar = mean(p):
      dCE/dz_s = (p_s - y) / S
      Shannon: dH(Y)/dz_ik = -p_ik (log p_bar_k - sum_n p_in log p_bar_n) / M
               dH(Y|X)/dz_ik = -p_ik (log p_ik - sum_n p_in log p_in) / M
      alpha:   dH_a(Y)/dz_ik = -a p_ik (p_bar_k^(a-1) - sum_n p_in p_bar_n^(a-1)) / ((a-1) M)
               dH_a(Y|X)/dz_ik = -a p_ik (p_ik^(a-1) - sum_n p_in^a) / ((a-1) M)
      loss = w_ce CE - w_marg H(Y) + w_cond H(Y|X)
    """
    s, q = unit(support), unit(queries)
    ways, count = labels.max() + 1, len(q)
    targets = np.eye(ways)[labels]
    w = means(s, labels, ways)
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, iterations + 1):
        p_s = softmax(-temperature / 2 * sq_distances(s, w))
        p = softmax(-temperature / 2 * sq_distances(q, w))
        p_bar = p.mean(0)
        if alpha is None:
            d_marginal = -p * (np.log(p_bar) - (p * np.log(p_bar)).sum(1, keepdims=True))
            d_conditional = -p * (np.log(p) - (p * np.log(p)).sum(1, keepdims=True))
        else:
            d_marginal = -alpha / (alpha - 1) * p * (
                p_bar ** (alpha - 1) - (p * p_bar ** (alpha - 1)).sum(1, keepdims=True))
            d_conditional = -alpha / (alpha - 1) * p * (
                p ** (alpha - 1) - (p ** alpha).sum(1, keepdims=True))
        g_s = loss_weights[0] * (p_s - targets) / len(s)
        g_q = (-loss_weights[1] * d_marginal + loss_weights[2] * d_conditional) / count
        gradient = np.zeros_like(w)
        for n in range(ways):
            gradient[n] = temperature * ((g_s[:, n:n + 1] * (s - w[n])).sum(0)
                                         + (g_q[:, n:n + 1] * (q - w[n])).sum(0))
        m = 0.9 * m + 0.1 * gradient
        v = 0.999 * v + 0.001 * gradient ** 2
        w = w - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return -temperature / 2 * sq_distances(q, w)


def reference_sinkhorn(cost, lam, columns_total):
    """PT-MAP's `compute_optimal_transport`, one episode."""
    plan = np.exp(-lam * cost)
    plan /= plan.sum()
    r, c = np.ones(cost.shape[0]), np.full(cost.shape[1], columns_total / cost.shape[1])
    u, iterations = np.zeros(cost.shape[0]), 1
    while np.max(np.abs(u - plan.sum(1))) > 1e-6:
        u = plan.sum(1)
        plan *= (r / u)[:, None]
        plan *= (c / plan.sum(0))[None, :]
        if iterations == 1000:
            break
        iterations += 1
    return plan


def reference_pt_map(support, labels, queries, epochs, lam=10.0, alpha=0.2):
    """The authors' `test_standard.py`, one episode, QR reduction included."""
    data = (np.concatenate([support, queries]) + 1e-6) ** 0.5
    data = np.linalg.qr(data.T)[1].T  # QRreduction
    data = unit(data)
    s, q = data[:len(support)], data[len(support):]
    s, q = unit(s - s.mean(0)), unit(q - q.mean(0))
    ways = labels.max() + 1
    targets = np.eye(ways)[labels]
    mus = means(s, labels, ways)
    for _ in range(epochs):
        p = reference_sinkhorn(sq_distances(q, mus), lam, len(q))
        estimate = (targets.T @ s + p.T @ q) / (targets.sum(0) + p.sum(0))[:, None]
        mus = mus + alpha * (estimate - mus)
    return reference_sinkhorn(sq_distances(q, mus), lam, len(q))


def test_logistic_matches_reference():
    support, labels, queries = episode(4, ways=3, shots=2, queries=6)
    logits = run("logistic", support[None], labels[None], queries[None], steps=25,
                 learning_rate=0.5, l2=0.05)
    expected = reference_logistic(support.astype(float), labels, queries.astype(float),
                                  FEATURE_MEAN.astype(float), 25, 0.5, 0.05)
    np.testing.assert_allclose(logits[0], expected, atol=1e-4)


def test_laplacianshot_matches_reference():
    support, labels, queries = episode(5, ways=3, shots=2, queries=6)
    logits = run("laplacianshot", support[None], labels[None], queries[None], lam=0.7, knn=3,
                 iterations=5)
    expected = reference_laplacianshot(support.astype(float), labels, queries.astype(float),
                                       FEATURE_MEAN.astype(float), 0.7, 3, 5)
    np.testing.assert_allclose(logits[0], expected, atol=1e-4)


@pytest.mark.parametrize("name, alpha", [("tim", None), ("alpha_tim", 2.0), ("alpha_tim", 5.0)])
def test_information_maximization_matches_reference(name, alpha):
    support, labels, queries = episode(6, ways=3, shots=2, queries=6)
    weights = (0.1, 1.0, 0.1) if name == "tim" else (1.0, 1.0, 1.0)
    settings = {} if alpha is None else {"alpha": alpha}
    logits = run(name, support[None], labels[None], queries[None], temperature=15.0,
                 loss_weights=weights, learning_rate=1e-2, iterations=8, **settings)
    expected = reference_tim(support.astype(float), labels, queries.astype(float), 15.0,
                             weights, 1e-2, 8, alpha)
    initial = reference_tim(support.astype(float), labels, queries.astype(float), 15.0,
                            weights, 1e-2, 0, alpha)
    assert np.abs(expected - initial).max() > 0.1  # the fit moved the weights
    np.testing.assert_allclose(softmax(logits[0]), softmax(expected), atol=1e-4)
    np.testing.assert_allclose(logits[0], expected, atol=1e-3)


def test_alpha_tim_tunes_alpha_by_shots():
    # 2 for 1 shot, 7 from 5 shots, the config's 5 between (per episode)
    labels = tf.constant([[0, 1, -1, -1, -1, -1, -1, -1, -1, -1],
                          [0, 0, 1, 1, -1, -1, -1, -1, -1, -1],
                          [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(heads.tuned_alpha(labels), [2.0, 5.0, 7.0])


def test_pt_map_matches_reference():
    # lam 2 rather than 10: on so small an episode lam 10 gives one-hot plans that would
    # hide a difference.
    support, labels, queries = episode(7, ways=3, shots=2, queries=6)
    logits = run("pt_map", support[None], labels[None], queries[None], epochs=3, lam=2.0)
    expected = reference_pt_map(support.astype(float), labels, queries.astype(float), 3, lam=2.0)
    assert np.sum((expected > 0.05) & (expected < 0.95)) >= 4  # soft assignments
    np.testing.assert_allclose(np.exp(logits[0]), expected, atol=1e-4)


def test_sinkhorn_columns_take_the_balanced_share():
    # 5 real rows of 6, 2 present classes of 3: every real row sums to 1, present columns
    # to 5 / 2 = 2.5, masked entries are 0.
    cost = tf.random.stateless_uniform([1, 6, 3], seed=[1, 2], maxval=4.0)
    plan = heads.sinkhorn(cost, tf.constant([[True] * 5 + [False]]),
                          tf.constant([[True, False, True]])).numpy()[0]
    np.testing.assert_allclose(plan.sum(0), [2.5, 0, 2.5], atol=1e-5)
    np.testing.assert_allclose(plan[:5].sum(1), np.ones(5), atol=1e-5)
    np.testing.assert_array_equal(plan[5], 0)
    expected = reference_sinkhorn(cost.numpy()[0, :5][:, [0, 2]].astype(float), 10.0, 5)
    np.testing.assert_allclose(plan[:5][:, [0, 2]], expected, atol=1e-5)


# ---------------------------------------------------------------- behaviour
def shifted_toy():
    """Three classes, one shot each; the queries of every class sit at its centre plus one
    common shift, which moves class 0's queries nearer class 1's support: the support
    prototypes get a third of the queries wrong, though the query clusters are clear."""
    rng = np.random.default_rng(1)
    centres = 0.5 + np.eye(3, 4)
    shift = np.array([-0.3, 0.9, 0.0, 0.0])
    support = centres + 0.05 * rng.standard_normal((3, 4))
    query_labels = np.repeat(np.arange(3), 5)
    queries = centres[query_labels] + shift + 0.05 * rng.standard_normal((15, 4))
    return (np.maximum(support, 0)[None].astype(np.float32), np.arange(3)[None],
            np.maximum(queries, 0)[None].astype(np.float32), query_labels)


def accuracy(name, support, labels, queries, query_labels):
    compiled = tf.function(lambda *episode: heads.head_logits(name, *episode))  # defaults
    return np.mean(np.argmax(compiled(support, labels, queries).numpy()[0], -1) == query_labels)


@pytest.mark.parametrize("name", [n for n, h in heads.HEADS.items() if h.transductive])
def test_transductive_heads_use_the_query_set(name):
    toy = shifted_toy()
    baseline = accuracy("prototypes", *toy)
    assert baseline <= 0.7
    assert accuracy(name, *toy) > baseline + 0.15


# ---------------------------------------------------------------- lookup
def test_unknown_head_is_a_user_error_naming_the_heads():
    with pytest.raises(UserError, match=r"Unknown head 'nope'; the heads: prototypes, "
                                        r"simpleshot, logistic, bd_cspn \(transductive\),"):
        heads.head_logits("nope", np.zeros((1, 2, 3)), [[0, 1]], np.zeros((1, 1, 3)))
    with pytest.raises(UserError, match="no setting steps; its settings: temperature"):
        heads.head_logits("tim", np.zeros((1, 2, 3)), [[0, 1]], np.zeros((1, 1, 3)), steps=3)


def test_registry_describes_every_head():
    assert list(heads.HEADS) == ["prototypes", "simpleshot", "logistic", "bd_cspn",
                                 "laplacianshot", "tim", "alpha_tim", "pt_map"]
    assert heads.HEADS["tim"].settings["iterations"] == 1000
    assert not heads.HEADS["simpleshot"].transductive and heads.HEADS["pt_map"].transductive
    assert heads.describe_heads().count("(transductive)") == 5


def test_feature_maps_are_flattened():
    support, labels, queries = episode(8, ways=2, shots=2, queries=3)
    maps = heads.head_logits("simpleshot", support.reshape(1, 4, 2, 2, 1), labels[None],
                             queries.reshape(1, 3, 2, 2, 1), feature_mean=FEATURE_MEAN)
    np.testing.assert_allclose(maps, run("simpleshot", support[None], labels[None],
                                         queries[None]), atol=1e-6)
