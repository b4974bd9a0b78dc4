"""Meta-learning algorithms (outer loops) built on :mod:`metarl.inner_loop`."""
