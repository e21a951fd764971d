"""What the paper's own code measured (docs/claims.md §7), for side-by-side comparison.

Hui Jiang, arXiv 2304.09960: nanoGPT with 3 layers, 12 heads, d_model 768 (21,253,632
parameters without the position embeddings, nanoGPT's count), trained 5000 iterations on
the paper's language. These are its reported numbers, not ours; the examples print them
beside the exact oracle's and our models'.
"""

PAPER_RESULTS = {
    "bayes_cross_entropy_eta0": 0.948,       # nats/token, a whole corpus read from its start
    "model_cross_entropy": (0.99, 1.08),     # the range its models reached
    "understanding_kl": {0.0: 0.059, 0.03: 0.120, 0.06: 0.139},   # prompts of 1..6 letters, no leading \n
    "icl_kl": {                              # m = 1, 2, 3, 4; target uniform over the first letters of θ*, θ*+1
        0.0: (0.0235, 0.0241, 0.0212, 0.0220),    # unambiguous
        0.02: (0.219, 0.083, 0.077, 0.049),       # its "ambiguity 0.065"
        0.04: (0.633, 0.184, 0.120, 0.095),       # its "ambiguity 0.157"
    },
}
