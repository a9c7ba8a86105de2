"""The SPEC's vocabulary: every name a config may use, in one place.

Each engine/data registry is keyed by exactly these names (a test holds them equal), so the config
validator can offer did-you-mean hints without importing NumPy-heavy modules.
"""

ACTIVATIONS = ("linear", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "softplus", "softmax")
INITS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_normal", "orthogonal",
         "normal", "uniform", "constant", "zeros")
INIT_ALIASES = {"xavier_uniform": "glorot_uniform", "xavier_normal": "glorot_normal",
                "kaiming_uniform": "he_uniform", "kaiming_normal": "he_normal"}
LOSSES = ("cross_entropy", "binary_cross_entropy", "mse", "mae", "huber")
REDUCTIONS = ("mean", "sum")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw")
SCHEDULES = ("constant", "step", "exponential", "cosine", "warmup_cosine", "reduce_on_plateau")
GENERATORS = ("blobs", "moons", "circles", "spirals", "xor", "checkerboard", "linear", "sine")
BUILTINS = ("iris", "wine", "breast_cancer", "digits")
TASKS = ("classification", "regression")
IMPUTES = ("none", "mean", "median", "drop")
PREPROCESS = ("none", "standardize", "minmax")
DTYPES = ("float16", "float32", "float64")
NORMS = ("batch",)

REGRESSION_GENERATORS = ("linear", "sine")

CAUSES = ("nan_in_data", "unscaled_data", "bad_init", "saturating_activation", "dead_relu", "high_lr", "low_lr",
          "sum_reduction", "unstable_loss", "output_mismatch", "low_precision", "exploding_gradients",
          "vanishing_gradients")
