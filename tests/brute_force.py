"""Brute-force enumeration of a language's hidden paths: the oracle's independent check.

Nothing here shares code with :mod:`tinylatent.oracle`. It walks the generative story
of docs/claims.md §1 token by token and sums the probability of every hidden path
(the intention of each message, and for a window of unknown phase, the whole hidden
prefix of the message the window starts in). Exponential in the prompt; tiny sizes only.
"""
from __future__ import annotations

import itertools

import numpy as np


def _continue(language, tokens, theta, n_letters, previous_letter, weight, intentions, out):
    """Extend one hidden path over the remaining observed tokens; append (weight, intentions)."""
    if not tokens:
        out.append((weight, tuple(intentions)))
        return
    token, rest = tokens[0], tokens[1:]
    pmf = language.length_probs
    at_least = pmf[n_letters:].sum() if n_letters < len(pmf) else 0.0
    stop = pmf[n_letters] / at_least if (n_letters >= 1 and n_letters < len(pmf) and at_least > 0) else 0.0
    if n_letters == 0:  # a new message starts: branch over its intention
        if token == 0:
            return
        for new_theta in range(language.n_intentions):
            p = language.transition[theta, new_theta] * language.first_letter[new_theta, token - 1]
            if p > 0:
                _continue(language, rest, new_theta, 1, token - 1, weight * p, intentions + [new_theta], out)
        return
    if token == 0:
        if stop > 0:
            _continue(language, rest, theta, 0, None, weight * stop, intentions + [theta], out)
        return
    p = (1.0 - stop) * language.letter_transition[theta, previous_letter, token - 1]
    if p > 0:
        _continue(language, rest, theta, n_letters + 1, token - 1, weight * p, intentions + [theta], out)


def paths(language, tokens, phase="start", prior=None):
    """Every hidden path with positive probability: a list of (q(path, x), θ at each token)."""
    tokens = [int(t) for t in tokens]
    out = []
    if phase == "start":
        prior = language.initial if prior is None else prior
        token, rest = tokens[0], tokens[1:]
        if token == 0:
            return out
        for theta in range(language.n_intentions):
            p = prior[theta] * language.first_letter[theta, token - 1]
            if p > 0:
                _continue(language, rest, theta, 1, token - 1, p, [theta], out)
        return out
    # Unknown phase: a token position drawn from the long-run stream. The current message
    # has intention θ (share μ(θ)), and the window starts after n of its letters
    # (n = 0: right after the previous message's delimiter). Enumerate θ, n and the
    # hidden letters ℓ_1..ℓ_n of the message so far.
    mu = language.stationary_intentions()
    pmf = language.length_probs
    tokens_per_message = float(np.dot(np.arange(len(pmf)), pmf)) + 1.0
    for theta in range(language.n_intentions):
        # the window starts right after a delimiter that ended a message of θ
        _continue(language, tokens, theta, 0, None, mu[theta] / tokens_per_message, [], out)
        for n in range(1, len(pmf)):
            at_least = pmf[n:].sum()
            if at_least <= 0:
                continue
            for hidden in itertools.product(range(language.n_letters), repeat=n):
                p = mu[theta] * at_least / tokens_per_message * language.first_letter[theta, hidden[0]]
                for a, b in zip(hidden[:-1], hidden[1:]):
                    p *= language.letter_transition[theta, a, b]
                if p > 0:
                    _continue(language, tokens, theta, n, hidden[-1], p, [], out)
    return out


def marginal(language, tokens, phase="start", prior=None):
    """q(x) by summing every hidden path."""
    return sum(w for w, _ in paths(language, tokens, phase, prior))


def posterior_last(language, tokens, phase="start", prior=None):
    """q(θ_T | x_{1:T}), θ_T the intention of the message holding the last token."""
    post = np.zeros(language.n_intentions)
    for w, thetas in paths(language, tokens, phase, prior):
        post[thetas[-1]] += w
    return post / post.sum()


def predictive(language, tokens, phase="start", prior=None):
    """q(x_{T+1} | x_{1:T}) by enumeration of x_{1:T} followed by each token."""
    base = marginal(language, tokens, phase, prior)
    return np.array([marginal(language, list(tokens) + [v], phase, prior) for v in range(language.vocab_size)]) / base


def known_intention_predictive(language, tokens, theta, phase="start", prior=None):
    """q(x_{T+1} | x_{1:T}, θ_{T+1} = θ), θ_{T+1} the intention of the message holding token T+1."""
    joint = np.zeros(language.vocab_size)
    for v in range(language.vocab_size):
        for w, thetas in paths(language, list(tokens) + [v], phase, prior):
            if thetas[-1] == theta:
                joint[v] += w
    return joint / joint.sum()
