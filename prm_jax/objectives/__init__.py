"""Training objectives: each is `make_*_loss(...) -> loss_fn(params, batch, rng) -> (loss, metrics)`."""
