"""AdamW epsilon: set the eps in the update m_hat / (sqrt(v_hat) + eps).

Wortsman et al. (2023, section 3.4) show that the gradient RMS falls with model size and
toward the default eps (1e-8) for the largest models, where eps then shrinks the update
(sqrt(v_hat) ~ eps); they compare eps in {1e-6, 1e-8, 1e-15} and recommend a small one.
Everett et al. (2024) make the same point and also use 1e-15.

Choices: one eps for every parameter group (the engine's ``optimizer.eps``), default 1e-15;
benchmarks vary it with labels such as ``eps_1e-6`` and ``args: {adam_eps: {eps: 1.0e-6}}``.
The update_rms/grad_rms probes show whether eps matters at a given size.
"""

VERSION = "1"
ARGS = {"eps": 1e-15}
ARG_ALLOWED = {"eps": ">= 0"}


def configure(config, args):
    config["optimizer"]["eps"] = float(args["eps"])
