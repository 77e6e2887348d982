"""z-loss: penalize the log normalizer of the output softmax, coef * mean(log Z)^2.

From PaLM (Chowdhery et al., 2022); Wortsman et al. (2023, section 3.2) show it prevents
output-logit divergence, where log Z drifts far from 0 (most visibly without weight decay)
and the loss degrades at high learning rates.

log Z = logsumexp of the output logits at each position. Choice: the square is taken per
position and averaged over positions (as PaLM and Wortsman do), coefficient 1e-4 by default.
"""

VERSION = "1"
ARGS = {"coef": 1e-4}
ARG_ALLOWED = {"coef": ">= 0"}


def loss(ctx, args):
    return args["coef"] * ctx.member_mean(ctx.log_z.square())
