"""The rule registry: one module per SPEC cause id, listed once here."""

from nandoctor.diagnose.rules import (
    bad_init,
    dead_relu,
    exploding_gradients,
    high_lr,
    low_lr,
    low_precision,
    nan_in_data,
    output_mismatch,
    saturating_activation,
    sum_reduction,
    unscaled_data,
    unstable_loss,
    vanishing_gradients,
)

RULES = tuple(m.RULE for m in (
    nan_in_data, unscaled_data, bad_init, saturating_activation, dead_relu, high_lr, low_lr, sum_reduction,
    unstable_loss, output_mismatch, low_precision, exploding_gradients, vanishing_gradients))

BY_ID = {rule.id: rule for rule in RULES}
