"""Finding ratio vectors: the RL search, its candidate pool, and the baselines it is compared with."""
