"""The one tiny training the tests use: a small network that trains on a few
hundred digits in seconds.  A test that needs something else (an uneven
split across processes, a network that cannot learn) says so where it
changes these."""

NETWORK = dict(hidden=(32, 32, 64), code_dim=8, batch_size=64)
TRAINING = dict(NETWORK, epochs=2)
