"""tinylatent: the latent-space theory of emergent abilities in language models, executable.

Reading order (each module is one concept):

1. :mod:`tinylatent.language`  languages generated from latent intentions (doubly-embedded Markov chain)
2. :mod:`tinylatent.oracle`    the exact Bayesian oracle: q(x), q(θ | x), q(x_{t+1} | x_{≤t})
3. :mod:`tinylatent.ambiguity` how ambiguous a language is: ε(x) = 1 − q(θ* | x)
4. :mod:`tinylatent.theorems`  the paper's claims as functions returning (measured, bound)
5. :mod:`tinylatent.layers`    a transformer's layers, forward and backward side by side
6. :mod:`tinylatent.gpt`       the GPT built from them
7. :mod:`tinylatent.optim`     AdamW, the learning-rate schedule, gradient clipping
8. :mod:`tinylatent.train`     training, checkpoints, sampling
"""
__version__ = "0.1.0"
