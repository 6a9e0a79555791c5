"""Names shared by light modules (config validation) and the engine, kept here so validating never imports torch."""

OPTIMIZERS = ("sgd_momentum", "nesterov", "sgd", "adagrad", "adadelta", "adam", "adamw")
SCHEDULES = ("constant", "warmup_cosine", "cosine")
