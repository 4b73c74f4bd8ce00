"""Heads over features: how a support set's features become a classifier of the query features,
chosen at evaluation or serving time for any embedding learner.

Every head is a pure TensorFlow function of one meta-batch of B episodes, graph-compatible
(`tf.function`, SavedModels: loops are `tf.while_loop`s, nothing reads tensor values in Python):

    logits = head(support, support_labels, queries, query_mask, feature_mean, **settings)

    support         [B, S, D] float32 support features
    support_labels  [B, S] int32, 0..N-1, and -1 for padding (ignored everywhere)
    queries         [B, M, D] float32 query features
    query_mask      [B, M] bool, True for the real queries; padding (False) enters no
                    transductive statistic, and its output rows are finite but meaningless
    feature_mean    [D] float32 or None: the mean feature of the training (base) classes.
                    The heads that centre (`Head.needs_feature_mean`) subtract it before
                    L2-normalising (SimpleShot's CL2N); given None they centre on nothing,
                    which is plain L2 normalisation (L2N).
    logits          [B, M, N], N = num_ways(support_labels): softmax(logits) is the head's
                    class probabilities (log P for the heads that compute P); a class absent
                    from an episode's support gets `absent_logit` (`mask_absent_classes`)

`head_logits(name, ...)` looks a head up by name, fills in the defaults, treats a missing
`query_mask` as all real, and flattens feature maps `[B, S, h, w, c]` to `[B, S, h*w*c]`.

The heads (defaults and where they come from in each function's docstring):

    prototypes     nearest class mean, -squared Euclidean distance (Snell et al. 2017)
    simpleshot     CL2N features, nearest centroid (Wang et al. 2019, arXiv:1911.04623)
    logistic       multinomial logistic regression fitted in the graph on CL2N features
                   (Tian et al. 2020, arXiv:2003.11539)
    bd_cspn        transductive: prototype rectification, shift and pseudo-labels
                   (Liu, Song, Qin, ECCV 2020, arXiv:1911.10713)
    laplacianshot  transductive: kNN-Laplacian regularised assignments, bound updates
                   (Ziko et al., ICML 2020, arXiv:2006.15486)
    tim            transductive information maximisation, gradient descent (TIM-GD;
                   Boudiaf et al., NeurIPS 2020, arXiv:2008.11297)
    alpha_tim      TIM with alpha-entropies, for uneven query sets (Veilleux et al.,
                   NeurIPS 2021, arXiv:2204.11181)
    pt_map         transductive: power transform, Sinkhorn MAP (Hu, Gripon, Pateux,
                   ICANN 2021, arXiv:2006.03806)

`open_set_distance` scores how far each query lies from every support class (for open-set
rejection), on the same CL2N features.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import OrderedDict
from collections.abc import Callable

import tensorflow as tf

from tfmeta.errors import UserError
from tfmeta.tensors import (
    class_means,
    cosine_similarity,
    cross_entropy,
    l2_normalize,
    mask_absent_classes,
    num_ways,
    one_hot_classes,
    real,
    squared_euclidean,
)

# Added to a probability before its log, so an exact 0 gives a finite logit.
TINY = 1e-30


# ---------------------------------------------------------------- shared pieces
def cl2n(features, feature_mean=None):
    """SimpleShot's CL2N, `(x - feature_mean) / |x - feature_mean|`; L2N without a mean."""
    if feature_mean is not None:
        features = features - feature_mean
    return l2_normalize(features)


def masked_mean(features, mask):
    """Mean of `features [B, n, D]` over the entries where `mask [B, n]`: `[B, 1, D]` (0 for
    an episode without any)."""
    weights = tf.cast(mask, features.dtype)[..., None]
    total = tf.reduce_sum(tf.where(mask[..., None], features, 0.0), axis=1, keepdims=True)
    return total / tf.maximum(tf.reduce_sum(weights, axis=1, keepdims=True), 1.0)


def present_classes(support_labels, ways):
    """Which classes have a support example: bool `[B, N]`."""
    return tf.reduce_sum(one_hot_classes(support_labels, ways), axis=1) > 0


def bias_shift(support, support_labels, queries, query_mask):
    """BD-CSPN's cross-class bias diminishing: the queries moved by
    `mean(real support) - mean(real queries)`."""
    shift = masked_mean(support, real(support_labels)) - masked_mean(queries, query_mask)
    return queries + shift


# ---------------------------------------------------------------- inductive heads
def prototypes(support, support_labels, queries, query_mask=None, feature_mean=None):
    """Nearest prototype (Snell, Swersky, Zemel, NeurIPS 2017, arXiv:1703.05175):

        c_n = mean(support[i] for label i == n)
        logits = -|q - c_n|^2

    No setting; `query_mask` and `feature_mean` are not used."""
    del query_mask, feature_mean
    logits = -squared_euclidean(queries, class_means(support, support_labels))
    return mask_absent_classes(logits, support_labels)


def simpleshot(support, support_labels, queries, query_mask=None, feature_mean=None):
    """SimpleShot (Wang, Chao, Weinberger, van der Maaten 2019, arXiv:1911.04623), CL2N:

        x~ = (x - feature_mean) / |x - feature_mean|
        c_n = mean(x~ of class n's support)                 # not normalised again
        logits = -|q~ - c_n|^2

    as their code (github.com/mileyan/simple_shot) averages the transformed shots. No
    setting; with `feature_mean=None` this is their L2N."""
    return prototypes(cl2n(support, feature_mean), support_labels, cl2n(queries, feature_mean))


def logistic(support, support_labels, queries, query_mask=None, feature_mean=None, *,
             steps=100, learning_rate=1.0, l2=0.1):
    """Multinomial logistic regression on CL2N features (Tian et al. 2020, "Rethinking
    Few-Shot Image Classification", arXiv:2003.11539, fit L2-normalised features with
    scikit-learn's L-BFGS), here `steps` full-batch gradient steps from zero:

        W, b = zeros([D, N]), zeros([N])
        repeat steps times:
            e = softmax(s @ W + b) - onehot(labels)          # real support only
            W -= learning_rate * (s^T e / S + l2 * W)
            b -= learning_rate * mean(e)
        logits = q @ W + b

    Defaults as `tfmeta.algorithms.pretrain`'s logistic classifier (100 steps, learning
    rate 1.0, l2 0.1)."""
    del query_mask
    support, queries = cl2n(support, feature_mean), cl2n(queries, feature_mean)
    targets = one_hot_classes(support_labels)                             # [B, S, N]
    is_real = tf.cast(real(support_labels), tf.float32)[..., None]        # [B, S, 1]
    count = tf.maximum(tf.reduce_sum(is_real, axis=1, keepdims=True), 1.0)
    weights = tf.zeros([tf.shape(support)[0], tf.shape(support)[2], tf.shape(targets)[2]])
    bias = tf.zeros([tf.shape(support)[0], 1, tf.shape(targets)[2]])

    def step(i, weights, bias):
        # Absent classes (-1e9) get probability 0 and zero error: their weights stay 0.
        probabilities = tf.nn.softmax(
            mask_absent_classes(support @ weights + bias, support_labels))
        error = (probabilities - targets) * is_real
        grad_weights = tf.linalg.matmul(support, error, transpose_a=True) / count
        grad_bias = tf.reduce_sum(error, axis=1, keepdims=True) / count
        return (i + 1, weights - learning_rate * (grad_weights + l2 * weights),
                bias - learning_rate * grad_bias)

    _, weights, bias = tf.while_loop(lambda i, *_: i < steps, step,
                                     (tf.constant(0), weights, bias))
    return mask_absent_classes(queries @ weights + bias, support_labels)


# ---------------------------------------------------------------- BD-CSPN, LaplacianShot
def bd_cspn(support, support_labels, queries, query_mask, feature_mean=None, *,
            epsilon=10.0, scale=10.0):
    """BD-CSPN (Liu, Song, Qin, "Prototype Rectification for Few-Shot Learning", ECCV 2020,
    arXiv:1911.10713), on CL2N features as the Realistic Evaluation's code runs it
    (github.com/oveilleux/Realistic_Transductive_Few_Shot, bdcspn.yaml: CL2N). Transductive.

        q' = q + mean(real support) - mean(real queries)      # cross-class bias
        P_n = mean(support of class n)
        members of n: the support of class n and every real q' whose nearest P by cosine
            is P_n (all real queries are pseudo-labelled, as the LaplacianShot, Realistic
            Evaluation and easyfsl implementations do; the paper describes adding the top-Z
            confident ones)
        w_i,n = exp(epsilon cos(x_i, P_n)) / sum(exp(epsilon cos(x_j, P_n)), j in members)
        P'_n = sum(w_i,n x_i, i in members)                   # intra-class bias
        logits = scale * cos(q', P'_n)                        # the shifted queries

    The weights are the paper's (normalised over each class's members, as easyfsl's
    `BDCSPN`); LaplacianShot's code normalises over classes instead
    (`laplacianshot_prototypes`). epsilon = 10 is the paper's; scale (the cosine logits'
    temperature) is ours, equal to epsilon by default, so softmax(logits) weighs classes as
    the rectification weighs examples."""
    support, queries = cl2n(support, feature_mean), cl2n(queries, feature_mean)
    queries = bias_shift(support, support_labels, queries, query_mask)
    ways = num_ways(support_labels)
    basic = class_means(support, support_labels, ways)                    # [B, N, D]
    nearest = tf.argmax(mask_absent_classes(cosine_similarity(queries, basic), support_labels),
                        axis=-1, output_type=tf.int32)
    pseudo = tf.one_hot(nearest, ways) * tf.cast(query_mask, tf.float32)[..., None]
    members = tf.concat([one_hot_classes(support_labels, ways), pseudo], axis=1)
    augmented = tf.concat([support, queries], axis=1)                     # [B, S+M, D]
    scores = tf.where(members > 0, epsilon * cosine_similarity(augmented, basic), -1e9)
    weights = tf.nn.softmax(scores, axis=1) * members                     # over examples
    rectified = tf.einsum("bin,bid->bnd", weights, augmented)
    logits = scale * cosine_similarity(queries, rectified)
    return mask_absent_classes(logits, support_labels)


def laplacianshot_prototypes(support, support_labels, queries, query_mask, epsilon=10.0):
    """LaplacianShot's prototype rectification, as its code writes it (`--proto-rect`,
    github.com/imtiazziko/LaplacianShot `train_lshot.py`), a variant of BD-CSPN's:

        q' = q + mean(real support) - mean(real queries)
        P_n = mean(support of class n)
        X = support and real q'; pred(x) = nearest P by cosine; W = softmax_n(epsilon cos(x, P_n))
        P'_n = mean(W[x, n] x for x in X with pred(x) == n)   # a class nobody picks keeps P_n

    Returns (q' `[B, M, D]`, P' `[B, N, D]`)."""
    queries = bias_shift(support, support_labels, queries, query_mask)
    ways = num_ways(support_labels)
    basic = class_means(support, support_labels, ways)
    augmented = tf.concat([support, queries], axis=1)                     # [B, S+M, D]
    in_set = tf.concat([real(support_labels), query_mask], axis=1)        # [B, S+M]
    similarity = mask_absent_classes(cosine_similarity(augmented, basic), support_labels)
    weights = tf.nn.softmax(epsilon * similarity)                         # over classes
    picked = tf.one_hot(tf.argmax(similarity, axis=-1), ways) * tf.cast(in_set, tf.float32)[
        ..., None]                                                        # [B, S+M, N]
    counts = tf.reduce_sum(picked, axis=1)[..., None]                     # [B, N, 1]
    sums = tf.einsum("bin,bid->bnd", picked * weights, augmented)
    return queries, tf.where(counts > 0, sums / tf.maximum(counts, 1.0), basic)


def knn_affinity(queries, query_mask, knn):
    """LaplacianShot's affinity among the real queries: `W[i, j] = 1` where j is one of the
    `knn - 1` nearest other real queries of i (Euclidean), else 0: `[B, M, M]`, not
    symmetric. Their code asks scikit-learn for `knn` neighbours of each query, the query
    itself first, and drops that one."""
    size = tf.shape(queries)[1]
    others = tf.logical_and(query_mask[:, None, :], tf.logical_not(tf.eye(size, dtype=tf.bool)))
    distances = tf.where(others, squared_euclidean(queries, queries), float("inf"))
    _, nearest = tf.math.top_k(-distances, k=tf.minimum(knn - 1, size - 1))
    chosen = tf.reduce_sum(tf.one_hot(nearest, size), axis=2)             # [B, M, M]
    # Fewer real queries than knn: the inf picks are not neighbours; padding rows have none.
    keep = tf.logical_and(others, query_mask[:, :, None])
    return tf.where(keep, tf.minimum(chosen, 1.0), 0.0)


def laplacianshot(support, support_labels, queries, query_mask, feature_mean=None, *,
                  lam=0.7, knn=3, iterations=20, rectify=True):
    """LaplacianShot (Ziko, Dolz, Granger, Ben Ayed, "Laplacian Regularized Few-Shot
    Learning", ICML 2020, arXiv:2006.15486), on CL2N features. Transductive.

        a[q, n] = |q' - P'_n|^2                     # `laplacianshot_prototypes`, or plain
                                                    # class means and q' = q (rectify=False)
        Y = softmax(-a)
        repeat iterations times:                    # the bound optimiser
            Y = softmax(-a + lam * W @ Y)           # W = knn_affinity(real queries)
        logits = log Y

    Defaults from the authors' code (github.com/imtiazziko/LaplacianShot): knn 3 (the query
    itself counted, so 2 neighbours), at most 20 bound iterations (theirs stop earlier once
    the bound changes by under 1e-6 relative; ours run all of them), prototype rectification
    on (`run.sh`: protrec=True). lam: their parser's 1.0 is overridden by tuning on the
    validation classes; 0.7 is the tuned 1-shot value for ResNet-18 on mini-ImageNet in the
    Realistic Evaluation's code (`get_tuned_lmd`, which gives 0.1-0.3 for 5-shot balanced
    tasks), and easyfsl's default."""
    support, queries = cl2n(support, feature_mean), cl2n(queries, feature_mean)
    if rectify:
        queries, centres = laplacianshot_prototypes(support, support_labels, queries,
                                                    query_mask)
    else:
        centres = class_means(support, support_labels)
    unary = squared_euclidean(queries, centres)                           # [B, M, N]
    affinity = knn_affinity(queries, query_mask, knn)

    def update(i, scores):
        pairwise = affinity @ tf.nn.softmax(scores)
        return i + 1, mask_absent_classes(-unary + lam * pairwise, support_labels)

    _, scores = tf.while_loop(lambda i, _: i < iterations, update,
                              (tf.constant(0), mask_absent_classes(-unary, support_labels)))
    return mask_absent_classes(tf.nn.log_softmax(scores), support_labels)


# ---------------------------------------------------------------- TIM, alpha-TIM
def tim_logits(features, weights, temperature):
    """TIM's classifier: `temperature * (-1/2 |x - w_n|^2)`, `[B, n, D]`, `[B, N, D]` ->
    `[B, n, N]`."""
    return -0.5 * temperature * squared_euclidean(features, weights)


def adam_minimize(loss_fn, weights, learning_rate, iterations, beta_1=0.9, beta_2=0.999,
                  epsilon=1e-8):
    """`iterations` steps of Adam (PyTorch's form, as the TIM code uses) on the tensor
    `weights`, `loss_fn(weights)` a scalar:

        t += 1; g = grad(loss_fn)(weights)
        m = beta_1 m + (1 - beta_1) g;  v = beta_2 v + (1 - beta_2) g^2
        weights -= learning_rate * (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
    """
    def step(t, weights, m, v):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = loss_fn(weights)
        gradient = tape.gradient(loss, weights)
        t = t + 1.0
        m = beta_1 * m + (1.0 - beta_1) * gradient
        v = beta_2 * v + (1.0 - beta_2) * tf.square(gradient)
        m_hat, v_hat = m / (1.0 - beta_1 ** t), v / (1.0 - beta_2 ** t)
        return t, weights - learning_rate * m_hat / (tf.sqrt(v_hat) + epsilon), m, v

    zeros = tf.zeros_like(weights)
    _, weights, _, _ = tf.while_loop(lambda t, *_: t < tf.cast(iterations, tf.float32), step,
                                     (tf.constant(0.0), weights, zeros, zeros))
    return weights


def information_maximization(support, support_labels, queries, query_mask, entropies, *,
                             temperature, loss_weights, learning_rate, iterations):
    """TIM-GD's fit on L2-normalised features, with `entropies(probabilities, marginal)`
    -> (H(Y_Q) `[B]`, H(Y_Q|X_Q) per query `[B, M]`):

        w_n = mean(support of class n)
        loss = w_ce * CE(support) - (w_marg * H(Y_Q) - w_cond * mean_real(H(Y_Q|X_Q)))
        w = adam_minimize(sum of the episodes' losses, w)
        logits = tim_logits(queries, w)
    """
    support, queries = l2_normalize(support), l2_normalize(queries)
    weight_ce, weight_marginal, weight_conditional = loss_weights
    mask = tf.cast(query_mask, tf.float32)
    count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)                  # [B]

    def loss(weights):
        support_logits = mask_absent_classes(tim_logits(support, weights, temperature),
                                             support_labels)
        probabilities = tf.nn.softmax(mask_absent_classes(
            tim_logits(queries, weights, temperature), support_labels))   # [B, M, N]
        marginal = tf.reduce_sum(probabilities * mask[..., None], axis=1) / count[:, None]
        marginal_entropy, conditional = entropies(probabilities, marginal)
        conditional = tf.reduce_sum(conditional * mask, axis=1) / count
        losses = (weight_ce * cross_entropy(support_labels, support_logits)
                  - (weight_marginal * marginal_entropy - weight_conditional * conditional))
        return tf.reduce_sum(losses)

    weights = adam_minimize(loss, class_means(support, support_labels), learning_rate,
                            iterations)
    return mask_absent_classes(tim_logits(queries, weights, temperature), support_labels)


def shannon_entropies(probabilities, marginal):
    """H(p_bar) `[B]` and H(p_i) `[B, M]`, Shannon's; 0 log 0 = 0 (an absent class)."""
    return (-tf.reduce_sum(tf.math.xlogy(marginal, marginal), axis=-1),
            -tf.reduce_sum(tf.math.xlogy(probabilities, probabilities), axis=-1))


def tim(support, support_labels, queries, query_mask, feature_mean=None, *,
        temperature=15.0, loss_weights=(0.1, 1.0, 0.1), learning_rate=1e-4, iterations=1000):
    """TIM-GD (Boudiaf, Masud, Rony, Dolz, Piantanida, Ben Ayed, "Information Maximization
    for Few-Shot Learning", NeurIPS 2020, arXiv:2008.11297). Transductive. With `w` the
    class weights `[B, N, D]` started at the support means, on L2-normalised features:

        p = softmax(temperature * (-1/2 |x - w_n|^2))
        loss = 0.1 CE(support) - (1.0 H(Y_Q) - 0.1 H(Y_Q|X_Q))   # loss_weights
        w = Adam(learning_rate=1e-4) on loss, 1000 iterations

    Defaults from the authors' code (github.com/mboudiaf/TIM, `src/tim.py` config: temp
    15, loss_weights [0.1, 1.0, 0.1] for [Xent, H(Y), H(Y|X)], lr 1e-4; `iter=1000` in its
    `scripts/evaluate/tim_gd`), features L2N as its evaluation's default. `feature_mean`
    is not used."""
    del feature_mean
    return information_maximization(
        support, support_labels, queries, query_mask, shannon_entropies,
        temperature=temperature, loss_weights=loss_weights, learning_rate=learning_rate,
        iterations=iterations)


def tuned_alpha(support_labels):
    """alpha-TIM's tuned alpha per episode `[B]`: 2 for 1 shot, 7 from 5 shots, else 5 (the
    config's), shots = real support examples / classes present."""
    ways = num_ways(support_labels)
    present = tf.reduce_sum(tf.cast(present_classes(support_labels, ways), tf.float32), -1)
    count = tf.reduce_sum(tf.cast(real(support_labels), tf.float32), axis=-1)
    shots = count / tf.maximum(present, 1.0)
    return tf.where(shots <= 1.0, 2.0, tf.where(shots >= 5.0, 7.0, 5.0))


def alpha_tim(support, support_labels, queries, query_mask, feature_mean=None, *,
              alpha=None, temperature=15.0, loss_weights=(1.0, 1.0, 1.0), learning_rate=1e-4,
              iterations=1000):
    """alpha-TIM (Veilleux, Boudiaf, Piantanida, Ben Ayed, "Realistic Evaluation of
    Transductive Few-Shot Learning", NeurIPS 2021, arXiv:2204.11181): TIM-GD with the
    Tsallis alpha-entropy `H_a(p) = (1 - sum(p^a)) / (a - 1)` for the marginal and the
    conditional terms (the cross-entropy stays Shannon's), for query sets whose classes are
    not balanced. Transductive.

        loss = 1.0 CE(support) - (1.0 H_a(Y_Q) - 1.0 H_a(Y_Q|X_Q))

    Defaults from the authors' code (github.com/oveilleux/Realistic_Transductive_Few_Shot,
    `alpha_tim.yaml` and `ALPHA_TIM`): loss_weights [1, 1, 1], entropies [Shannon, Alpha,
    Alpha], temp 15, lr 1e-4, 1000 iterations, and alpha tuned by shots (None:
    `tuned_alpha`, 2 for 1-shot, 7 for 5 shots and more, 5 between). `feature_mean` is not
    used."""
    del feature_mean
    alpha = tuned_alpha(support_labels) if alpha is None else tf.fill(
        tf.shape(support_labels)[:1], tf.cast(alpha, tf.float32))

    def entropies(probabilities, marginal):
        a = alpha[:, None]
        marginal_entropy = (1.0 - tf.reduce_sum(marginal ** a, axis=-1)) / (alpha - 1.0)
        conditional = (1.0 - tf.reduce_sum(probabilities ** a[..., None], axis=-1)) / (a - 1.0)
        return marginal_entropy, conditional

    return information_maximization(
        support, support_labels, queries, query_mask, entropies,
        temperature=temperature, loss_weights=loss_weights, learning_rate=learning_rate,
        iterations=iterations)


# ---------------------------------------------------------------- PT-MAP
def sinkhorn(cost, row_mask, column_mask, lam=10.0, tolerance=1e-6, max_iterations=1000):
    """PT-MAP's entropic optimal transport of the real rows onto the present columns:
    `cost [B, M, N]`, bool `row_mask [B, M]`, `column_mask [B, N]` -> `P [B, M, N]` with
    every real row summing to 1 and every present column to (real rows / present columns),
    masked entries 0:

        P = exp(-lam * cost), rows normalised
        repeat until no row sum moves by more than tolerance (at most max_iterations):
            P *= (1 / row sums)            # rows
            P *= (share / column sums)     # columns: exact on return

    Each episode stops on its own, so a batch gives what each episode alone does."""
    rows = tf.cast(row_mask, cost.dtype)
    columns = tf.cast(column_mask, cost.dtype)
    share = tf.reduce_sum(rows, -1, keepdims=True) / tf.maximum(
        tf.reduce_sum(columns, -1, keepdims=True), 1.0)
    column_targets = columns * share                                      # [B, N]
    allowed = tf.logical_and(row_mask[:, :, None], column_mask[:, None, :])
    plan = tf.nn.softmax(tf.where(allowed, -lam * cost, -1e9)) * rows[..., None]

    def step(i, plan, done):
        row_sums = tf.reduce_sum(plan, axis=2)
        scaled = plan * tf.math.divide_no_nan(rows, row_sums)[..., None]
        scaled *= tf.math.divide_no_nan(column_targets, tf.reduce_sum(scaled, axis=1))[:, None]
        moved = tf.reduce_max(tf.abs(row_sums - tf.reduce_sum(scaled, axis=2)), axis=1)
        return i + 1, tf.where(done[:, None, None], plan, scaled), done | (moved <= tolerance)

    def going(i, plan, done):
        return tf.logical_and(i < max_iterations, tf.logical_not(tf.reduce_all(done)))

    done = tf.zeros(tf.shape(cost)[:1], tf.bool)
    _, plan, _ = tf.while_loop(going, step, (tf.constant(0), plan, done))
    return plan


def pt_map(support, support_labels, queries, query_mask, feature_mean=None, *,
           power=0.5, lam=10.0, alpha=0.2, epochs=20):
    """PT-MAP (Hu, Gripon, Pateux, "Leveraging the Feature Distribution in Transfer-based
    Few-Shot Learning", ICANN 2021, arXiv:2006.03806). Transductive.

        x = (max(x, 0) + 1e-6) ** power, then L2-normalised   # power transform
        support -= mean(real support); queries -= mean(real queries); L2-normalise each
        m_n = mean(support of class n)
        repeat epochs times:
            P = sinkhorn(|q - m_n|^2, lam)            # real queries; columns share equally
            m_n += alpha * (mean of support and queries weighted by [onehot; P] - m_n)
        logits = log(sinkhorn(|q - m_n|^2, lam))

    Features must be non-negative (a ReLU backbone's are): negative ones are clamped to 0.
    Defaults from the authors' code (github.com/yhu01/PT-MAP `test_standard.py`): beta 0.5,
    lam 10, alpha 0.2, 20 epochs, Sinkhorn to 1e-6 or 1000 iterations. Their QR reduction is
    left out: it rotates the data into the span of its rows, and nothing after it depends on
    the basis. The balanced column share assumes every class has as many queries. Needs no
    `feature_mean`."""
    del feature_mean
    real_support = real(support_labels)

    def transform(features, mask):
        features = l2_normalize((tf.maximum(features, 0.0) + 1e-6) ** power)
        return l2_normalize(features - masked_mean(features, mask))

    support, queries = transform(support, real_support), transform(queries, query_mask)
    ways = num_ways(support_labels)
    present = present_classes(support_labels, ways)
    targets = one_hot_classes(support_labels, ways)                       # [B, S, N]
    labelled = tf.einsum("bsn,bsd->bnd", targets, support)

    def assignments(centres):
        return sinkhorn(squared_euclidean(queries, centres), query_mask, present, lam)

    def epoch(i, centres):
        plan = assignments(centres)                                       # [B, M, N]
        totals = labelled + tf.einsum("bmn,bmd->bnd", plan, queries)
        counts = tf.reduce_sum(targets, axis=1) + tf.reduce_sum(plan, axis=1)
        estimate = totals / tf.maximum(counts, 1e-12)[..., None]
        return i + 1, centres + alpha * (estimate - centres)

    _, centres = tf.while_loop(lambda i, _: i < epochs, epoch,
                               (tf.constant(0), class_means(support, support_labels, ways)))
    return mask_absent_classes(tf.math.log(assignments(centres) + TINY), support_labels)


# ---------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Head:
    """A head: its function, whether it reads the query set (transductive), whether it
    centres on `feature_mean` when one is given, a one-line description, and its settings
    with their defaults (the function's keyword-only arguments)."""

    name: str
    fn: Callable
    transductive: bool
    needs_feature_mean: bool
    description: str
    settings: dict


def _head(fn, transductive, needs_feature_mean, description):
    settings = {name: parameter.default
                for name, parameter in inspect.signature(fn).parameters.items()
                if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
    return fn.__name__, Head(fn.__name__, fn, transductive, needs_feature_mean, description,
                             settings)


HEADS = OrderedDict([
    _head(prototypes, False, False,
          "ProtoNet: nearest class mean by squared Euclidean distance (Snell et al. 2017)"),
    _head(simpleshot, False, True,
          "SimpleShot: centred, L2-normalised nearest centroid (Wang et al. 2019)"),
    _head(logistic, False, True,
          "logistic regression fitted on centred, L2-normalised features (Tian et al. 2020)"),
    _head(bd_cspn, True, True,
          "BD-CSPN: prototypes rectified by shifted, pseudo-labelled queries (Liu et al. 2020)"),
    _head(laplacianshot, True, True,
          "LaplacianShot: kNN-Laplacian regularised query assignments (Ziko et al. 2020)"),
    _head(tim, True, False,
          "TIM-GD: transductive information maximisation by Adam (Boudiaf et al. 2020)"),
    _head(alpha_tim, True, False,
          "alpha-TIM: TIM with alpha-entropies, for uneven query sets (Veilleux et al. 2021)"),
    _head(pt_map, True, False,
          "PT-MAP: power transform, Sinkhorn-balanced MAP prototypes (Hu et al. 2021)"),
])


def describe_heads() -> str:
    """The heads by name, the transductive ones marked: for flag help and errors."""
    return ", ".join(f"{name} (transductive)" if head.transductive else name
                     for name, head in HEADS.items())


def get_head(name: str) -> Head:
    """The `Head` called `name`; a `UserError` listing the heads for any other name."""
    if name not in HEADS:
        raise UserError(f"Unknown head {name!r}; the heads: {describe_heads()}.")
    return HEADS[name]


def flat_features(features):
    """Features as float32 `[B, n, D]`: feature maps `[B, n, h, w, c]` flattened."""
    features = tf.convert_to_tensor(features)
    features = tf.cast(features, tf.float32)
    if features.shape.rank is not None and features.shape.rank > 3:
        shape = tf.shape(features)
        features = tf.reshape(features, tf.concat([shape[:2], [-1]], 0))
    return features


def head_logits(name, support, support_labels, queries, query_mask=None, feature_mean=None,
                **settings):
    """The logits `[B, M, N]` of head `name` (see the module docstring): feature maps are
    flattened, a missing `query_mask` means every query is real, and `settings` override
    the head's defaults (`HEADS[name].settings`)."""
    head = get_head(name)
    unknown = sorted(set(settings) - set(head.settings))
    if unknown:
        known = ", ".join(head.settings) or "none"
        raise UserError(f"Head {name!r} has no setting {', '.join(unknown)}; its settings: "
                        f"{known}.")
    support, queries = flat_features(support), flat_features(queries)
    if query_mask is None:
        query_mask = tf.ones(tf.shape(queries)[:2], tf.bool)
    if feature_mean is not None:
        feature_mean = tf.reshape(tf.cast(feature_mean, tf.float32), [-1])
    return head.fn(support, tf.cast(support_labels, tf.int32), queries,
                   tf.cast(query_mask, tf.bool), feature_mean, **{**head.settings, **settings})


def open_set_distance(support, support_labels, queries, feature_mean=None):
    """How far each query lies from every support class: `[B, M]` in [0, 4], the smallest
    `|q~ - p_n|^2` over the classes present in its episode, where q~ is the query's CL2N
    feature (`cl2n`) and p_n the L2-normalised mean of class n's CL2N support features.
    Padding (label -1) is ignored; feature maps are flattened."""
    support, queries = flat_features(support), flat_features(queries)
    support_labels = tf.cast(support_labels, tf.int32)
    if feature_mean is not None:
        feature_mean = tf.reshape(tf.cast(feature_mean, tf.float32), [-1])
    centres = l2_normalize(class_means(cl2n(support, feature_mean), support_labels))
    distances = squared_euclidean(cl2n(queries, feature_mean), centres)   # [B, M, N]
    present = present_classes(support_labels, tf.shape(centres)[1])[:, None, :]
    return tf.reduce_min(tf.where(present, distances, 4.0), axis=-1)
