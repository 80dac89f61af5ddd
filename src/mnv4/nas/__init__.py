"""Architecture search for MobileNetV4 (the paper's two-stage TuNAS, §6.1): search space, cost models, studies."""
