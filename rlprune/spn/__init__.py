"""The state predictor network: its nets, the predictor, training and metrics, the world-model actor."""
