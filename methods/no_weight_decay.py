"""No weight decay: train every parameter with weight decay 0.

Wortsman et al. (2023, section 3.1.2) show that without weight decay the output logits
diverge (log Z drifts far from 0 and the loss degrades at high learning rates), the
instability that z-loss removes; this method reproduces that setting (compose it with
``z_loss`` to see the cure).

Choice: the run's ``optimizer.weight_decay`` is set to 0, so no parameter decays whatever
the decay mode; a method composed after it that sets a per-parameter decay still wins.
"""

VERSION = "1"


def configure(config, args):
    config["optimizer"]["weight_decay"] = 0.0
